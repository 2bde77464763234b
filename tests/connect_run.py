"""Trains digits under a real Spark Connect session (a local Connect server this process starts)
and prints what it found as JSON: run by test_connect.py in a process of its own, since a
process's classic SparkContext would be reused, without Connect, by `remote("local[2]")`."""

from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Any


def main() -> None:
    """`connect_run.py FOLDER [optimizers]`: the features of a run under Connect, or every
    optimizer's digits convergence run."""
    os.environ["PYSPARK_PYTHON"] = sys.executable
    from pyspark.sql import SparkSession
    from pyspark.sql.connect.session import SparkSession as ConnectSession

    # Nothing on the training path may ask for a SparkContext or the JVM (which under Connect
    # fail, but could be caught): every ask is recorded.
    touched: list[str] = []
    getattr_ = ConnectSession.__getattr__

    def recorded(self: Any, name: str) -> Any:
        if name in ("sparkContext", "_jsc", "_jvm", "_jsparkSession", "_jconf"):
            touched.append(f"{name}:\n" + "".join(traceback.format_stack(limit=8)))
        return getattr_(self, name)

    ConnectSession.__getattr__ = recorded  # type: ignore[method-assign]
    spark = (
        SparkSession.builder.remote("local[2]")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.executorEnv.PYTHONSAFEPATH", "1")
        .getOrCreate()
    )
    import pyarrow.parquet as pq

    from distkeras_plus.data.datasets import digits

    data = digits()
    folder = sys.argv[1]
    for split in ("train", "test"):
        pq.write_table(data._table(split), f"{folder}/{split}.parquet")
    train_df = spark.read.parquet(f"{folder}/train.parquet")
    test_df = spark.read.parquet(f"{folder}/test.parquet")
    mode = sys.argv[2] if len(sys.argv) > 2 else "features"
    if mode == "optimizers":
        found = optimizers(train_df, data)
    elif mode == "failing":
        found = failing(train_df)
    else:
        found = features(spark, train_df, test_df, data)
    found["spark_context_touched"] = touched
    print(json.dumps(found))


def accuracy(model: Any, data: Any) -> float:
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return float(model.evaluate(data.x_test, data.y_test, verbose=0)[1])


def optimizers(train_df: Any, data: Any) -> dict[str, Any]:
    """Each optimizer as the classic convergence test trains it (tests/test_spark.py)."""
    from helpers import CONVERGENCE

    import distkeras_plus
    from distkeras_plus.data.datasets import default_model

    found: dict[str, Any] = {}
    for plugin, epochs in sorted(CONVERGENCE.items()):
        result = distkeras_plus.train(
            train_df, default_model(64, 10), plugin, num_workers=2, epochs=epochs, verbose=0
        )
        found[plugin] = {
            "accuracy": accuracy(result.model, data),
            "samples": result.samples,
            "epochs": epochs,
        }
    return found


def failing(train_df: Any) -> dict[str, Any]:
    """Worker 1 of the example plugin's optimizers fails after three commits; the other would
    train for minutes (and, synchronous, wait for worker 1 as long as the round timeout). Its line,
    and how soon the run ended."""
    import time

    import distkeras_plus
    from distkeras_plus.data.datasets import default_model
    from distkeras_plus.errors import DkError

    found: dict[str, Any] = {}
    for plugin in ("fails-later", "fails-later-in-a-round"):
        started = time.perf_counter()
        try:
            distkeras_plus.train(train_df, default_model(64, 10), plugin, epochs=300, verbose=0)
        except DkError as e:
            found[plugin] = {"error": str(e), "seconds": time.perf_counter() - started}
    return found


