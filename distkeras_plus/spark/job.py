"""`dk train`'s job: data (a built-in data set or files), a model (given or the default), a run
(`driver.train`), an evaluation on the test set on Spark, the saved model and the report."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distkeras_plus.data.datasets import default_model, load
from distkeras_plus.data.storage import check_writable, is_uri, load_model_file, save_model_file
from distkeras_plus.data.tables import check_model, prepare, read
from distkeras_plus.errors import CheckpointError, SettingError
from distkeras_plus.ps.checkpoint import Checkpoint, Folder
from distkeras_plus.settings import JobConfig
from distkeras_plus.spark import driver
from distkeras_plus.spark.predict import evaluate
from distkeras_plus.spark.session import local_session, quiet_logs, start_session


def split_data(spark: Any, job: JobConfig) -> tuple[Any, Any | None, str]:
    """The training and test DataFrames and a name for the data.

    A folder holding `train.*` and `test.*` (what `dk datasets export` writes) gives both;
    otherwise `test_data`, or a random `test_split` of the data, is the test set."""
    if job.data is None:
        ds = load(job.dataset, seed=job.seed)
        return ds.to_spark(spark), ds.to_spark(spark, "test"), job.dataset
    folder = Path(job.data)
    parts = {p.stem: p for p in folder.iterdir()} if "://" not in job.data and folder.is_dir() else {}
    if job.test_data is None and {"train", "test"} <= parts.keys():
        train_df = read(spark, parts["train"], job.features, job.label)
        return train_df, read(spark, parts["test"], job.features, job.label), job.data
    train_df = read(spark, job.data, job.features, job.label)
    if job.test_data is not None:
        return train_df, read(spark, job.test_data, job.features, job.label), job.data
    if job.test_split <= 0:
        return train_df, None, job.data
    train_df, test_df = train_df.randomSplit([1 - job.test_split, job.test_split], job.seed)
    return train_df, test_df, job.data


def resumed(folder: str, master: str | None = None, workers: int = 2) -> tuple[JobConfig, Checkpoint]:
    """The job recorded in the newest valid checkpoint in `folder` and that checkpoint; it goes on
    writing checkpoints there. `master`, when given, replaces the recorded one; a URI is read with
    a Spark session of `workers` (a local folder is read before Spark starts, with the recorded)."""
    spark = local_session(workers, master) if is_uri(folder) else None
    checkpoint = Folder(folder, spark).latest()
    recorded = checkpoint.config
    try:
        job = JobConfig.from_dict(
            {**recorded, "checkpoint_dir": folder, "master": master or recorded.get("master")}
        )
    except (SettingError, TypeError) as e:
        raise CheckpointError(f"the checkpoint in {folder} records no usable run: {e}") from None
    return job, checkpoint


def run_training(
    job: JobConfig,
    progress: Callable[[dict[str, Any]], None] | None = None,
    resume: Checkpoint | None = None,
    verbose: int = 0,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Trains, evaluates and saves; returns the report that `dk train` prints and the history
    (what `--history-file` holds: the per-epoch History and each worker's rows)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    check_writable(job.output_path, job.overwrite)  # before the training, not after it
    driver.decide(job.run_config(), with_keras=False)  # a mistake in the settings is one line at once
    # A local cluster of the workers' size, and a slot more for a parameter server in it.
    slots = job.workers + (job.ps_location == "executor")
    session = start_session(slots, job.master, job.remote)
    driver.decide(job.run_config())  # Keras imported while the JVM starts
    spark = session()
    quiet_logs(spark)
    train_df, test_df, data_name = split_data(spark, job)
    prepared = None
    if resume is not None:
        model = load_model_file(
            Folder(job.checkpoint_dir or "", spark).path("model.keras"), spark, compiled=True
        )
    elif job.model is not None:
        model = load_model_file(job.model, spark, compiled=True)
    else:
        prepared = prepare(train_df, job.features, job.label)
        model = default_model(prepared.columns.num_features, max(2, prepared.classes), job.seed)
    if test_df is not None:  # the test set is checked before the training too
        check_model(model, prepare(test_df, job.features, job.label), job.label)
    result = driver.train(
        train_df,
        model,
        job.run_config(),
        progress=progress,
        resume=resume,
        record=job.to_dict(),
        prepared=prepared,
        validation=job.validation_data,
        verbose=verbose,
    )
    scores = (
        evaluate(
            test_df, result.model, features_col=job.features, label_col=job.label, loss=job.loss, checked=True
        )
        if test_df is not None
        else None
    )
    model_path = save_model_file(result.model, job.output_path, spark)
    stats = result.ps_stats
    report = {
        "plugin": job.plugin,
        "options": result.options,
        "data": data_name,
        "workers": result.num_workers,
        "ps_location": result.ps_location,
        "epochs": result.history.epoch[-1] + 1 if result.history.epoch else job.epochs,
        "history": result.history.history,  # per epoch, as Keras' History holds it
        "samples": result.samples,
        "seconds": round(result.seconds, 3),
        "test_samples": scores.samples if scores else 0,
        "test_accuracy": scores.accuracy if scores else None,
        "test_loss": scores.loss if scores else None,
        "test_macro_f1": scores.macro_f1 if scores else None,
        "codec": result.codec,
        "pull_codec": result.pull_codec,
        "commits": stats.get("commits", 0),
        # From the parameter server's side: sent = pulls to workers, received = their commits.
        "bytes_sent": stats.get("bytes_out", 0),
        "bytes_received": stats.get("bytes_in", 0),
        "commit_bytes": stats.get("commit_bytes", 0),
        "model_path": model_path,
        "clock": stats.get("clock", resume.clock if resume else 0),
        "resumed_from_clock": resume.clock if resume else None,
        "retried_workers": result.retried_workers,
        "worker_peak_rss": result.worker_peak_rss,
        "spilled_bytes": result.spilled_bytes,
    }
    history = {
        "epoch": result.history.epoch,
        "history": result.history.history,
        "workers": result.worker_history,
    }
    return report, history
