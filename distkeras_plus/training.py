"""`dk train`: a built-in data set, the default model, a Spark run, a test-set evaluation."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from distkeras_plus.datasets import default_model, load
from distkeras_plus.engine import local_session, train


def run_training(
    *,
    plugin: str,
    dataset: str,
    workers: int,
    epochs: int,
    batch_size: int,
    master: str | None,
    options: dict[str, Any],
    worker_optimizer: str | None,
    seed: int,
    output: Path,
    codec: str | None = None,
    pull_codec: str = "none",
) -> dict[str, Any]:
    """Trains and returns the report that `dk train` prints."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    data = load(dataset, seed=seed)
    spark = local_session(workers, master)
    spark.sparkContext.setLogLevel("ERROR")
    model = default_model(data.x_train.shape[1], data.num_classes, seed)
    result = train(
        data.to_spark(spark),
        model,
        plugin,
        options,
        num_workers=workers,
        epochs=epochs,
        batch_size=batch_size,
        worker_optimizer=worker_optimizer,
        seed=seed,
        codec=codec,
        pull_codec=pull_codec,
    )
    trained = result.model
    trained.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    test_loss, test_accuracy = trained.evaluate(data.x_test, data.y_test, verbose=0)
    trained.save(output)
    stats = result.ps_stats
    return {
        "plugin": plugin,
        "options": result.options,
        "workers": result.num_workers,
        "epochs": epochs,
        "samples": result.samples,
        "seconds": round(result.seconds, 3),
        "test_accuracy": float(test_accuracy),
        "test_loss": float(test_loss),
        "codec": result.codec,
        "pull_codec": result.pull_codec,
        "commits": stats.get("commits", 0),
        # From the parameter server's side: sent = pulls to workers, received = their commits.
        "bytes_sent": stats.get("bytes_out", 0),
        "bytes_received": stats.get("bytes_in", 0),
        "commit_bytes": stats.get("commit_bytes", 0),
        "model_path": str(output.resolve()),
    }
