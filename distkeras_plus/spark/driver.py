"""One training run, on the driver: plan it (the plugin and its options resolved once, the data
and the model checked once), start the parameter server with the model's weights as the centre,
run one Spark task per worker (`executor.run_worker`, a barrier stage for synchronous
optimizers), and collect the trained model, the history and the server's statistics."""

from __future__ import annotations

import json
import math
import os
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distkeras_plus._core import ELASTIC_CODECS, Centre, Codec, ParameterServer
from distkeras_plus.data.storage import model_bytes, save_model_file
from distkeras_plus.data.tables import Prepared, check_model, default_loss, prepare, read
from distkeras_plus.errors import SettingError, TrainingError, exception_line
from distkeras_plus.plugins import registry
from distkeras_plus.plugins.spec import OptimizerSpec, RuleChoice
from distkeras_plus.ps.checkpoint import Checkpoint, Checkpointer, Folder, Policy, check_resumable
from distkeras_plus.ps.serve import new_secret
from distkeras_plus.ps.weights import FlatWeights
from distkeras_plus.settings import RunConfig
from distkeras_plus.spark import session
from distkeras_plus.spark.executor import RESULT_SCHEMA, WorkerConfig, run_worker
from distkeras_plus.worker import compiling


@dataclass
class TrainResult:
    """The trained model, each worker's history and the parameter server's statistics."""

    model: Any
    history: list[dict[str, Any]]
    ps_stats: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    samples: int = 0
    num_workers: int = 0
    optimizer: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    codec: str = "none"
    pull_codec: str = "none"
    #: Workers whose result came from a retried task (Spark tried them again after a failure).
    retried_workers: list[int] = field(default_factory=list)
    #: Each worker's peak memory (its Python process's peak RSS, bytes), by worker.
    worker_peak_rss: list[int] = field(default_factory=list)
    #: Bytes of partitions the workers spilled to local disk (too large to hold).
    spilled_bytes: int = 0


@dataclass(frozen=True)
class Decisions:
    """What a run's settings decide, with neither Spark nor the data."""

    config: RunConfig
    spec: OptimizerSpec
    options: dict[str, Any]
    rule: RuleChoice | None
    workers: int
    codec: str
    worker_optimizer: Any


@dataclass(frozen=True)
class Plan(Decisions):
    """What a run will do, decided on the driver before anything starts."""

    loss: Any
    data: Prepared


def decide(config: RunConfig, with_keras: bool = True) -> Decisions:
    """Every check of the settings alone (the plugin and its options, codecs, the loss, metrics and
    optimizer resolved with Keras): a mistake is one line before Spark starts. Without
    `with_keras`, the names are checked only against those Keras is known to have (at once)."""
    spec = registry.get(config.plugin).spec
    options = spec.parse_options(config.options)
    codec = Codec(config.codec or spec.codec)
    workers = 1 if spec.single_partition else config.workers
    worker_optimizer = config.worker_optimizer or spec.worker_optimizer_for(options)
    compiling.check(config.loss, config.metrics, worker_optimizer, with_keras)
    rule = spec.rule_for(options, workers)
    if rule is not None and rule.name == "elastic" and not codec.elastic_capable:
        raise SettingError(
            f"{spec.name} commits weights, which {codec.name} cannot compress; "
            f"use {', '.join(ELASTIC_CODECS)}"
        )
    if config.checkpoint_dir is not None and rule is None:
        raise SettingError(f"{spec.name} trains without a parameter server: there is nothing to checkpoint")
    return Decisions(config, spec, options, rule, workers, codec.name, worker_optimizer)


def plan(df: Any, model: Any, config: RunConfig, prepared: Prepared | None = None) -> Plan:
    """`decide`, then the checks against the cluster and the data: one Spark aggregation checks
    the data (`prepared`, when given, is its result already) and the model's shapes against it."""
    decided = decide(config)
    if decided.spec.synchronous:
        slots = session.task_slots(df.sparkSession)
        if decided.workers > slots:
            raise TrainingError(
                f"{decided.spec.name} runs all {decided.workers} workers at once, "
                f"but the cluster has {slots} task slots"
            )
    data = prepared or prepare(df, config.features, config.label)
    check_model(model, data, config.label)
    loss = default_loss(data.columns.one_hot) if config.loss is None else config.loss
    return Plan(**vars(decided), loss=loss, data=data)


