"""One training run on Spark: the parameter server in the driver, one Spark task per worker.

The driver prepares the data, starts the parameter server with the model's weights as the centre,
and runs the optimizer's worker loop in `mapInArrow` (a barrier stage for synchronous optimizers).
Each task receives its partition as Arrow batches and returns its history; the model travels as
a `.keras` archive, the weights through the parameter server.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distkeras_plus import registry
from distkeras_plus._core import Centre, Client, Codec, ParameterServer
from distkeras_plus.checkpoint import Checkpoint, Checkpointer, Folder, Policy, check_resumable
from distkeras_plus.data import Columns, DataError, prepare, read, to_numpy
from distkeras_plus.ps import new_secret
from distkeras_plus.storage import save_model_file
from distkeras_plus.weights import FlatWeights

#: How often local Spark tries a task before the run fails (a cluster's default is 4 too).
LOCAL_TASK_TRIES = 4

RESULT_SCHEMA = "worker int, attempt int, samples long, steps long, history string, result binary"


class TrainingError(RuntimeError):
    """A training run failed; the message is the failing worker's own error."""

    #: Where the run's parameter server listened (it is stopped when this is raised).
    ps_address: str | None = None


@dataclass(frozen=True)
class WorkerConfig:
    """What every worker task gets (plain data: it travels inside the Spark task)."""

    optimizer: str
    options: Mapping[str, Any]
    model: bytes  # the .keras archive
    loss: Any
    metrics: list[Any]
    worker_optimizer: Any
    batch_size: int
    epochs: int
    seed: int
    num_workers: int
    columns: Columns
    ps_address: str | None
    secret: bytes
    threads: int
    codec: str = "none"
    pull_codec: str = "none"
    timeout: float = 600.0
    start_clock: int = 0  # the centre's clock when this run started (a resumed run's is not 0)


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


def model_bytes(model: Any) -> bytes:
    """The model in Keras' own `.keras` format (never pickle)."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.keras"
        model.save(path)
        return path.read_bytes()


def load_model(data: bytes) -> Any:
    import keras

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.keras"
        path.write_bytes(data)
        return keras.saving.load_model(path, compile=False, safe_mode=True)


def _worker_task(cfg: WorkerConfig, batches: Iterator[Any]) -> Iterator[Any]:
    """Runs on an executor: one worker, its partition, its loop."""
    import pyarrow as pa
    from pyspark import BarrierTaskContext, TaskContext

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(cfg.threads))
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
    task = TaskContext.get()
    worker_id = task.partitionId() if task else 0
    attempt = task.attemptNumber() if task else 0
    # The parameter server needs a later attempt of a worker to carry a larger number. A retried
    # barrier stage numbers its attempts from 0 again; the task's id in the application grows.
    ps_attempt = min(task.taskAttemptId(), 2**32 - 1) if task else 0
    all_gather = None
    if isinstance(task, BarrierTaskContext):
        barrier = task

        def all_gather(message: str) -> list[str]:
            return [str(m) for m in barrier.allGather(message)]

    import keras

    from distkeras_plus.worker import Batches, WorkerContext

    x, y = to_numpy(batches, cfg.columns.num_features, cfg.columns.one_hot)
    model = load_model(cfg.model)
    x = x.reshape((len(x), *model.input_shape[1:]))
    keras.utils.set_random_seed(cfg.seed + worker_id)
    model.compile(optimizer=keras.optimizers.get(cfg.worker_optimizer), loss=cfg.loss, metrics=cfg.metrics)
    spec = registry.get(cfg.optimizer).spec
    client = None
    if cfg.ps_address is not None:
        layout_weights = FlatWeights.from_arrays(model.get_weights())
        client = Client(
            cfg.ps_address,
            cfg.secret,
            layout_weights.layout,
            worker_id,
            ps_attempt,
            codec=cfg.codec,
            pull_codec=cfg.pull_codec,
            timeout=cfg.timeout + 60,  # the server gives up first, and says why
        )
    ctx = WorkerContext(
        worker_id=worker_id,
        num_workers=cfg.num_workers,
        options=dict(cfg.options),
        model=model,
        data=Batches(x, y, cfg.batch_size, cfg.seed + worker_id),
        epochs=cfg.epochs,
        client=client,
        all_gather=all_gather,
        start_clock=cfg.start_clock,
        resume_samples=client.resume_samples if client is not None else 0,
    )
    try:
        spec.worker(ctx)
    finally:
        if client is not None:
            client.close()
    yield pa.RecordBatch.from_pydict(
        {
            "worker": [worker_id],
            "attempt": [attempt],
            "samples": [ctx.samples],
            "steps": [ctx.steps],
            "history": [json.dumps(ctx.history)],
            "result": [ctx.result],
        },
        schema=pa.schema(
            [
                ("worker", pa.int32()),
                ("attempt", pa.int32()),
                ("samples", pa.int64()),
                ("steps", pa.int64()),
                ("history", pa.string()),
                ("result", pa.binary()),
            ]
        ),
    )


def _ps_host(spark: Any, requested: str | None) -> str:
    """The address workers use to reach the driver's parameter server."""
    if requested:
        return requested
    master = spark.sparkContext.master
    if master.startswith("local"):
        return "127.0.0.1"
    host = spark.conf.get("spark.driver.host", None) or socket.gethostname()
    ip = socket.gethostbyname(host)
    if ip.startswith("127.") or ip == "::1":
        raise TrainingError(
            f"the driver's address resolves to {ip}, which executors on other hosts cannot reach; "
            "set ps_host (or DK_PS_HOST) to an address of this machine that they can"
        )
    return ip


