"""`dk train`: data (a built-in data set or files), a model (given or the default), a Spark run,
an evaluation on the test set on Spark, and the report."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from distkeras_plus import registry
from distkeras_plus.checkpoint import Checkpoint, CheckpointError, Folder, Policy
from distkeras_plus.data import DataError, num_classes, prepare, read
from distkeras_plus.datasets import default_model, load
from distkeras_plus.engine import local_session, train
from distkeras_plus.predict import evaluate
from distkeras_plus.storage import is_uri, load_model_file, save_model_file


@dataclass
class TrainJob:
    """Everything `dk train` takes; the defaults are the command's."""

    plugin: str = "adag"
    dataset: str = "digits"
    data: str | None = None
    test_data: str | None = None
    features: str = "features"
    label: str = "label"
    model: str | None = None
    loss: str | None = None
    metrics: Sequence[str] = ("accuracy",)
    workers: int = 2
    master: str | None = None
    epochs: int = 20
    batch_size: int = 32
    worker_optimizer: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    validation_split: float = 0.2
    seed: int = 0
    codec: str | None = None
    pull_codec: str = "none"
    output: str = ""
    checkpoint_dir: str | None = None
    checkpoint_every: int | None = None
    checkpoint_seconds: float | None = 60.0


def split_data(spark: Any, job: TrainJob) -> tuple[Any, Any | None, str]:
    """The training and test DataFrames and a name for the data.

    A folder holding `train.*` and `test.*` (what `dk datasets export` writes) gives both;
    otherwise `test_data`, or a random `validation_split` of the data, is the test set."""
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
    if job.validation_split <= 0:
        return train_df, None, job.data
    if job.validation_split >= 1:
        raise DataError("--validation-split is the fraction held out for testing: give a number below 1")
    train_df, test_df = train_df.randomSplit([1 - job.validation_split, job.validation_split], job.seed)
    return train_df, test_df, job.data


def resumed(folder: str, master: str | None = None, workers: int = 2) -> tuple[TrainJob, Checkpoint]:
    """The job recorded in the newest valid checkpoint in `folder` and that checkpoint; it goes on
    writing checkpoints there. `master`, when given, replaces the recorded one; a URI is read with
    a Spark session of `workers` (a local folder is read before Spark starts, with the recorded)."""
    spark = local_session(workers, master) if is_uri(folder) else None
    checkpoint = Folder(folder, spark).latest()
    try:
        job = TrainJob(**checkpoint.config)
    except TypeError as e:
        raise CheckpointError(f"the checkpoint in {folder} records no usable run: {e}") from None
    job.checkpoint_dir, job.master = folder, master or job.master
    return job, checkpoint


def run_training(
    job: TrainJob,
    progress: Callable[[dict[str, Any]], None] | None = None,
    resume: Checkpoint | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Trains, evaluates and saves; returns the report that `dk train` prints and the history."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    registry.get(job.plugin).spec.parse_options(job.options)  # a typo fails before Spark starts
    policy = Policy(job.checkpoint_every, job.checkpoint_seconds)
    spark = local_session(job.workers, job.master)
    spark.sparkContext.setLogLevel("ERROR")
    train_df, test_df, data_name = split_data(spark, job)
    if resume is not None:
        model = load_model_file(Folder(job.checkpoint_dir or "", spark).path("model.keras"), spark)
    elif job.model is not None:
        model = load_model_file(job.model, spark)
    else:
        prepared, columns = prepare(train_df, job.features, job.label)
        model = default_model(columns.num_features, num_classes(prepared, columns), job.seed)
    result = train(
        train_df,
        model,
        job.plugin,
        job.options,
        features_col=job.features,
        label_col=job.label,
        num_workers=job.workers,
        epochs=job.epochs,
        batch_size=job.batch_size,
        loss=job.loss,
        metrics=list(job.metrics),
        worker_optimizer=job.worker_optimizer,
        seed=job.seed,
        codec=job.codec,
        pull_codec=job.pull_codec,
        progress=progress,
        checkpoint_dir=job.checkpoint_dir,
        checkpoint_policy=policy,
        resume=resume,
        config=asdict(job),
    )
    scores = (
        evaluate(test_df, result.model, features_col=job.features, label_col=job.label, loss=job.loss)
        if test_df is not None
        else None
    )
    output = job.output or f"dk-model-{job.plugin}.keras"
    model_path = save_model_file(result.model, output, spark)
    stats = result.ps_stats
    report = {
        "plugin": job.plugin,
        "options": result.options,
        "data": data_name,
        "workers": result.num_workers,
        "epochs": job.epochs,
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
    }
    return report, result.history
