"""What runs on a Spark executor: one worker task. It sets up the process once, builds its worker
context from plain data (`build_context`, which the test harness uses too), runs the optimizer's
loop and returns one row: what it trained, its history and its result."""

from __future__ import annotations

import json
import os
import resource
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from distkeras_plus._core import Client
from distkeras_plus.data.storage import model_from_bytes
from distkeras_plus.data.tables import Columns
from distkeras_plus.errors import (
    AuthenticationError,
    CheckpointError,
    CommitRejectedError,
    ProtocolError,
    ServerClosedError,
    exception_line,
)
from distkeras_plus.plugins import registry
from distkeras_plus.ps.checkpoint import Checkpoint, Checkpointer, Folder, Policy
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


class Peers:
    """The barrier's allGather between the tasks of a stage, which must all call it equally often.
    A task that has ended keeps answering (`finish`) until every worker has ended, so a worker that
    ends early, on an error, leaves no other waiting: theirs see it and stop (`Stopped`)."""

    ENDED = "\x00ended"

    def __init__(self, task: Any, workers: int) -> None:
        self.task, self.workers = task, workers  # the workers are the stage's first partitions

    def exchange(self, message: str) -> list[str]:
        """Every task's message, by partition."""
        return [str(m) for m in self.task.allGather(message)]

    def gather(self, message: str) -> list[str]:
        """The workers' messages (a worker's `all_gather`)."""
        found = self.exchange(message)[: self.workers]
        if self.ENDED in found:
            raise Stopped  # another worker has ended on an error: the run is over
        return found

    def finish(self, message: str = ENDED) -> None:
        """Takes part in every exchange until all the workers have ended."""
        while any(m != self.ENDED for m in self.exchange(message)[: self.workers]):
            pass


def run_worker(
    cfg: WorkerConfig,
    batches: Iterator[Any],
    report: Callable[[str], None] | None = None,
    peers: Peers | None = None,
    resumed: bool = False,
) -> Iterator[Any]:
    """The `mapInArrow` function: one worker on its partition. An error that a retry would meet
    again is not raised (Spark would retry it) but returned in the result's `error`, and given to
    `report` at once, so that the driver can stop the other workers. In a barrier stage the
    workers may exchange messages through `peers` (synchronous optimizers agree on their rounds).
    `resumed`: a retried stage, whose task attempts Spark numbers from 0 again."""
    set_process_env(cfg.threads)
    _reset_peak_rss()
    from pyspark import BarrierTaskContext, TaskContext

    task = TaskContext.get()
    worker_id = task.partitionId() if task else 0
    attempt = max(task.attemptNumber() if task else 0, int(resumed))
    # The parameter server needs a later attempt of a worker to carry a larger number. A retried
    # barrier stage numbers its attempts from 0 again; the task's id in the application grows.
    ps_attempt = min(task.taskAttemptId(), 2**32 - 1) if task else 0
    if peers is None and isinstance(task, BarrierTaskContext):
        peers = Peers(task, cfg.num_workers)
    ctx, data, error = None, None, None
    try:
        import keras  # noqa: F401  (before the partition: its share is what the backend leaves)

        limit = partition.memory_limit(cfg.in_memory_mb)
        columns = cfg.columns
        seed = cfg.seed + worker_id
        data = partition.load(batches, columns.num_features, columns.one_hot, cfg.batch_size, seed, limit)
        gather = peers.gather if peers is not None else None
        ctx = build_context(cfg, data, worker_id, attempt=ps_attempt, all_gather=gather)
        registry.get(cfg.optimizer).spec.worker(ctx)
    except Stopped:
        pass  # the driver's callbacks ended the run, or another worker did; what was trained is committed
    except RETRIED:
        raise
    except Exception as e:
        error = f"worker {worker_id}: {exception_line(f'{type(e).__name__}: {e}')}"
        if report is not None:
            report(error)
    finally:
        if ctx is not None and ctx.client is not None:
            if error is None:
                ctx.client.close()
            else:  # the server tells the others to stop, and the driver (Connect has no accumulator)
                ctx.client.fail(error)
        elif error is not None:
            _tell_server(cfg, worker_id, ps_attempt, error)
        spilled = 0
        if data is not None:
            spilled = data.spilled_bytes
            data.close()
    if peers is not None:
        peers.finish()
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


def _tell_server(cfg: WorkerConfig, worker_id: int, attempt: int, error: str) -> None:
    """Reports a worker's failure that came before it connected (its data, say) to the server."""
    if cfg.ps_address is None:
        return
    try:
        layout = FlatWeights.from_arrays(model_from_bytes(cfg.model).get_weights()).layout
        Client(cfg.ps_address, cfg.secret, layout, worker_id, attempt).fail(error)
    except Exception:  # noqa: S110 - the error still reaches the driver with the task's end
        pass


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
    #: Where the server writes the run's `progress.json` (its statistics, about once a second)
    #: and, with a `policy`, its checkpoints, as the driver's would be written.
    folder: str | None = None
    policy: Policy | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # what each checkpoint records
    rows: int = 1  # the training rows: with the samples reported, the epochs done
    epochs_before: int = 0  # whole epochs done when the run (or the run it resumes) began


