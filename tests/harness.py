"""Runs an optimizer's worker loop in threads against a real parameter server, without Spark:
the fast way to check a loop's rule step by step."""

from __future__ import annotations

import functools
import os
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from distkeras_plus import Centre, Client, ParameterServer
from distkeras_plus.data.storage import model_bytes
from distkeras_plus.data.tables import Columns
from distkeras_plus.plugins import registry
from distkeras_plus.ps.serve import new_secret
from distkeras_plus.ps.weights import FlatWeights
from distkeras_plus.spark.executor import WorkerConfig, build_context
from distkeras_plus.worker import Batches, WorkerContext, compiling


class Recorder:
    """Wraps a real client and records every pull and commit with what the worker held."""

    def __init__(self, client: Client, log: list[dict[str, Any]], lock: threading.Lock, worker: int) -> None:
        self.client, self.log, self.lock, self.worker = client, log, lock, worker

    @property
    def resume_samples(self) -> int:
        return self.client.resume_samples

    def pull(self, out: np.ndarray) -> int:
        clock = self.client.pull(out)
        with self.lock:
            self.log.append({"op": "pull", "worker": self.worker, "clock": clock, "centre": out.copy()})
        return clock

    def commit(self, values: np.ndarray, out: np.ndarray | None = None) -> tuple[int, int]:
        clock, staleness = self.client.commit(values, out=out)
        with self.lock:
            self.log.append(
                {
                    "op": "commit",
                    "worker": self.worker,
                    "clock": clock,
                    "staleness": staleness,
                    "values": values.copy(),
                    "reply": None if out is None else out.copy(),
                }
            )
        return clock, staleness

    def set_progress(self, samples: int, epoch: int = 0, logs: Any = ()) -> None:
        self.client.set_progress(samples, epoch, logs)

    @property
    def learning_rate(self) -> float | None:
        return self.client.learning_rate

    @property
    def stop_requested(self) -> bool:
        return self.client.stop_requested

    def flush(self) -> tuple[int, int] | None:
        return self.client.flush()

    def close(self) -> None:
        self.client.close()


class RecordingContext(WorkerContext):
    """Logs the weights the loop reads from its model, with the steps trained so far."""

    log: list[dict[str, Any]]
    lock: threading.Lock

    def model_weights(self) -> np.ndarray:
        weights = super().model_weights()
        with self.lock:
            self.log.append(
                {"op": "weights", "worker": self.worker_id, "steps": self.steps, "w": weights.copy()}
            )
        return weights


@dataclass
class Run:
    centre: np.ndarray
    initial: np.ndarray
    log: list[dict[str, Any]]
    contexts: list[WorkerContext] = field(default_factory=list)


def run_threads(
    optimizer: str,
    model: Any,
    parts: list[tuple[np.ndarray, np.ndarray]],
    options: dict[str, Any] | None = None,
    epochs: int = 1,
    batch_size: int = 8,
    worker_optimizer: Any = None,
    loss: str = "sparse_categorical_crossentropy",
) -> Run:
    spec = registry.get(optimizer).spec
    opts = spec.parse_options(options or {})
    n = len(parts)
    flat = FlatWeights.from_arrays(model.get_weights())
    choice = spec.rule_for(opts, n)
    secret = new_secret()
    log: list[dict[str, Any]] = []
    lock = threading.Lock()
    contexts: list[WorkerContext] = []
    errors: list[BaseException] = []
    gather_lock = threading.Barrier(n)
    gathered: dict[int, str] = {}

    def all_gather(worker: int, message: str) -> list[str]:
        gathered[worker] = message
        gather_lock.wait()
        return [gathered[i] for i in range(n)]

    with ParameterServer(
        Centre(flat.flat.copy(), choice.name, dict(choice.params)) if choice else Centre(flat.flat.copy()),
        flat.layout,
        secret,
    ) as server:
        # The workers are built as on an executor, from the same plain data.
        cfg = WorkerConfig(
            optimizer=optimizer,
            options=opts,
            model=model_bytes(model),
            compiled=compiling.resolve(
                model, loss, [], worker_optimizer, None, (spec.worker_optimizer_for(opts), loss)
            ),
            batch_size=batch_size,
            epochs=epochs,
            seed=0,
            num_workers=n,
            columns=Columns("features", "label", int(np.prod(model.input_shape[1:])), one_hot=False),
            ps_address=f"127.0.0.1:{server.port}" if choice is not None else None,
            secret=secret,
            threads=1,
        )
        for w, (x, y) in enumerate(parts):

            def connect(*args: Any, worker: int = w, **kwargs: Any) -> Recorder:
                return Recorder(Client(*args, **kwargs), log, lock, worker)

            ctx = build_context(
                cfg,
                Batches(x, y, cfg.batch_size, cfg.seed + w),
                w,
                all_gather=functools.partial(all_gather, w),
                connect=connect,
                context=RecordingContext,
            )
            assert isinstance(ctx, RecordingContext)
            ctx.log, ctx.lock = log, lock
            contexts.append(ctx)

        def target(ctx: WorkerContext) -> None:
            try:
                spec.worker(ctx)
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=target, args=(c,)) for c in contexts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        centre = server.centre.to_numpy()
    if errors:
        raise errors[0]
    return Run(centre, flat.flat.copy(), log, contexts)
