"""Built-in data sets: listing, loading, exporting to Parquet, and clear errors."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from distkeras_plus.cli import main
from distkeras_plus.data import datasets


def test_list_and_export(tmp_path: Path) -> None:
    runner = CliRunner()
    listed = json.loads(runner.invoke(main, ["datasets", "list", "--output-format", "json"]).output)
    assert [d["name"] for d in listed] == ["digits", "fashion-mnist", "synthetic"]
    result = runner.invoke(main, ["datasets", "export", "digits", str(tmp_path / "digits")])
    assert result.exit_code == 0, result.output
    train = pq.read_table(tmp_path / "digits" / "train.parquet")
    test = pq.read_table(tmp_path / "digits" / "test.parquet")
    assert train.num_rows + test.num_rows == 1797 and train.column_names == ["features", "label"]
    first = np.asarray(train.column("features")[0].as_py())
    assert first.shape == (64,) and 0.0 <= first.min() and first.max() <= 1.0
    missing = runner.invoke(main, ["datasets", "export", "mnist", str(tmp_path / "m")])
    assert missing.exit_code == 2 and "built in: digits, fashion-mnist, synthetic" in missing.output


def test_synthetic_data_of_any_size() -> None:
    data = datasets.load("synthetic:5000", seed=3)
    assert len(data.x_train) + len(data.x_test) == 5000
    assert data.x_train.shape[1] == 32 and set(np.unique(data.y_train)) == {0, 1, 2, 3}
    assert data.x_train.dtype == np.float32 and 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0
    with pytest.raises(ValueError, match="number of samples"):
        datasets.load("synthetic:lots")
    with pytest.raises(ValueError, match="unknown data set"):
        datasets.load("digits:5")


def write_idx(path: Path, values: np.ndarray, header: bytes) -> None:
    with gzip.open(path, "wb") as f:
        f.write(header + values.astype(np.uint8).tobytes())


def test_fashion_mnist_from_a_local_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 28, 28))
    labels = np.array([0, 1, 2, 3, 4, 9])
    for prefix in ("train", "t10k"):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images, struct.pack(">IIII", 2051, 6, 28, 28))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels, struct.pack(">II", 2049, 6))
    listed = CliRunner().invoke(main, ["datasets", "list"], env={"DK_DATA_DIR": str(tmp_path / "nowhere")})
    if not Path(datasets.FASHION_MNIST_DIRS[0]).is_dir():
        assert "fashion-mnist" in listed.output and "not on this machine: set DK_DATA_DIR" in listed.output
    monkeypatch.setenv("DK_DATA_DIR", str(tmp_path))
    listed = CliRunner().invoke(main, ["datasets", "list"])
    assert f"(found in {tmp_path})" in listed.output
    data = datasets.fashion_mnist()
    assert data.x_train.shape == (6, 784) and data.num_classes == 10
    np.testing.assert_allclose(data.x_train[2], images[2].ravel() / 255, rtol=1e-6)
    np.testing.assert_array_equal(data.y_test, labels)