def run_in_cluster(
    cfg: WorkerConfig, server: ServerTask, batches: Iterator[Any], report: Callable[[str], None] | None = None
) -> Iterator[Any]:
    """The `mapInArrow` function of a barrier stage of `cfg.num_workers` workers and one more task,
    the last, that serves the centre. The server task tells the others where it is and where the
    run stands through the barrier's allGather, takes part in their exchanges until they have all
    ended, and returns the centre and the server's statistics; the workers train as anywhere else.
    A retried stage goes on from the newest checkpoint of the run, when there is one."""
    from pyspark import BarrierTaskContext

    task = BarrierTaskContext.get()
    peers = Peers(task, cfg.num_workers)
    if task.partitionId() == cfg.num_workers:
        yield from _serve(cfg, server, peers)
        return
    start = json.loads(peers.exchange("")[cfg.num_workers])
    cfg = replace(
        cfg,
        ps_address=start["address"],
        start_clock=start["clock"],
        epochs=cfg.epochs - (start["epochs_done"] - server.epochs_before),
    )
    yield from run_worker(cfg, batches, report, peers, resumed=start["resumed"])


def _serve(cfg: WorkerConfig, st: ServerTask, peers: Peers) -> Iterator[Any]:
    import socket

    import numpy as np

    from distkeras_plus._core import Centre, Layout, ParameterServer

    folder = Folder(st.folder) if st.folder is not None else None
    values, clock, epochs_done = np.frombuffer(st.centre, np.float32).copy(), st.clock, st.epochs_before
    restored = _newest_of_run(folder, st.meta.get("run")) if st.policy is not None else None
    if restored is not None and restored.clock > clock:  # a retried stage
        values, clock, epochs_done = restored.values.copy(), restored.clock, restored.epochs_done
    centre = Centre(values, st.rule, st.params, round_timeout=st.timeout, clock=clock)
    host = "127.0.0.1" if st.local else socket.gethostbyname(socket.gethostname())
    bind = "127.0.0.1" if st.local else "0.0.0.0"  # noqa: S104 - authenticated
    server = ParameterServer(centre, Layout(st.shapes), cfg.secret, host=bind, idle_timeout=st.timeout)
    checkpointer = None
    if folder is not None and st.policy is not None:
        checkpointer = Checkpointer(folder, st.policy, st.meta, st.rows, epochs_done)
    ended = threading.Event()
    watch = threading.Thread(
        target=_watch, args=(server, folder, checkpointer, ended), name="dk-ps-watch", daemon=True
    )
    try:
        where = {
            "address": f"{host}:{server.port}",
            "clock": clock,
            "epochs_done": epochs_done,
            "resumed": clock > st.clock,
        }
        peers.exchange(json.dumps(where))
        watch.start()
        peers.finish("")  # every worker has ended
    finally:
        ended.set()
        if watch.is_alive():
            watch.join()
        server.stop()
    stats = _stats(server)
    if checkpointer is not None:
        checkpointer.write(server, checkpointer.epochs_done(stats))
    if folder is not None:
        folder.write(PROGRESS, json.dumps(stats).encode())
    yield _result_row(
        worker=SERVER_ROW,
        attempt=peers.task.attemptNumber(),
        samples=0,
        steps=0,
        history=json.dumps(stats),
        result=centre.to_numpy().tobytes(),
        error=None,
        spilled=0,
    )


#: The file in a run's folder that holds the server's latest statistics (executor placement).
PROGRESS = "progress.json"


def _stats(server: Any) -> dict[str, Any]:
    """The server's statistics and the first failure a worker reported to it."""
    return {**server.stats(), "failure": server.failure()}


def _newest_of_run(folder: Folder | None, run: str | None) -> Checkpoint | None:
    """The folder's newest whole checkpoint, if this run (not an earlier one) wrote it."""
    if folder is None or run is None:
        return None
    try:
        newest = folder.latest()
    except CheckpointError:
        return None
    return newest if newest.meta.get("run") == run else None


def _watch(
    server: Any, folder: Folder | None, checkpointer: Checkpointer | None, ended: threading.Event
) -> None:
    """About once a second until `ended`: the server's statistics to the progress file, and a
    checkpoint when one is due. A failed write is tried again a second later."""
    while not ended.wait(1.0):
        stats = _stats(server)
        try:
            if folder is not None:
                folder.write(PROGRESS, json.dumps(stats).encode())
            if checkpointer is not None:
                checkpointer.tick(server, stats)
        except OSError as e:
            warnings.warn(f"could not write to the run folder: {e}", stacklevel=1)