def train(
    df: Any,
    model: Any,
    config: RunConfig,
    *,
    progress: Callable[[dict[str, Any]], None] | None = None,
    resume: Checkpoint | None = None,
    record: Mapping[str, Any] | None = None,
    prepared: Prepared | None = None,
) -> TrainResult:
    """Trains `model` on `df` as `config` says; see `distkeras_plus.train`.

    `progress`, when given, is called about once a second from another thread with what the
    parameter server knows of the run so far (see `progress_of`). `record` is what checkpoints
    keep of the run's configuration (default: `config`). `prepared`: `df` already prepared."""
    if isinstance(df, str | Path):
        df = read(session.local_session(config.workers), df, config.features, config.label)
    p = plan(df, model, config, prepared)
    spark = df.sparkSession
    flat = FlatWeights.from_arrays(model.get_weights())
    start_clock, epochs_before = 0, 0
    if resume is not None:
        check_resumable(resume, flat.layout.hash, flat.layout.num_params)
        np.copyto(flat.flat, resume.values)
        model.set_weights(flat.views)
        start_clock, epochs_before = resume.clock, min(resume.epochs_done, config.epochs)
    if epochs_before == config.epochs:
        return TrainResult(
            model=model, history=[], num_workers=p.workers, optimizer=p.spec.name, options=p.options
        )
    checkpointer = None
    if config.checkpoint_dir is not None:
        folder = Folder(config.checkpoint_dir, spark)
        save_model_file(model, folder.path("model.keras"), spark)  # the architecture, for --resume
        meta = {
            "config": dict(record if record is not None else config.to_dict()),
            "optimizer": p.spec.name,
            "options": p.options,
            "epochs": config.epochs,
            "layout": flat.layout.hash.hex(),
            "shapes": flat.layout.shapes,
        }
        policy = Policy(config.checkpoint_every, config.checkpoint_seconds)
        checkpointer = Checkpointer(folder, policy, meta, p.data.rows, epochs_before)
    server = None
    secret = new_secret()
    started = time.perf_counter()
    try:
        address = None
        if p.rule is not None:
            host = session.ps_host(spark, config.ps_host or os.environ.get("DK_PS_HOST"))
            bind = "127.0.0.1" if host.startswith("127.") else "0.0.0.0"  # noqa: S104 - authenticated
            centre = Centre(
                flat.flat, p.rule.name, dict(p.rule.params), round_timeout=config.timeout, clock=start_clock
            )
            server = ParameterServer(centre, flat.layout, secret, host=bind, idle_timeout=config.timeout)
            address = f"{host}:{server.port}"
        cores = os.cpu_count() or 1
        cfg = WorkerConfig(
            optimizer=p.spec.name,
            options=p.options,
            model=model_bytes(model),
            loss=p.loss,
            metrics=list(config.metrics),
            worker_optimizer=p.worker_optimizer,
            batch_size=config.batch_size,
            epochs=config.epochs - epochs_before,
            start_clock=start_clock,
            seed=config.seed,
            num_workers=p.workers,
            columns=p.data.columns,
            ps_address=address,
            secret=secret,
            codec=p.codec,
            pull_codec=config.pull_codec,
            timeout=config.timeout,
            in_memory_mb=config.in_memory_mb,
            threads=max(1, cores // p.workers) if session.is_local(spark) else 1,
        )
        rows = _run_stage(p, cfg, server, started, progress, checkpointer)
        seconds = time.perf_counter() - started
        ps_stats: dict[str, Any] = {}
        if server is not None:
            server.stop()
            ps_stats = server.stats()
            if checkpointer is not None:
                checkpointer.write(server, config.epochs)
            model.set_weights(FlatWeights(flat.layout, server.centre.to_numpy()).views)
        if progress is not None:
            progress(progress_of(ps_stats, seconds))  # the last word, however short the run
        if p.spec.combine is not None:
            model = p.spec.combine(model, [r["result"] for r in sorted(rows, key=lambda r: r["worker"])])
    finally:
        if server is not None:
            server.stop()
    history = sorted((row for r in rows for row in json.loads(r["history"])), key=lambda h: h["time"])
    return TrainResult(
        model=model,
        history=history,
        ps_stats=ps_stats,
        seconds=seconds,
        samples=sum(r["samples"] for r in rows),
        num_workers=p.workers,
        optimizer=p.spec.name,
        options=p.options,
        codec=p.codec,
        pull_codec=config.pull_codec,
        retried_workers=sorted(r["worker"] for r in rows if r["attempt"] > 0),
        worker_peak_rss=[r["peak_rss"] for r in sorted(rows, key=lambda r: r["worker"])],
        spilled_bytes=sum(r["spilled"] for r in rows),
    )


class _Reported:
    """An accumulator of the errors workers report: their one-line messages, in order."""

    def zero(self, value: list[str]) -> list[str]:
        return []

    def addInPlace(self, first: list[str], second: list[str]) -> list[str]:
        return [*first, *second]


def _run_stage(
    p: Plan,
    cfg: WorkerConfig,
    server: ParameterServer | None,
    started: float,
    progress: Callable[[dict[str, Any]], None] | None,
    checkpointer: Checkpointer | None,
) -> list[Any]:
    """One task per worker, watched; a failure is the failing worker's own error, in one line.
    A worker's error that a retry would meet again reaches the driver with its task's end (an
    accumulator), and the driver cancels the stage then, rather than when every worker is done."""
    sc = p.data.df.sparkSession.sparkContext
    reported = sc.accumulator([], _Reported())
    group = f"distkeras-plus-{uuid.uuid4().hex}"

    def report(line: str) -> None:
        reported.add([line])

    def task(batches: Iterator[Any]) -> Iterator[Any]:
        return run_worker(cfg, batches, report)

    def failed(line: str) -> TrainingError:
        error = TrainingError(f"training with {p.spec.name} failed: {line}")
        error.ps_address = cfg.ps_address
        return error

    watching = _watch(server, started, progress, checkpointer, lambda: bool(reported.value), group)
    try:
        sc.setJobGroup(group, "distkeras-plus training", interruptOnCancel=True)
        data = p.data.df.repartition(p.workers)
        results = data.mapInArrow(task, RESULT_SCHEMA, barrier=p.spec.synchronous)
        if p.spec.synchronous:
            # Spark retries a failed barrier stage only when it is not the last stage of its
            # job (a ResultStage); a shuffle after it makes it one that can be retried.
            results = results.repartition(1)
        rows = list(results.collect())
    except Exception as e:
        raise failed(reported.value[0] if reported.value else exception_line(str(e))) from e
    finally:
        watching.set()
        sc.setLocalProperty("spark.jobGroup.id", None)
    errors = [r["error"] for r in rows if r["error"]]
    if errors:
        raise failed(errors[0])
    return rows


def progress_of(stats: Mapping[str, Any] | None, seconds: float) -> dict[str, Any]:
    """A run's progress from the parameter server's statistics: commits, bytes, and the samples
    and latest loss that workers report with their commits (summed and averaged over workers)."""
    # A worker that has only pulled has reported nothing yet.
    workers = [w for w in (stats or {}).get("workers", {}).values() if w.get("commits")]
    losses = [w["loss"] for w in workers if math.isfinite(w.get("loss", math.nan))]
    return {
        "seconds": round(seconds, 1),
        "commits": (stats or {}).get("commits", 0),
        "samples": sum(w.get("samples", 0) for w in workers),
        "loss": sum(losses) / len(losses) if losses else None,
        "bytes_received": (stats or {}).get("bytes_in", 0),
        "bytes_sent": (stats or {}).get("bytes_out", 0),
    }


def _watch(
    server: ParameterServer | None,
    started: float,
    progress: Callable[[dict[str, Any]], None] | None,
    checkpointer: Checkpointer | None,
    failed: Callable[[], bool],
    group: str,
) -> threading.Event:
    """Once a second until the returned event is set: reports progress, writes checkpoints, and
    cancels the job group once a worker has `failed`."""
    done = threading.Event()

    def loop() -> None:
        while not done.wait(1.0):
            if failed():
                from pyspark import SparkContext

                if (sc := SparkContext._active_spark_context) is not None:
                    sc.cancelJobGroup(group)
                return
            stats = server.stats() if server else None
            if progress is not None:
                progress(progress_of(stats, time.perf_counter() - started))
            if checkpointer is not None and server is not None and stats is not None:
                try:
                    checkpointer.tick(server, stats)
                except Exception as e:  # a full disk must not stop training; the next tick retries
                    warnings.warn(f"could not write a checkpoint: {e}", stacklevel=1)

    threading.Thread(target=loop, name="dk-progress", daemon=True).start()
    return done
