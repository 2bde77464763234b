"""What runs on a Spark executor: one worker task. It sets up the process once, builds its worker
context from plain data (`build_context`, which the test harness uses too), runs the optimizer's
loop and returns one row: what it trained, its history and its result."""

from __future__ import annotations

import json
import os
import resource
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from distkeras_plus._core import Client
from distkeras_plus.data.storage import model_from_bytes
from distkeras_plus.data.tables import Columns
from distkeras_plus.errors import (
    AuthenticationError,
    CommitRejectedError,
    ProtocolError,
    ServerClosedError,
    exception_line,
)
from distkeras_plus.plugins import registry
from distkeras_plus.ps.weights import FlatWeights
from distkeras_plus.worker import Batches, WorkerContext, compiling, partition
from distkeras_plus.worker.context import Stopped

RESULT_SCHEMA = (
    "worker int, attempt int, samples long, steps long, history string, result binary, error string, "
    "peak_rss long, spilled long"
)

# What a worker's task lets Spark try again: the machine or the network failed it, or the
# parameter server refused this attempt. Any other error is the worker's own code, or Keras
# refusing the data: it would fail again, so it ends the run at once instead.
RETRIED = (OSError, MemoryError, ServerClosedError, CommitRejectedError, ProtocolError, AuthenticationError)


@dataclass(frozen=True)
class WorkerConfig:
    """What every worker task gets (plain data: it travels inside the Spark task)."""

    optimizer: str
    options: Mapping[str, Any]
    model: bytes  # the .keras archive
    compiled: dict[str, Any]  # Keras' compile config (`compiling.resolve`)
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
    in_memory_mb: int | None = None
    #: The loss and metrics each commit reports, in this order (the driver's names for them).
    log_names: list[str] = field(default_factory=list)


