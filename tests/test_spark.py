"""End-to-end training on Spark (slow: `nox -s slow`, which CI runs)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import CONVERGENCE, example_plugin

import distkeras_plus
from distkeras_plus import ADAG, TrainingError
from distkeras_plus.data.datasets import default_model
from distkeras_plus.errors import DataError, OptionError, PluginError, SettingError

pytestmark = pytest.mark.slow
HERE = Path(__file__).resolve().parent


def accuracy(model: Any, data: Any) -> float:
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return float(model.evaluate(data.x_test, data.y_test, verbose=0)[1])


@pytest.mark.parametrize("optimizer", sorted(CONVERGENCE))
def test_each_optimizer_learns_digits(optimizer: str, spark: Any, digits_data: Any) -> None:
    epochs = CONVERGENCE[optimizer]
    result = distkeras_plus.train(
        digits_data.to_spark(spark), default_model(64, 10), optimizer, num_workers=2, epochs=epochs
    )
    assert result.samples == epochs * len(digits_data.x_train)  # every sample, every epoch
    acc = accuracy(result.model, digits_data)
    print(f"{optimizer}: {acc:.3f} after {epochs} epochs in {result.seconds:.1f} s")
    assert acc >= 0.90


def test_trainer_class_api(spark: Any, digits_data: Any) -> None:
    trainer = ADAG(
        default_model(64, 10),
        loss="sparse_categorical_crossentropy",
        worker_optimizer="adam",
        num_workers=2,
        num_epoch=1,
        window=4,
    )
    model = trainer.train(digits_data.to_spark(spark))
    assert model.count_params() == default_model(64, 10).count_params()
    assert trainer.ps_stats["commits"] > 0 and trainer.history


def test_vectors_and_one_hot_labels(spark: Any, digits_data: Any) -> None:
    from pyspark.ml.linalg import Vectors

    rows = [
        (Vectors.dense(x.astype(float)), [float(i == y) for i in range(10)])
        for x, y in zip(digits_data.x_train[:400], digits_data.y_train[:400], strict=True)
    ]
    df = spark.createDataFrame(rows, ["pixels", "target"])
    result = distkeras_plus.train(
        df, default_model(64, 10), "adag", features_col="pixels", label_col="target", epochs=1
    )
    assert result.samples == 400
    assert all(np.isfinite(h["loss"]) for h in result.worker_history if h["loss"] is not None)


def test_more_partitions_than_cores(spark: Any, digits_data: Any) -> None:
    result = distkeras_plus.train(
        digits_data.to_spark(spark), default_model(64, 10), "adag", num_workers=5, epochs=1
    )
    assert {h["worker"] for h in result.worker_history} == set(range(5))
    assert result.samples == len(digits_data.x_train)


def test_synchronous_optimizers_need_a_slot_per_worker(spark: Any, digits_data: Any) -> None:
    with pytest.raises(TrainingError, match="runs all 3 workers at once, but the cluster has 2 task slots"):
        distkeras_plus.train(digits_data.to_spark(spark), default_model(64, 10), "averaging", num_workers=3)


def test_bad_input_is_a_clear_error(spark: Any, digits_data: Any) -> None:
    df = digits_data.to_spark(spark)
    with pytest.raises(DataError, match="no features column 'pixels'; the data has columns: features, label"):
        distkeras_plus.train(df, default_model(64, 10), features_col="pixels")
    with pytest.raises(
        DataError, match=r"features have 64 values per row but the model's input \(32,\) takes 32"
    ):
        distkeras_plus.train(df, default_model(32, 10))
    with pytest.raises(PluginError, match="unknown optimizer 'adagrad'"):
        distkeras_plus.train(df, default_model(64, 10), "adagrad")
    with pytest.raises(OptionError, match="adag has no option alpha"):
        distkeras_plus.train(df, default_model(64, 10), "adag", alpha=1.0)


def test_a_failing_worker_fails_the_run_with_its_message(spark: Any, digits_data: Any) -> None:
    # Class indices with a loss for one-hot labels. With a parameter server the driver computes
    # the loss once first and says so; the ensemble's workers meet it on their first batch.
    df = digits_data.to_spark(spark)
    with pytest.raises(SettingError, match=r"^the model's loss or metrics do not suit class-index labels: "):
        distkeras_plus.train(df, default_model(64, 10), "adag", loss="categorical_crossentropy")
    with pytest.raises(TrainingError, match=r"^training with ensemble failed: worker \d: ValueError: "):
        distkeras_plus.train(df, default_model(64, 10), "ensemble", loss="categorical_crossentropy")


def test_a_failing_callback_stops_the_run_and_the_server(spark: Any, digits_data: Any) -> None:
    import keras

    def boom(epoch: int, logs: Any) -> None:
        raise RuntimeError(f"boom at epoch {epoch}")

    failing = keras.callbacks.LambdaCallback(on_epoch_end=boom)
    with pytest.raises(RuntimeError, match=r"^boom at epoch 0$"):
        distkeras_plus.train(
            digits_data.to_spark(spark), default_model(64, 10), "adag", epochs=50, callbacks=[failing]
        )
    assert not [t for t in threading.enumerate() if t.name.startswith("dk-ps-")]  # the server stopped


def test_third_party_plugin_installs_lists_and_trains(spark: Any, digits_data: Any, tmp_path: Path) -> None:
    with example_plugin():
        dk = str(Path(sys.executable).parent / "dk")
        listed = json.loads(
            subprocess.run(
                [dk, "plugins", "list", "--output-format", "json"], capture_output=True, text=True, check=True
            ).stdout
        )
        mine = [row for row in listed if row["name"] == "mean-delta"]
        assert mine and mine[0]["distribution"] == "dk-example-plugin"
        result = distkeras_plus.train(
            digits_data.to_spark(spark), default_model(64, 10), "mean-delta", epochs=3, window=2
        )
        assert result.ps_stats["commits"] > 0
        assert accuracy(result.model, digits_data) > 0.5
        # A worker's own error ends the run at its first attempt, in one line: Spark does not retry it.
        with pytest.raises(TrainingError) as failed:
            distkeras_plus.train(digits_data.to_spark(spark), default_model(64, 10), "always-fails")
        assert str(failed.value).startswith("training with always-fails failed: worker ")
        assert str(failed.value).endswith("ValueError: this loop always fails (attempt 0)")


def test_training_from_parquet_and_csv_paths(spark: Any, digits_data: Any, tmp_path: Path) -> None:
    df = digits_data.to_spark(spark)
    df.write.parquet(str(tmp_path / "digits.parquet"))
    result = distkeras_plus.train(tmp_path / "digits.parquet", default_model(64, 10), "adag", epochs=1)
    assert result.samples == len(digits_data.x_train)

    import pandas as pd

    table = pd.DataFrame(digits_data.x_train[:300], columns=[f"pixel{i}" for i in range(64)])
    table["digit"] = digits_data.y_train[:300]
    table.to_csv(tmp_path / "digits.csv", index=False)
    result = distkeras_plus.train(
        str(tmp_path / "digits.csv"), default_model(64, 10), "adag", label_col="digit"
    )
    assert result.samples == 300

    with pytest.raises(DataError, match="no data at"):
        distkeras_plus.train(tmp_path / "missing.parquet", default_model(64, 10))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="neither Parquet nor CSV"):
        distkeras_plus.train(tmp_path / "notes.txt", default_model(64, 10))


@pytest.mark.parametrize("codec", ["fp16", "bf16", "int8", "int8:stochastic", "topk:0.01"])
def test_training_with_each_codec(codec: str, spark: Any, digits_data: Any) -> None:
    df = digits_data.to_spark(spark)
    result = distkeras_plus.train(df, default_model(64, 10), "adag", epochs=8, codec=codec, pull_codec="fp16")
    assert result.codec == codec
    acc = accuracy(result.model, digits_data)
    print(f"{codec}: {acc:.3f}, {result.ps_stats['bytes_in']} bytes committed")
    assert acc >= 0.88
    commits = result.ps_stats["commits"]
    n = result.model.count_params()
    assert result.ps_stats["bytes_in"] < commits * (4 * n) * (0.55 if codec[:4] in ("fp16", "bf16") else 0.3)
