"""One training run, on the driver: plan it (the plugin and its options resolved once, the data
and the model checked once, the model's compile config settled), start the parameter server with
the model's weights as the centre, run one Spark task per worker (`executor.run_worker`, a
barrier stage for synchronous optimizers) while Keras callbacks see the cluster's epochs
(`epochs.Epochs`), and collect the trained model, its History and the server's statistics."""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distkeras_plus._core import ELASTIC_CODECS, Centre, Codec, ParameterServer
from distkeras_plus.data.storage import is_uri, model_bytes, save_model_file
from distkeras_plus.data.tables import Prepared, check_model, default_loss, prepare, read
from distkeras_plus.errors import SettingError, TrainingError, exception_line
from distkeras_plus.plugins import registry
from distkeras_plus.plugins.spec import OptimizerSpec, RuleChoice
from distkeras_plus.ps.checkpoint import Checkpoint, Checkpointer, Folder, Policy, check_resumable
from distkeras_plus.ps.serve import new_secret
from distkeras_plus.ps.weights import FlatWeights
from distkeras_plus.settings import RunConfig
from distkeras_plus.spark import session
from distkeras_plus.spark.board import ServerBoard
from distkeras_plus.spark.epochs import Epochs, log_names
from distkeras_plus.spark.executor import (
    PROGRESS,
    RESULT_SCHEMA,
    SERVER_ROW,
    ServerTask,
    WorkerConfig,
    run_in_cluster,
    run_worker,
)
from distkeras_plus.spark.validation import validation_for
from distkeras_plus.worker import compiling

#: The URIs Keras writes itself (through TensorFlow's file layer).
KERAS_URIS = ("file://", "gs://")


@dataclass
class TrainResult:
    """The trained model (compiled as the workers were), its per-epoch History, each worker's
    history and the parameter server's statistics."""

    model: Any
    #: A `keras.callbacks.History`: `.history` maps each log name to one value per epoch.
    history: Any
    #: Each worker's rows: one per commit (per epoch, for optimizers that commit once), by time.
    worker_history: list[dict[str, Any]] = field(default_factory=list)
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
    #: Where the parameter server ran: "driver" or "executor" (see the `ps_location` setting).
    ps_location: str = "driver"


@dataclass(frozen=True)
class Decisions:
    """What a run's settings decide, with neither Spark nor the data."""

    config: RunConfig
    spec: OptimizerSpec
    options: dict[str, Any]
    rule: RuleChoice | None
    workers: int
    codec: str
    default_optimizer: Any  # the plugin's, for a model that is not compiled


@dataclass(frozen=True)
class Plan(Decisions):
    """What a run will do, decided on the driver before anything starts."""

    compiled: dict[str, Any]  # the compile config every worker uses (Keras' own form)
    data: Prepared
    placement: str = "driver"  # where the parameter server runs: "driver" or "executor"


def decide(config: RunConfig, with_keras: bool = True) -> Decisions:
    """Every check of the settings alone (the plugin and its options, codecs, the loss, metrics and
    optimizer resolved with Keras): a mistake is one line before Spark starts. Without
    `with_keras`, the names are checked only against those Keras is known to have (at once)."""
    spec = registry.get(config.plugin).spec
    options = spec.parse_options(config.options)
    codec = Codec(config.codec or spec.codec)
    workers = 1 if spec.single_partition else config.workers
    default_optimizer = spec.worker_optimizer_for(options)
    compiling.check(config.loss, config.metrics, config.worker_optimizer or default_optimizer, with_keras)
    rule = spec.rule_for(options, workers)
    if rule is not None and rule.name == "elastic" and not codec.elastic_capable:
        raise SettingError(
            f"{spec.name} commits weights, which {codec.name} cannot compress; "
            f"use {', '.join(ELASTIC_CODECS)}"
        )
    if config.checkpoint_dir is not None and rule is None:
        raise SettingError(f"{spec.name} trains without a parameter server: there is nothing to checkpoint")
    return Decisions(config, spec, options, rule, workers, codec.name, default_optimizer)