def features(spark: Any, train_df: Any, test_df: Any, data: Any) -> dict[str, Any]:
    import distkeras_plus
    from distkeras_plus import ADAG
    from distkeras_plus.data.datasets import default_model
    from distkeras_plus.errors import DkError
    from distkeras_plus.spark import session

    folder = sys.argv[1]
    found: dict[str, Any] = {
        "connect": session.is_connect(spark),
        "local": session.is_local(spark),
        "slots": session.task_slots(spark),
    }
    runs: list[tuple[str, dict[str, Any]]] = [("adag", {"window": 6}), ("averaging", {}), ("ensemble", {})]
    for plugin, options in runs:
        model = default_model(64, 10)
        result = distkeras_plus.train(train_df, model, plugin, num_workers=2, epochs=4, verbose=0, **options)
        found[plugin] = {"accuracy": accuracy(result.model, data), "samples": result.samples}
    trainer = ADAG(default_model(64, 10), num_workers=2, num_epoch=4, window=6)  # as the adag run above
    found["trainer_class"] = {
        "accuracy": accuracy(trainer.train(train_df), data),
        "commits": trainer.ps_stats["commits"],
    }
    for plugin in ("adag", "easgd"):  # the server in a task of the stage, asynchronous and synchronous
        in_cluster = distkeras_plus.train(
            train_df,
            default_model(64, 10),
            plugin,
            num_workers=1,
            epochs=3,
            verbose=0,
            ps_location="executor",
        )
        found[f"in_cluster_{plugin}"] = {
            "samples": in_cluster.samples,
            "commits": in_cluster.ps_stats["commits"],
            "accuracy": accuracy(in_cluster.model, data),
        }
    result = distkeras_plus.train(
        train_df, default_model(64, 10), "adag", epochs=2, verbose=0, validation_data=test_df
    )
    found["val_accuracy"] = result.history.history["val_accuracy"]
    # Checkpoints and models at a URI: through pyarrow's file systems, with no JVM on this side.
    from pathlib import Path

    from distkeras_plus.data.storage import load_model_file, save_model_file
    from distkeras_plus.transformers import ModelPredictor, Standardizer

    checkpoints = (Path(folder) / "checkpoints").as_uri()
    first = distkeras_plus.train(
        train_df, default_model(64, 10), "adag", epochs=1, verbose=0, checkpoint_dir=checkpoints
    )
    again = distkeras_plus.train(
        train_df, default_model(64, 10), "adag", epochs=2, verbose=0, resume=checkpoints
    )
    found["resumed"] = {
        "first": first.ps_stats["clock"],
        "clock": again.ps_stats["clock"],
        "samples": again.samples,
    }
    uri = (Path(folder) / "saved" / "m.keras").as_uri()
    save_model_file(again.model, uri, spark)
    loaded = load_model_file(uri, spark, compiled=True)
    found["model_at_uri"] = all(
        (a == b).all() for a, b in zip(loaded.get_weights(), again.model.get_weights(), strict=True)
    )
    stage = (Path(folder) / "stage").as_uri()
    ModelPredictor(again.model, batchSize=32).write().save(stage)
    ModelPredictor(again.model, batchSize=64).write().overwrite().save(stage)
    found["stage_at_uri"] = ModelPredictor.load(stage).getOrDefault("batchSize")
    scaler = (Path(folder) / "scaler").as_uri()
    for out in ("first", "second"):  # a stage of Params alone, overwritten
        Standardizer(outputCol=out).write().overwrite().save(scaler)
    found["params_stage_at_uri"] = Standardizer.load(scaler).getOutputCol()
    try:
        distkeras_plus.train(train_df, default_model(64, 10), "adag", label_col="nope", verbose=0)
    except DkError as e:
        found["error"] = str(e)
    # A worker's own error and a callback's are one line, and the stage ends at once.
    try:
        distkeras_plus.train(
            train_df, default_model(64, 10), "ensemble", loss="categorical_crossentropy", verbose=0
        )
    except DkError as e:
        found["worker_error"] = str(e)
    import time

    import keras

    class Fails(keras.callbacks.Callback):  # type: ignore[misc]
        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            raise RuntimeError("a callback of the user's failed")

    started = time.perf_counter()
    try:
        distkeras_plus.train(
            train_df, default_model(64, 10), "adag", epochs=1000, callbacks=[Fails()], verbose=0
        )
    except RuntimeError as e:
        found["callback_error"] = {"error": str(e), "seconds": time.perf_counter() - started}
    return found


if __name__ == "__main__":
    main()
