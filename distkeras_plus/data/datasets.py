"""Built-in data sets, generated or shipped by packages (nothing is downloaded)."""

from __future__ import annotations

import atexit
import functools
import gzip
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from distkeras_plus.errors import DataError, StorageError
from distkeras_plus.quiet import import_keras


@dataclass(frozen=True)
class Dataset:
    """Train and test arrays, features already scaled to [0, 1]."""

    name: str
    x_train: npt.NDArray[np.float32]
    y_train: npt.NDArray[np.int32]
    x_test: npt.NDArray[np.float32]
    y_test: npt.NDArray[np.int32]
    num_classes: int

    def to_parquet(self, folder: Path) -> list[Path]:
        """Writes `train.parquet` and `test.parquet` (features, label) into `folder`."""
        import pyarrow.parquet as pq

        paths = [folder / f"{split}.parquet" for split in ("train", "test")]
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for path in paths:
                pq.write_table(self._table(path.stem), path)
        except OSError as e:
            raise StorageError(f"cannot write {folder}: {e.strerror or e}") from e
        return paths

    def _table(self, split: str) -> Any:
        import pyarrow as pa

        x, y = (self.x_train, self.y_train) if split == "train" else (self.x_test, self.y_test)
        flat = x.reshape(len(x), -1)
        features = pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel(), pa.float32()), flat.shape[1])
        return pa.table({"features": features.cast(pa.list_(pa.float32())), "label": pa.array(y, pa.int32())})

    def to_spark(self, spark: Any, split: str = "train") -> Any:
        """A DataFrame with `features` (array<float>) and `label` (int).

        The arrays are written to a temporary Parquet file that Spark reads: handing them to
        `createDataFrame` would push every row through the driver's JVM heap.
        """
        import pyarrow.parquet as pq

        path = Path(_scratch()) / f"{self.name}-{split}-{uuid.uuid4().hex}.parquet"
        pq.write_table(self._table(split), path)
        return spark.read.parquet(str(path))


@functools.cache
def _scratch() -> str:
    """A folder for data sets handed to Spark, removed when the process exits."""
    folder = tempfile.mkdtemp(prefix="dk-data-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def digits(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 handwritten digits: 1797 images, 10 classes."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(len(x) * (1 - test_fraction))
    train, test = order[:cut], order[cut:]
    return Dataset("digits", x[train], y[train], x[test], y[test], 10)


FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)  # Debian's dataset-fashion-mnist


def fashion_mnist_folder() -> Path | None:
    """Where Fashion-MNIST's files are on this machine, if they are."""
    folders = [os.environ.get("DK_DATA_DIR", ""), *FASHION_MNIST_DIRS]
    return next(
        (Path(f) for f in filter(None, folders) if (Path(f) / "train-images-idx3-ubyte.gz").is_file()), None
    )


def fashion_mnist() -> Dataset:
    """Fashion-MNIST from `DK_DATA_DIR`, Debian's `dataset-fashion-mnist` package, or Keras'
    download when a network is there: 60,000 + 10,000 28x28 images, 10 classes."""
    root = fashion_mnist_folder()
    if root is not None:
        return Dataset(
            "fashion-mnist",
            _idx(root / "train-images-idx3-ubyte.gz", 16).reshape(-1, 784),
            _idx(root / "train-labels-idx1-ubyte.gz", 8).astype(np.int32),
            _idx(root / "t10k-images-idx3-ubyte.gz", 16).reshape(-1, 784),
            _idx(root / "t10k-labels-idx1-ubyte.gz", 8).astype(np.int32),
            10,
        )
    try:
        keras = import_keras()
        (x_train, y_train), (x_test, y_test) = keras.datasets.fashion_mnist.load_data()
    except Exception as e:
        raise DataError(
            "fashion-mnist was not found in DK_DATA_DIR or /usr/share/datasets/fashion-mnist "
            f"(Debian's dataset-fashion-mnist package), and Keras could not download it: {e}"
        ) from e
    return Dataset(
        "fashion-mnist",
        (x_train.reshape(-1, 784) / 255).astype(np.float32),
        y_train.astype(np.int32),
        (x_test.reshape(-1, 784) / 255).astype(np.float32),
        y_test.astype(np.int32),
        10,
    )


def _idx(path: Path, offset: int) -> npt.NDArray[Any]:
    """An IDX file's values; images are scaled to [0, 1]."""
    with gzip.open(path) as f:
        values = np.frombuffer(f.read(), np.uint8, offset=offset)
    return (values / 255).astype(np.float32) if offset == 16 else values


def synthetic(samples: int = 10_000, features: int = 32, classes: int = 4, seed: int = 0) -> Dataset:
    """Generated classification data of any size (scikit-learn's `make_classification`)."""
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=samples,
        n_features=features,
        n_informative=max(2, features // 2),
        n_classes=classes,
        random_state=seed,
    )
    x = ((x - x.min(0)) / (np.ptp(x, 0) + 1e-12)).astype(np.float32)
    cut = int(samples * 0.8)
    return Dataset("synthetic", x[:cut], y[:cut].astype(np.int32), x[cut:], y[cut:].astype(np.int32), classes)


#: name -> (summary, loader)
DATASETS: dict[str, tuple[str, Any]] = {
    "digits": ("scikit-learn's 8x8 handwritten digits: 1,797 images, 10 classes", digits),
    "fashion-mnist": (
        "Fashion-MNIST: 70,000 28x28 clothing images, 10 classes",
        fashion_mnist,
    ),
    "synthetic": (
        "generated classification data; synthetic:N for N samples (32 features, 4 classes)",
        synthetic,
    ),
}


def load(name: str, seed: int = 0) -> Dataset:
    """A built-in data set by name (`synthetic:100000` sets the size)."""
    base, _, size = name.partition(":")
    if base not in DATASETS or (size and base != "synthetic"):
        raise DataError(f"unknown data set {name!r}; built in: {', '.join(DATASETS)}")
    if base == "synthetic":
        try:
            samples = int(float(size)) if size else 10_000
        except ValueError:
            raise DataError(f"synthetic:N needs a number of samples, got {size!r}") from None
        if samples < 10:
            raise DataError("synthetic data needs at least 10 samples")
        return synthetic(samples, seed=seed)
    if base == "digits":
        return digits(seed=seed)
    return fashion_mnist()


def default_model(num_features: int, num_classes: int, seed: int = 0) -> Any:
    """A small multilayer perceptron that suits the built-in data sets."""
    keras = import_keras()

    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((num_features,)),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(num_classes, activation="softmax"),
        ]
    )