def plan(
    df: Any, model: Any, config: RunConfig, prepared: Prepared | None = None, watched: bool = False
) -> Plan:
    """`decide`, then the checks against the cluster and the data: one Spark aggregation checks
    the data (`prepared`, when given, is its result already) and the model's shapes against it.
    `watched`: the run has callbacks or validation data, which need a parameter server."""
    decided = decide(config)
    if watched and decided.rule is None:
        raise SettingError(
            f"{decided.spec.name} trains without a parameter server, so the driver sees no epochs: "
            "callbacks and validation need an optimizer that has one"
        )
    if decided.spec.synchronous:
        slots = session.task_slots(df.sparkSession)
        if slots is not None and decided.workers > slots:
            raise TrainingError(
                f"{decided.spec.name} runs all {decided.workers} workers at once, "
                f"but the cluster has {slots} task slots"
            )
    placement = _placement(decided, df.sparkSession, watched)
    data = prepared or prepare(df, config.features, config.label)
    check_model(model, data, config.label)
    defaults = (decided.default_optimizer, default_loss(data.columns.one_hot))
    compiled = compiling.resolve(
        model, config.loss, config.metrics, config.worker_optimizer, config.learning_rate, defaults
    )
    return Plan(**vars(decided), compiled=compiled, data=data, placement=placement)


def _placement(decided: Decisions, spark: Any, watched: bool) -> str:
    """Where the parameter server runs, and the checks of that choice. In the cluster it serves
    any optimizer that has one, and writes the checkpoints, but the driver sees no epochs there
    (callbacks and validation need it in this process); `auto` picks it under Connect when the
    executors are on other machines and the run has neither."""
    config, name = decided.config, decided.spec.name
    if config.ps_location == "auto":
        elsewhere = session.is_connect(spark) and not session.is_local(spark)
        return "executor" if elsewhere and decided.rule is not None and not watched else "driver"
    if config.ps_location == "driver":
        return "driver"
    if decided.rule is None:
        raise SettingError(f"{name} trains without a parameter server: there is none to place")
    if watched:
        raise SettingError(
            "callbacks and validation need the parameter server in this process: use --ps-location driver"
        )
    folder = config.checkpoint_dir
    if folder is not None and not is_uri(folder) and not session.is_local(spark):
        raise SettingError(
            f"the parameter server in the cluster writes the checkpoints, which {folder} on this "
            "machine would not hold: give a folder every node reaches (hdfs://, s3a://, ...)"
        )
    slots = session.task_slots(spark)
    if slots is not None and decided.workers + 1 > slots:
        raise TrainingError(
            f"the parameter server in the cluster takes a task slot beside the {decided.workers} "
            f"workers, but the cluster has {slots}: train with fewer workers"
        )
    return "executor"