_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)): ?(.*)$")


def _worker_error(err: Exception) -> str:
    """The Python error a worker raised, in one line, out of Spark's report of it."""
    lines = str(err).splitlines()
    for line in lines:
        match = _EXCEPTION_LINE.match(line)
        if match is None or line.startswith(("org.", "java.", "scala.", "py4j.")):
            continue
        name, message = match.group(1).rsplit(".", 1)[-1], match.group(2).strip()
        if not message or message.endswith(":"):
            # TensorFlow puts the useful part ("Received a label value of ...") last.
            detail = next((x.strip() for x in reversed(lines) if x.strip() and not x[0].isspace()), "")
            message = f"{message} {detail}".strip()
        return f"{name}: {message}"[:500]
    return next((x.strip() for x in lines if x.strip()), repr(err))


def train(
    df: Any,
    model: Any,
    optimizer: str,
    options: Mapping[str, Any] | None = None,
    *,
    features_col: str = "features",
    label_col: str = "label",
    num_workers: int = 2,
    epochs: int = 1,
    batch_size: int = 32,
    loss: Any = None,
    metrics: list[Any] | None = None,
    worker_optimizer: Any = None,
    seed: int = 0,
    ps_host: str | None = None,
    codec: str | None = None,
    pull_codec: str = "none",
    timeout: float = 600.0,
    progress: Callable[[dict[str, Any]], None] | None = None,
    checkpoint_dir: str | None = None,
    checkpoint_policy: Policy | None = None,
    resume: Checkpoint | None = None,
    config: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Trains `model` on `df` with the distributed optimizer `optimizer`; see `distkeras_plus.train`.

    `progress`, when given, is called about once a second from another thread with what the
    parameter server knows of the run so far (see `progress_of`)."""
    spec = registry.get(optimizer).spec
    opts = spec.parse_options(options or {})
    codec = Codec(codec or spec.codec).name  # an unknown codec is a clear error here, not on a worker
    pull_codec = Codec(pull_codec).name
    if num_workers < 1 or epochs < 1 or batch_size < 1:
        raise ValueError("num_workers, epochs and batch_size must be at least 1")
    if spec.single_partition:
        num_workers = 1
    if isinstance(df, str | Path):
        df = read(local_session(num_workers), df, features_col, label_col)
    spark = df.sparkSession
    prepared, columns = prepare(df, features_col, label_col)
    expected = int(np.prod(model.input_shape[1:]))
    if columns.num_features != expected:
        raise DataError(
            f"features have {columns.num_features} values per row but the model's input "
            f"{tuple(model.input_shape[1:])} takes {expected}"
        )
    if spec.synchronous:
        slots = spark.sparkContext.defaultParallelism
        if num_workers > slots:
            raise TrainingError(
                f"{optimizer} runs all {num_workers} workers at once, but the cluster has {slots} task slots"
            )
    if loss is None:
        loss = "categorical_crossentropy" if columns.one_hot else "sparse_categorical_crossentropy"
    choice = spec.rule_for(opts, num_workers)
    if choice is not None and choice.name == "elastic" and codec.split(":")[0] in ("int8", "topk"):
        raise ValueError(
            f"{optimizer} commits weights, which {codec} cannot compress; use none, fp16 or bf16"
        )
    if pull_codec not in ("none", "fp16", "bf16"):
        raise ValueError(f"pulls can use none, fp16 or bf16, not {pull_codec}")
    secret = new_secret()
    flat = FlatWeights.from_arrays(model.get_weights())
    start_clock, epochs_before = 0, 0
    if resume is not None:
        check_resumable(resume, flat.layout.hash, flat.layout.num_params)
        np.copyto(flat.flat, resume.values)
        model.set_weights(flat.views)
        start_clock, epochs_before = resume.clock, min(resume.epochs_done, epochs)
    if epochs_before == epochs:
        return TrainResult(
            model=model, history=[], num_workers=num_workers, optimizer=optimizer, options=opts
        )
    checkpointer = None
    if checkpoint_dir is not None:
        if choice is None:
            raise ValueError(f"{optimizer} trains without a parameter server: there is nothing to checkpoint")
        folder = Folder(checkpoint_dir, spark)
        save_model_file(model, folder.path("model.keras"), spark)  # the architecture, for --resume
        meta = {
            "config": dict(config or {}),
            "optimizer": optimizer,
            "options": opts,
            "epochs": epochs,
            "layout": flat.layout.hash.hex(),
            "shapes": flat.layout.shapes,
        }
        checkpointer = Checkpointer(
            folder, checkpoint_policy or Policy(), meta, prepared.count(), epochs_before
        )
    cores = os.cpu_count() or 1
    server = None
    host: str | None = None
    started = time.perf_counter()
    try:
        if choice is not None:
            host = _ps_host(spark, ps_host or os.environ.get("DK_PS_HOST"))
            bind = "127.0.0.1" if host.startswith("127.") else "0.0.0.0"  # noqa: S104 - authenticated
            centre = Centre(
                flat.flat, choice.name, dict(choice.params), round_timeout=timeout, clock=start_clock
            )
            server = ParameterServer(centre, flat.layout, secret, host=bind, idle_timeout=timeout)
        cfg = WorkerConfig(
            optimizer=optimizer,
            options=opts,
            model=model_bytes(model),
            loss=loss,
            metrics=list(metrics if metrics is not None else ["accuracy"]),
            worker_optimizer=worker_optimizer or spec.worker_optimizer_for(opts),
            batch_size=batch_size,
            epochs=epochs - epochs_before,
            start_clock=start_clock,
            seed=seed,
            num_workers=num_workers,
            columns=columns,
            ps_address=f"{host}:{server.port}" if server is not None else None,
            secret=secret,
            codec=codec,
            pull_codec=pull_codec,
            timeout=timeout,
            threads=max(1, cores // num_workers) if spark.sparkContext.master.startswith("local") else 1,
        )
        data = prepared.repartition(num_workers)

        def task(batches: Iterator[Any]) -> Iterator[Any]:
            return _worker_task(cfg, batches)

        watching = _watch(server, started, progress, checkpointer) if progress or checkpointer else None
        try:
            results = data.mapInArrow(task, RESULT_SCHEMA, barrier=spec.synchronous)
            if spec.synchronous:
                # Spark retries a failed barrier stage only when it is not the last stage of its
                # job (a ResultStage); a shuffle after it makes it one that can be retried.
                results = results.repartition(1)
            rows = results.collect()
        except Exception as e:
            error = TrainingError(f"training with {optimizer} failed: {_worker_error(e)}")
            error.ps_address = cfg.ps_address
            raise error from e
        finally:
            if watching is not None:
                watching.set()
        seconds = time.perf_counter() - started
        ps_stats: dict[str, Any] = {}
        if server is not None:
            server.stop()
            ps_stats = server.stats()
            if checkpointer is not None:
                checkpointer.write(server, epochs)
            model.set_weights(FlatWeights(flat.layout, server.centre.to_numpy()).views)
        if progress is not None:
            progress(progress_of(ps_stats, seconds))  # the last word, however short the run
        if spec.combine is not None:
            model = spec.combine(model, [r["result"] for r in sorted(rows, key=lambda r: r["worker"])])
    finally:
        if server is not None:
            server.stop()
    history = [row for r in rows for row in json.loads(r["history"])]
    history.sort(key=lambda h: h["time"])
    return TrainResult(
        model=model,
        history=history,
        ps_stats=ps_stats,
        seconds=seconds,
        samples=sum(r["samples"] for r in rows),
        num_workers=num_workers,
        optimizer=optimizer,
        options=opts,
        codec=codec,
        pull_codec=pull_codec,
        retried_workers=sorted(r["worker"] for r in rows if r["attempt"] > 0),
    )


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
) -> threading.Event:
    """Once a second until the returned event is set: reports progress, writes checkpoints."""
    done = threading.Event()

    def loop() -> None:
        while not done.wait(1.0):
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


def check_master(master: str) -> None:
    """Fails at once, in one line, when a standalone master does not answer (Spark itself retries
    for a minute and then stops with a page of stack traces)."""
    if not master.startswith("spark://"):
        return
    hosts = master.removeprefix("spark://").split(",")
    errors = []
    for host_port in hosts:
        host, _, port = host_port.rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=5):
                return
        except (OSError, ValueError) as e:
            errors.append(f"{host_port}: {e}")
    raise TrainingError(
        f"cannot reach the Spark master {master} ({'; '.join(errors)}); "
        "check the URL and that the master is running"
    )


def local_session(workers: int, master: str | None = None) -> Any:
    """A Spark session: `local[workers]` by default, or the given master URL."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    if master:
        check_master(master)
    else:
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # one machine: no address to guess
    quiet = Path(__file__).with_name("log4j2.properties")

    builder = (
        SparkSession.builder.appName("distkeras-plus")
        # local[N, F]: a failed task is tried up to F times, as on a cluster.
        .master(master or f"local[{workers},{LOCAL_TASK_TRIES}]")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.memory", os.environ.get("DK_DRIVER_MEMORY", "4g"))
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        # Python workers start in the driver's directory: from a source checkout, the checkout's
        # distkeras_plus (which has no compiled core) would shadow the installed one.
        .config("spark.executorEnv.PYTHONSAFEPATH", "1")
        .config("spark.driver.extraJavaOptions", f"-Dlog4j2.configurationFile={quiet.as_uri()}")
    )
    return builder.getOrCreate()
