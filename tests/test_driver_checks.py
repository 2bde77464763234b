"""Mistakes caught on the driver before any training task starts: one line, exit 2, naming the
column, the value and the fix, and nothing written to the output path."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import keras  # imported once here, so the timings below are the checks' own
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from distkeras_plus.cli import main
from distkeras_plus.data.datasets import default_model
from distkeras_plus.data.tables import check_features
from distkeras_plus.errors import DataError


def dk_train(*args: str, env: dict[str, str] | None = None) -> tuple[str, float]:
    """Runs `dk train` in this process; returns its one error line and how long it took."""
    return dk("train", *args, env=env)


def dk(*args: str, env: dict[str, str] | None = None) -> tuple[str, float]:
    """Runs a failing `dk` command in this process; returns its one error line and how long it took."""
    started = time.perf_counter()
    result = CliRunner().invoke(main, list(args), env=env)
    took = time.perf_counter() - started
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0], took


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--codec", "gzip"], 'unknown codec "gzip"'),
        (["--pull-codec", "int8"], "pulls can use none, fp16, bf16, not int8"),
        (["--loss", "categorical_crossentropyy"], "did you mean 'categorical_crossentropy'?"),
        (["--metrics", "accuracy,accuarcy"], "Keras has no metric 'accuarcy'; did you mean 'accuracy'?"),
        (["--worker-optimizer", "adamm"], "did you mean 'adam'?"),
        (["--master", "local[abc]"], "'local[abc]' is not a Spark master URL"),
        (["--master", "yarn"], "--master yarn needs HADOOP_CONF_DIR or YARN_CONF_DIR"),
        (["--remote", "grpc://h:1"], "'grpc://h:1' is not a Spark Connect URL; use sc://HOST:PORT"),
        (
            ["--remote", "local[2]", "--master", "local[2]"],
            "give a Spark master or a Spark Connect URL, not both",
        ),
        (["--output", "/proc/nope/m.keras"], "cannot save the model to /proc/nope/m.keras"),
        (["--output", "model.h5"], "give a path ending in .keras"),
    ],
    ids=[
        "codec",
        "pull-codec",
        "loss",
        "metric",
        "optimizer",
        "master",
        "yarn",
        "remote",
        "remote-and-master",
        "output",
        "suffix",
    ],
)
def test_settings_are_checked_before_spark_starts(args: list[str], message: str) -> None:
    assert keras.__version__
    line, took = dk_train(*args, env={"HADOOP_CONF_DIR": "", "YARN_CONF_DIR": ""})
    assert message in line
    assert took < 2.0, f"{took:.1f} s"


def test_a_misspelt_name_is_found_at_once_by_a_fresh_process(tmp_path: Path) -> None:
    """Importing Keras takes seconds: the first run resolves the names with Keras and keeps them
    (one file per Keras version), so that a later `dk train` reports a typo without importing it."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    command = [str(Path(sys.executable).parent / "dk"), "train", "--loss", "mean_squared_errr"]
    for _ in ("resolved with Keras", "from the cache"):
        started = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        took = time.perf_counter() - started
        assert done.returncode == 2 and done.stdout == "", (done.stdout, done.stderr)
        assert (
            done.stderr
            == "Error: Keras has no loss 'mean_squared_errr'; did you mean 'mean_squared_error'?\n"
        )
        assert [p.name for p in (tmp_path / "distkeras-plus").iterdir()] == [
            f"keras-{keras.__version__}-names.json"
        ]
    assert took < 2.0, f"{took:.1f} s"


def write(path: Path, features: list[Any], labels: list[Any], floating: bool = False) -> str:
    table = pa.table(
        {
            "features": pa.array(features, pa.list_(pa.float32())),
            "label": pa.array(labels, pa.float64() if floating else pa.int64()),
        }
    )
    pq.write_table(table, path)
    return str(path)


def rows(n: int, classes: int) -> tuple[list[Any], list[Any]]:
    rng = np.random.default_rng(0)
    return [list(rng.random(4)) for _ in range(n)], [i % classes for i in range(n)]


@pytest.fixture(scope="module")
def model4(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("model") / "four.keras"
    default_model(4, 4).save(path)
    return str(path)


@pytest.fixture(scope="module")
def model3(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("model") / "three.keras"
    default_model(4, 3).save(path)
    return str(path)


def bad_data(kind: str, folder: Path) -> str:
    x, y = rows(40, 4)
    path = folder / f"{kind}.parquet"
    if kind == "null-label":
        return write(path, x, [None, *y[1:]])
    if kind == "label-9":
        return write(path, x, [9, *y[1:]])
    if kind == "label-minus-1":
        return write(path, x, [-1, *y[1:]])
    if kind == "fractional":
        return write(path, x, [0.5, *map(float, y[1:])], floating=True)
    if kind == "nan-label":
        return write(path, x, [float("nan"), *map(float, y[1:])], floating=True)
    if kind == "null-features":
        return write(path, [None, *x[1:]], y)
    if kind == "nan-features":
        return write(path, [[float("nan"), 0, 0, 0], *x[1:]], y)
    if kind == "ragged":
        return write(path, [[0.0, 1.0], *x[1:]], y)
    return write(path, x, y)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("null-label", "label column 'label' is null, NaN or infinite in 1 of 40 rows; drop or fill"),
        ("nan-label", "label column 'label' is null, NaN or infinite in 1 of 40 rows"),
        ("label-9", "label column 'label' holds class 9 but the model has 4 output units (classes 0 to 3)"),
        ("label-minus-1", "label column 'label' holds -1, but class indices start at 0"),
        ("fractional", "label column 'label' holds 0.5, but labels are class indices"),
        ("null-features", "features column 'features' is null in 1 of 40 rows"),
        ("nan-features", "features column 'features' has NaN, infinite or null values in 1 of 40 rows"),
        ("ragged", "features column 'features' has rows of 2 and of 4 values"),
    ],
)
def test_bad_data_is_one_line_before_training(
    spark: Any, model4: str, tmp_path: Path, kind: str, message: str
) -> None:
    output = tmp_path / "out" / "m.keras"
    line, took = dk_train(
        "--data",
        bad_data(kind, tmp_path),
        "--test-split",
        "0",
        "--model",
        model4,
        "--output",
        str(output),
    )
    assert message in line
    assert not output.exists()
    assert took < 15.0, f"{took:.1f} s"


