"""Built-in data sets, generated or shipped by packages (nothing is downloaded)."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class Dataset:
    """Train and test arrays, features already scaled to [0, 1]."""

    name: str
    x_train: npt.NDArray[np.float32]
    y_train: npt.NDArray[np.int32]
    x_test: npt.NDArray[np.float32]
    y_test: npt.NDArray[np.int32]
    num_classes: int

    def to_spark(self, spark: Any, split: str = "train") -> Any:
        """A DataFrame with `features` (array<float>) and `label` (int).

        The arrays are written to a temporary Parquet file that Spark reads: handing them to
        `createDataFrame` would push every row through the driver's JVM heap.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        x, y = (self.x_train, self.y_train) if split == "train" else (self.x_test, self.y_test)
        flat = x.reshape(len(x), -1)
        features = pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel(), pa.float32()), flat.shape[1])
        table = pa.table(
            {"features": features.cast(pa.list_(pa.float32())), "label": pa.array(y, pa.int32())}
        )
        path = Path(_scratch()) / f"{self.name}-{split}-{uuid.uuid4().hex}.parquet"
        pq.write_table(table, path)
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


def default_model(num_features: int, num_classes: int, seed: int = 0) -> Any:
    """A small multilayer perceptron that suits the built-in data sets."""
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((num_features,)),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(num_classes, activation="softmax"),
        ]
    )