def set_process_env(threads: int) -> None:
    """Once per Python worker, before TensorFlow is imported: quiet, and no more threads than the
    executor's share of cores."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(threads))
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")


def build_context(
    cfg: WorkerConfig,
    data: Batches,
    worker_id: int,
    *,
    attempt: int = 0,
    all_gather: Callable[[str], list[str]] | None = None,
    connect: Callable[..., Any] = Client,
    context: type[WorkerContext] = WorkerContext,
) -> WorkerContext:
    """A worker's context: its model (compiled as the run says), its partition, and its
    connection to the parameter server (made by `connect`, with `Client`'s arguments)."""
    import keras

    model = model_from_bytes(cfg.model)
    data.input_shape = tuple(model.input_shape[1:])
    keras.utils.set_random_seed(cfg.seed + worker_id)
    compiling.compile_model(model, cfg.compiled)
    client = None
    if cfg.ps_address is not None:
        client = connect(
            cfg.ps_address,
            cfg.secret,
            FlatWeights.from_arrays(model.get_weights()).layout,
            worker_id,
            attempt,
            codec=cfg.codec,
            pull_codec=cfg.pull_codec,
            timeout=cfg.timeout + 60,  # the server gives up first, and says why
        )
    return context(
        worker_id=worker_id,
        num_workers=cfg.num_workers,
        options=dict(cfg.options),
        model=model,
        data=data,
        epochs=cfg.epochs,
        client=client,
        all_gather=all_gather,
        start_clock=cfg.start_clock,
        log_names=list(cfg.log_names),
        resume_samples=client.resume_samples if client is not None else 0,
    )


def _reset_peak_rss() -> None:
    """Spark reuses Python workers: the peak this task reports starts with the task."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets the peak resident size
    except OSError:
        pass


def _peak_rss() -> int:
    """The process's peak resident size (since `_reset_peak_rss`, where the system allows), bytes."""
    try:
        status = Path("/proc/self/status").read_text()
        return int(next(x for x in status.splitlines() if x.startswith("VmHWM:")).split()[1]) << 10
    except (OSError, StopIteration, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10  # KiB on Linux


def run_worker(
    cfg: WorkerConfig,
    batches: Iterator[Any],
    report: Callable[[str], None] | None = None,
    gather: bool = True,
) -> Iterator[Any]:
    """The `mapInArrow` function: one worker on its partition. An error that a retry would meet
    again is not raised (Spark would retry it) but returned in the result's `error`, and given to
    `report` at once, so that the driver can stop the other workers. `gather`: the workers of a
    barrier stage may exchange messages (synchronous optimizers agree on their rounds)."""
    set_process_env(cfg.threads)
    _reset_peak_rss()
    from pyspark import BarrierTaskContext, TaskContext

    task = TaskContext.get()
    worker_id = task.partitionId() if task else 0
    attempt = task.attemptNumber() if task else 0
    # The parameter server needs a later attempt of a worker to carry a larger number. A retried
    # barrier stage numbers its attempts from 0 again; the task's id in the application grows.
    ps_attempt = min(task.taskAttemptId(), 2**32 - 1) if task else 0
    all_gather = None
    if gather and isinstance(task, BarrierTaskContext):
        barrier = task

        def all_gather(message: str) -> list[str]:
            return [str(m) for m in barrier.allGather(message)]

    ctx, data, error = None, None, None
    try:
        import keras  # noqa: F401  (before the partition: its share is what the backend leaves)

        limit = partition.memory_limit(cfg.in_memory_mb)
        columns = cfg.columns
        seed = cfg.seed + worker_id
        data = partition.load(batches, columns.num_features, columns.one_hot, cfg.batch_size, seed, limit)
        ctx = build_context(cfg, data, worker_id, attempt=ps_attempt, all_gather=all_gather)
        registry.get(cfg.optimizer).spec.worker(ctx)
    except Stopped:
        pass  # the driver's callbacks ended the run; what was trained is committed
    except RETRIED:
        raise
    except Exception as e:
        error = f"worker {worker_id}: {exception_line(f'{type(e).__name__}: {e}')}"
        if report is not None:
            report(error)
    finally:
        if ctx is not None and ctx.client is not None:
            ctx.client.close()
        spilled = 0
        if data is not None:
            spilled = data.spilled_bytes
            data.close()
    yield _result_row(
        worker=worker_id,
        attempt=attempt,
        samples=ctx.samples if ctx else 0,
        steps=ctx.steps if ctx else 0,
        history=json.dumps(ctx.history if ctx else []),
        result=ctx.result if ctx else None,
        error=error,
        spilled=spilled,
    )


def _result_row(**values: Any) -> Any:
    """One row of RESULT_SCHEMA."""
    import pyarrow as pa

    values["peak_rss"] = _peak_rss()
    return pa.RecordBatch.from_pydict(
        {k: [v] for k, v in values.items()},
        schema=pa.schema(
            [
                ("worker", pa.int32()),
                ("attempt", pa.int32()),
                ("samples", pa.int64()),
                ("steps", pa.int64()),
                ("history", pa.string()),
                ("result", pa.binary()),
                ("error", pa.string()),
                ("peak_rss", pa.int64()),
                ("spilled", pa.int64()),
            ]
        ),
    )


#: The `worker` of the server task's row (executor placement).
SERVER_ROW = -1


@dataclass(frozen=True)
class ServerTask:
    """What the task that serves the centre gets when the parameter server runs in the cluster."""

    centre: bytes  # the initial centre, float32
    shapes: list[list[int]]
    rule: str
    params: dict[str, float]
    clock: int
    timeout: float
    local: bool  # the executors run on the driver's machine: the loopback address reaches them


def run_in_cluster(cfg: WorkerConfig, server: ServerTask, batches: Iterator[Any]) -> Iterator[Any]:
    """The `mapInArrow` function of a barrier stage of `cfg.num_workers` workers and one more task,
    the last, that serves the centre. The server task tells the others its address through the
    barrier's allGather, waits at the barrier until they have all ended, and returns the centre
    and the server's statistics; the workers train as anywhere else."""
    from pyspark import BarrierTaskContext

    task = BarrierTaskContext.get()
    if task.partitionId() == cfg.num_workers:
        yield from _serve(cfg, server, task)
        return
    (address,) = [a for a in task.allGather("") if a]
    rows = list(run_worker(replace(cfg, ps_address=address), batches, gather=False))
    task.barrier()
    yield from rows


def _serve(cfg: WorkerConfig, st: ServerTask, task: Any) -> Iterator[Any]:
    import socket

    import numpy as np

    from distkeras_plus._core import Centre, Layout, ParameterServer

    centre = Centre(
        np.frombuffer(st.centre, np.float32).copy(),
        st.rule,
        st.params,
        round_timeout=st.timeout,
        clock=st.clock,
    )
    host = "127.0.0.1" if st.local else socket.gethostbyname(socket.gethostname())
    bind = "127.0.0.1" if st.local else "0.0.0.0"  # noqa: S104 - authenticated
    server = ParameterServer(centre, Layout(st.shapes), cfg.secret, host=bind, idle_timeout=st.timeout)
    try:
        task.allGather(f"{host}:{server.port}")
        task.barrier()  # every worker has ended
    finally:
        server.stop()
    yield _result_row(
        worker=SERVER_ROW,
        attempt=task.attemptNumber(),
        samples=0,
        steps=0,
        history=json.dumps(server.stats()),
        result=centre.to_numpy().tobytes(),
        error=None,
        spilled=0,
    )