def train(
    df: Any,
    model: Any,
    config: RunConfig,
    *,
    progress: Callable[[dict[str, Any]], None] | None = None,
    resume: Checkpoint | None = None,
    record: Mapping[str, Any] | None = None,
    prepared: Prepared | None = None,
    callbacks: Sequence[Any] = (),
    validation: Any = None,
    verbose: int = 0,
) -> TrainResult:
    """Trains `model` on `df` as `config` says; see `distkeras_plus.train`.

    `progress`, when given, is called about once a second from another thread with what the
    parameter server knows of the run so far (see `progress_of`). `record` is what checkpoints
    keep of the run's configuration (default: `config`). `prepared`: `df` already prepared.
    `callbacks` are Keras callbacks; `validation` a DataFrame or path they are judged on;
    `verbose` Keras' progress: 1 a bar per epoch, 2 a line per epoch, 0 none (on stdout)."""
    if isinstance(df, str | Path):
        slots = config.workers + (config.ps_location == "executor")  # the server in the cluster takes one
        df = read(session.local_session(slots), df, config.features, config.label)
    if validation is None and config.validation_split > 0:
        df, validation = df.randomSplit([1 - config.validation_split, config.validation_split], config.seed)
        prepared = None  # it was of the whole
    callbacks = [*callbacks, *_named_callbacks(config, callbacks, validation is not None)]
    p = plan(df, model, config, prepared, watched=bool(callbacks) or validation is not None)
    spark = df.sparkSession
    held_out = None
    if validation is not None:
        held_out = validation_for(spark, validation, model, config, p.compiled, p.workers)
    compiling.compile_model(model, p.compiled)
    # Keras computes the loss and metrics once, on the driver: a loss that does not suit the labels
    # is one line before anything starts, and the names of what workers report are Keras' own.
    names = log_names(model, p.data.columns.one_hot, p.data.classes) if p.rule is not None else []
    flat = FlatWeights.from_arrays(model.get_weights())
    start_clock, epochs_before = 0, 0
    if resume is not None:
        check_resumable(resume, flat.layout.hash, flat.layout.num_params)
        np.copyto(flat.flat, resume.values)
        model.set_weights(flat.views)
        start_clock, epochs_before = resume.clock, min(resume.epochs_done, config.epochs)
    if epochs_before == config.epochs:
        history = _history(model)
        return TrainResult(model, history, num_workers=p.workers, optimizer=p.spec.name, options=p.options)
    in_cluster = p.placement == "executor"
    checkpointer, checkpoints = None, None
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
            "run": uuid.uuid4().hex,  # a retried stage's server resumes from this run's own
        }
        checkpoints = (Policy(config.checkpoint_every, config.checkpoint_seconds), meta)
        if not in_cluster:  # in the cluster, the server's task writes them
            checkpointer = Checkpointer(folder, checkpoints[0], meta, p.data.rows, epochs_before)
    server = None
    secret = new_secret()
    started = time.perf_counter()
    compiled, epochs, board = p.compiled, None, None
    try:
        address = None
        if p.rule is not None and not in_cluster:
            host = session.ps_host(spark, config.ps_host or os.environ.get("DK_PS_HOST"))
            bind = "127.0.0.1" if host.startswith("127.") else "0.0.0.0"  # noqa: S104 - authenticated
            centre = Centre(
                flat.flat, p.rule.name, dict(p.rule.params), round_timeout=config.timeout, clock=start_clock
            )
            server = ParameterServer(centre, flat.layout, secret, host=bind, idle_timeout=config.timeout)
            address = f"{host}:{server.port}"
            epochs = _epochs(p, model, server, flat, callbacks, names, held_out, epochs_before, verbose)
            board = ServerBoard(config.tensorboard) if config.tensorboard is not None else None
            rate = epochs.begin()
            if rate is not None:  # a schedule's first epoch: the workers start with its rate
                compiled = compiling.with_learning_rate(compiled, rate)
                server.set_control(stop=False, learning_rate=rate)
        cores = os.cpu_count() or 1
        cfg = WorkerConfig(
            optimizer=p.spec.name,
            options=p.options,
            model=model_bytes(model),
            compiled=compiled,
            log_names=names,
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
        ps_stats: dict[str, Any] = {}
        if in_cluster:
            served = _server_task(p, flat, start_clock, epochs_before, checkpoints)
            rows, ps_stats = _run_in_cluster(p, cfg, served, flat, started, progress)
            model.set_weights(flat.views)  # the centre the server task returned
        else:
            rows = _run_stage(p, cfg, server, started, progress, checkpointer, epochs, board)
        seconds = time.perf_counter() - started
        if server is not None:
            server.stop()
            ps_stats = server.stats()
            if checkpointer is not None:
                checkpointer.write(server, config.epochs)
        if epochs is not None:
            epochs.finish()  # the model holds the centre (or, stopped early, the epoch it stopped at)
        if progress is not None:
            progress(progress_of(ps_stats, seconds))  # the last word, however short the run
        if p.spec.combine is not None:
            model = p.spec.combine(model, [r["result"] for r in sorted(rows, key=lambda r: r["worker"])])
            compiling.compile_model(model, p.compiled)
    finally:
        if server is not None:
            server.stop()
    worker_history = sorted((row for r in rows for row in json.loads(r["history"])), key=lambda h: h["time"])
    if board is not None:
        board.close(ps_stats, [row["staleness"] for row in worker_history if "staleness" in row])
    return TrainResult(
        model=model,
        history=_history(model) if epochs is None else epochs.history,
        worker_history=worker_history,
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
        ps_location=p.placement,
    )


def _epochs(
    p: Plan,
    model: Any,
    server: ParameterServer,
    flat: FlatWeights,
    callbacks: Sequence[Any],
    names: list[str],
    validation: Any,
    first: int,
    verbose: int,
) -> Epochs:
    import keras

    config = p.config
    steps = math.ceil(p.data.rows / config.batch_size)
    chosen = keras.callbacks.CallbackList(
        list(callbacks),
        add_history=True,
        add_progbar=verbose != 0,
        model=model,
        epochs=config.epochs,
        steps=steps,
        verbose=verbose,
    )
    server.track_epochs(p.workers)
    return Epochs(
        model,
        server,
        flat.layout,
        chosen,
        names,
        validation,
        first=first,
        epochs=config.epochs - first,
        batch_size=config.batch_size,
        steps=steps,
    )


def _named_callbacks(config: RunConfig, given: Sequence[Any], validated: bool) -> list[Any]:
    """The callbacks the settings ask for (a TensorBoard callback among those `given` is kept),
    after a check of those `given` that would fail only once an epoch ends."""
    if not given and config.early_stopping is None and config.tensorboard is None:
        return []
    import keras

    for c in given:
        path = str(getattr(c, "filepath", ""))
        if type(c) is keras.callbacks.ModelCheckpoint and is_uri(path) and not path.startswith(KERAS_URIS):
            raise SettingError(
                f"Keras' ModelCheckpoint cannot write {path}; distkeras_plus.callbacks.ModelCheckpoint "
                "takes the same arguments and writes any URI Spark reaches"
            )

    named = []
    if config.early_stopping is not None:
        monitor = config.monitor or ("val_loss" if validated else "loss")
        stop = keras.callbacks.EarlyStopping(
            monitor, patience=config.early_stopping, restore_best_weights=True
        )
        named.append(stop)
    if config.tensorboard is not None and not any(isinstance(c, keras.callbacks.TensorBoard) for c in given):
        named.append(keras.callbacks.TensorBoard(config.tensorboard))
    return named


def _history(model: Any) -> Any:
    """An empty History, for a run whose epochs the driver did not see."""
    import keras

    history = keras.callbacks.History()
    history.set_model(model)
    history.on_train_begin()  # its (empty) `epoch` too
    return history


class _Reported:
    """An accumulator of the errors workers report: their one-line messages, in order."""

    def zero(self, value: list[str]) -> list[str]:
        return []

    def addInPlace(self, first: list[str], second: list[str]) -> list[str]:
        return [*first, *second]


def _reports(spark: Any) -> tuple[Callable[[str], None] | None, Callable[[], str | None]]:
    """How a worker's task reports its own error as it ends (an accumulator; under Connect there
    are none, and errors reach the driver through the parameter server), and the first reported."""
    if session.is_connect(spark):
        return None, lambda: None
    reported = spark.sparkContext.accumulator([], _Reported())
    return lambda line: reported.add([line]), lambda: str(reported.value[0]) if reported.value else None


def _run_stage(
    p: Plan,
    cfg: WorkerConfig,
    server: ParameterServer | None,
    started: float,
    progress: Callable[[dict[str, Any]], None] | None,
    checkpointer: Checkpointer | None,
    epochs: Epochs | None = None,
    board: ServerBoard | None = None,
) -> list[Any]:
    """One task per worker, watched; a failure is the failing worker's own error, in one line.
    A worker's error that a retry would meet again reaches the driver with its task's end (an
    accumulator), and the driver cancels the stage then, rather than when every worker is done.
    A callback's own error stops the run too, and is raised as it is."""
    spark = p.data.df.sparkSession
    group = f"distkeras-plus-{uuid.uuid4().hex}"
    report, reported = _reports(spark)

    def task(batches: Iterator[Any]) -> Iterator[Any]:
        return run_worker(cfg, batches, report)

    def failed(line: str) -> TrainingError:
        error = TrainingError(f"training with {p.spec.name} failed: {line}")
        error.ps_address = cfg.ps_address
        return error

    def first_reported() -> str | None:
        return reported() or (server.failure() if server is not None else None)

    watch = _Watch(
        server,
        started,
        progress,
        checkpointer,
        epochs,
        board,
        lambda: first_reported() is not None,
        spark,
        group,
    )
    try:
        _tag(spark, group)
        data = p.data.df.repartition(p.workers)
        results = data.mapInArrow(task, RESULT_SCHEMA, barrier=p.spec.synchronous)
        if p.spec.synchronous:
            # Spark retries a failed barrier stage only when it is not the last stage of its
            # job (a ResultStage); a shuffle after it makes it one that can be retried.
            results = results.repartition(1)
        rows = list(results.collect())
    except Exception as e:
        watch.stop()
        if watch.error is not None:
            raise watch.error from None
        raise failed(first_reported() or exception_line(str(e))) from e
    finally:
        watch.stop()
        _tag(spark, None)
    if watch.error is not None:
        raise watch.error
    errors = [r["error"] for r in rows if r["error"]]
    if errors:
        raise failed(errors[0])
    return rows


_KEY = "__dk_task"


def _server_task(
    p: Plan,
    flat: FlatWeights,
    clock: int,
    epochs_before: int,
    checkpoints: tuple[Policy, dict[str, Any]] | None,
) -> ServerTask:
    """What the server's task of the training stage gets: the centre, its rule, and where it
    writes the run's progress and checkpoints: the checkpoint folder, or else, on this machine's
    executors, a folder of its own (on a cluster without a checkpoint folder, the progress comes
    with the stage's end only)."""
    assert p.rule is not None  # _placement: an optimizer with a parameter server
    spark = p.data.df.sparkSession
    local = session.is_local(spark)
    folder = p.config.checkpoint_dir
    if folder is None and local:
        import tempfile

        folder = tempfile.mkdtemp(prefix="dk-run-")
    policy, meta = checkpoints if checkpoints is not None else (None, {})
    return ServerTask(
        flat.flat.tobytes(),
        flat.layout.shapes,
        p.rule.name,
        dict(p.rule.params),
        clock,
        p.config.timeout,
        local,
        folder=folder,
        policy=policy,
        meta=meta,
        rows=p.data.rows,
        epochs_before=epochs_before,
    )


def _run_in_cluster(
    p: Plan,
    cfg: WorkerConfig,
    served: ServerTask,
    flat: FlatWeights,
    started: float,
    progress: Callable[[dict[str, Any]], None] | None,
) -> tuple[list[Any], dict[str, Any]]:
    """The training stage with the parameter server in one of its tasks: a barrier stage of the
    workers' partitions and one more, the server's (see `executor.run_in_cluster`). Returns the
    workers' rows and the server's statistics; `flat` holds the final centre. Progress is the
    server task's `progress.json`, read about once a second."""
    from pyspark.sql import functions as F

    spark = p.data.df.sparkSession
    report, reported = _reports(spark)

    def task(batches: Iterator[Any]) -> Iterator[Any]:
        return run_in_cluster(cfg, served, batches, report)

    # A barrier stage takes no union: one shuffle places every row. Each worker's rows and the
    # server's one row carry a key that Spark's hash partitioning sends to that task's partition.
    n = p.workers + 1
    found = spark.range(0, 64 * n).select("id", F.pmod(F.hash("id"), F.lit(n)).alias("to")).collect()
    keys = {int(r["to"]): int(r["id"]) for r in reversed(found)}  # the first id for each partition
    columns = p.data.df.columns
    worker = (F.floor(F.rand(p.config.seed) * p.workers) + 1).cast("int")
    # Longs, as the ids were: a key hashed as an int would land elsewhere.
    key = [F.lit(keys[i]).cast("long") for i in range(n)]
    rows_of = p.data.df.withColumn(_KEY, F.element_at(F.array(*key[: p.workers]), worker))
    server_row = spark.range(0, 1, 1, 1).select(
        *[F.lit(None).cast(f.dataType).alias(f.name) for f in p.data.df.schema.fields],
        key[p.workers].alias(_KEY),
    )
    placed = rows_of.unionByName(server_row).repartition(n, _KEY).select(*columns)
    group = f"distkeras-plus-{uuid.uuid4().hex}"
    folder = Folder(served.folder, spark) if served.folder is not None else None

    latest: dict[str, Any] = {}

    def stats() -> dict[str, Any] | None:
        try:
            if folder is not None:
                latest.update(json.loads(folder.read(PROGRESS)))
        except (OSError, ValueError):  # not written yet
            pass
        return latest or None

    def first_reported() -> str | None:
        return reported() or latest.get("failure")

    watch = _Watch(
        None, started, progress, None, None, None, lambda: first_reported() is not None, spark, group, stats
    )
    _tag(spark, group)
    try:
        stage = placed.mapInArrow(task, RESULT_SCHEMA, barrier=True)
        rows = list(stage.repartition(1).collect())  # repartition: a retried barrier stage, as above
    except Exception as e:
        watch.stop()
        line = first_reported() or exception_line(str(e))
        raise TrainingError(f"training with {p.spec.name} failed: {line}") from e
    finally:
        watch.stop()
        _tag(spark, None)
        if p.config.checkpoint_dir is None and served.folder is not None:
            shutil.rmtree(served.folder, ignore_errors=True)  # the run's own, for its progress
    (served_row,) = [r for r in rows if r["worker"] == SERVER_ROW]
    np.copyto(flat.flat, np.frombuffer(served_row["result"], np.float32))
    workers = [r for r in rows if r["worker"] != SERVER_ROW]
    errors = [r["error"] for r in workers if r["error"]]
    if errors:
        raise TrainingError(f"training with {p.spec.name} failed: {errors[0]}")
    return workers, dict(json.loads(served_row["history"]))


def _tag(spark: Any, group: str | None) -> None:
    """Marks the jobs this thread starts as the run's (`group`), or no longer (None): what the
    watcher cancels. A job group on a classic session (its tasks interrupted), a tag under Connect."""
    if session.is_connect(spark):
        if group is None:
            spark.clearTags()
        else:
            spark.addTag(group)
    elif group is None:
        spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)
    else:
        spark.sparkContext.setJobGroup(group, "distkeras-plus training", interruptOnCancel=True)


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