def test_a_model_too_small_for_the_classes(spark: Any, model3: str, tmp_path: Path) -> None:
    line, _ = dk_train("--data", bad_data("good", tmp_path), "--test-split", "0", "--model", model3)
    assert "holds class 3 but the model has 3 output units (classes 0 to 2); give its last layer 4" in line


def test_resume_refuses_a_setting_that_differs_from_the_recorded_run(tmp_path: Path) -> None:
    from distkeras_plus.ps.checkpoint import Folder
    from distkeras_plus.settings import JobConfig

    folder = tmp_path / "ckpt"
    recorded = JobConfig(plugin="adag", epochs=20).to_dict()
    Folder(str(folder)).save(5, np.zeros(10, np.float32), {"config": recorded, "epochs_done": 1})
    line, took = dk_train("--resume", str(folder), "--epochs", "10")
    assert f"--resume goes on with the run recorded in {folder}, whose --epochs is 20, not 10" in line
    line, _ = dk_train("--resume", str(folder), "--opt", "window=3")
    assert "whose --opt is {'window': 12" in line and "not {'window': 3" in line
    assert took < 2.0, f"{took:.1f} s"


def test_an_earlier_model_is_not_replaced_without_overwrite(tmp_path: Path) -> None:
    earlier = tmp_path / "m.keras"
    earlier.write_bytes(b"an earlier run's model")
    line, took = dk_train("--output", str(earlier))
    refusal = f"{earlier} exists already; pass --overwrite to replace it, or choose another --output"
    assert line == f"Error: {refusal}"
    assert took < 2.0, f"{took:.1f} s"
    # --overwrite passes the output's check: the next check is what fails.
    line, _ = dk_train("--output", str(earlier), "--overwrite", "--worker-optimizer", "adamm")
    assert "Keras has no worker optimizer 'adamm'" in line
    assert earlier.read_bytes() == b"an earlier run's model"


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("null-features", "features column 'features' is null in 1 of 40 rows"),
        ("nan-features", "features column 'features' has NaN, infinite or null values in 1 of 40 rows"),
        ("ragged", "features column 'features' has rows of 2 and of 4 values"),
    ],
)
def test_predict_checks_the_features_first(
    spark: Any, model4: str, tmp_path: Path, kind: str, message: str
) -> None:
    output = tmp_path / "predicted"
    line, took = dk("predict", "--data", bad_data(kind, tmp_path), "--model", model4, "--output", str(output))
    assert message in line
    assert not output.exists()
    assert took < 15.0, f"{took:.1f} s"


def test_predict_keeps_earlier_predictions_without_overwrite(spark: Any, model4: str, tmp_path: Path) -> None:
    data, output = bad_data("good", tmp_path), tmp_path / "predicted"
    output.mkdir()
    (output / "earlier.parquet").write_bytes(b"earlier")
    line, _ = dk("predict", "--data", data, "--model", model4, "--output", str(output))
    assert f"{output} exists already; pass --overwrite" in line
    assert [p.name for p in output.iterdir()] == ["earlier.parquet"]
    result = CliRunner().invoke(
        main, ["predict", "--data", data, "--model", model4, "--output", str(output), "--overwrite"]
    )
    assert result.exit_code == 0, result.output
    assert spark.read.parquet(str(output)).count() == 40


@pytest.mark.parametrize(
    ("row", "bad"),
    [
        ([0.0, 1.0, 2.0], False),
        ([3.4e38, -3.4e38, 0.0], False),  # the largest floats are finite
        ([0.0, None, 2.0], True),
        ([float("nan"), 1.0, 2.0], True),
        ([0.0, None, float("nan")], True),
        ([0.0, 1.0, float("inf")], True),
        ([float("-inf"), 1.0, 2.0], True),
    ],
)
def test_the_feature_check_finds_every_null_nan_or_infinite_value(
    spark: Any, row: list[Any], bad: bool
) -> None:
    df = spark.createDataFrame([([0.5, 0.5, 0.5],), (row,)], "features array<double>")
    if bad:
        with pytest.raises(DataError, match="has NaN, infinite or null values in 1 of 2 rows"):
            check_features(df, "features")
    else:
        assert check_features(df, "features")[1] == 3