class _Watch:
    """Until `stop`, on a thread of its own: reports progress (from `stats`, by default `server`'s
    statistics) and writes checkpoints about once a second, ends the epochs the workers have left
    behind (their callbacks run here), and cancels the job group once a worker has `failed` or a
    callback raised (kept in `error`)."""

    def __init__(
        self,
        server: ParameterServer | None,
        started: float,
        progress: Callable[[dict[str, Any]], None] | None,
        checkpointer: Checkpointer | None,
        epochs: Epochs | None,
        board: ServerBoard | None,
        failed: Callable[[], bool],
        spark: Any,
        group: str,
        stats: Callable[[], dict[str, Any] | None] | None = None,
    ) -> None:
        self.server, self.started, self.progress = server, started, progress
        self.stats = stats or (lambda: server.stats() if server is not None else None)
        self.checkpointer, self.epochs, self.board = checkpointer, epochs, board
        self.failed, self.spark, self.group = failed, spark, group
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="dk-progress", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.done.set()
        self.thread.join()

    def _cancel(self) -> None:
        if session.is_connect(self.spark):
            self.spark.interruptTag(self.group)
            return
        from pyspark import SparkContext

        if (sc := SparkContext._active_spark_context) is not None:
            sc.cancelJobGroup(self.group)

    def _loop(self) -> None:
        server, shown = self.server, 0.0
        # Epochs are looked at four times a second: the callbacks' decisions reach the workers
        # sooner. Progress and checkpoints stay at about once a second.
        while not self.done.wait(0.25 if self.epochs is not None else 1.0):
            if self.failed():
                self._cancel()
                return
            if self.epochs is not None:
                try:
                    self.epochs.poll()
                except Exception as e:  # the user's callback: raised on the driver's thread
                    self.error = e
                    self._cancel()
                    return
            if time.perf_counter() - shown < 0.95:
                continue
            shown = time.perf_counter()
            stats = self.stats()
            if self.progress is not None:
                self.progress(progress_of(stats, time.perf_counter() - self.started))
            if self.board is not None and stats is not None:
                try:
                    self.board.write(stats)
                except Exception as e:  # a full disk must not stop training either
                    warnings.warn(f"could not write TensorBoard logs: {e}", stacklevel=1)
            if self.checkpointer is not None and server is not None and stats is not None:
                try:
                    self.checkpointer.tick(server, stats)
                except Exception as e:  # a full disk must not stop training; the next tick retries
                    warnings.warn(f"could not write a checkpoint: {e}", stacklevel=1)
