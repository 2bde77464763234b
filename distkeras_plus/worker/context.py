"""A worker's context: its model, its partition, its connection to the parameter server and its
history. Loops (`distkeras_plus.worker.loops`, or a plugin's own) drive it."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from distkeras_plus._core import Client, Layout
from distkeras_plus.errors import PluginError
from distkeras_plus.ps.weights import FlatWeights
from distkeras_plus.worker import compiling
from distkeras_plus.worker.partition import Batches
from distkeras_plus.worker.steps import Steps

F32 = npt.NDArray[np.float32]


class Stopped(Exception):  # not an error: how a commit ends a worker's loop
    """The driver asked the workers to stop (a callback set `model.stop_training`): raised by
    `commit` once the commit is applied, so that any loop ends there, and the task cleanly."""


#: The most mini-batches one call into the backend trains, and the most bytes of features it
#: takes: enough for the call's own cost not to count, without copying a partition at once.
CALL_STEPS, CALL_BYTES = 64, 32 << 20


@dataclass
class WorkerContext:
    """Everything a worker loop needs. Loops call `batches`, `train_steps` (or `train`, for one
    mini-batch), `pull`, `commit`, `model_weights` and `set_model`; the context keeps the time
    spent computing and communicating, and the history.

    A retried task goes on where its earlier attempt stopped: `batches` leaves out the batches
    whose samples that attempt had committed (`resume_samples`, from the parameter server), so
    no loop needs code of its own for it."""

    worker_id: int
    num_workers: int
    options: dict[str, Any]
    model: Any  # a compiled keras.Model
    data: Batches
    epochs: int
    client: Client | None = None
    all_gather: Callable[[str], list[str]] | None = None
    start_clock: int = 0  # the centre's clock when the run started
    log_names: list[str] = field(default_factory=list)  # the logs each commit reports, in order
    resume_samples: int = 0  # what an earlier attempt of this task committed: not trained again
    result: bytes | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    compute_seconds: float = 0.0
    comm_seconds: float = 0.0
    steps: int = 0
    samples: int = 0
    epoch: int = 0
    clock: int = 0
    _log_sums: dict[str, float] = field(default_factory=dict)  # log x samples, since the last row
    _log_samples: int = 0
    _rate: float | None = None  # the optimizer's learning rate (None for a schedule)

    _skip: int = 0

    def __post_init__(self) -> None:
        self.samples = self._skip = self.resume_samples
        layout = Layout([list(w.shape) for w in self.model.get_weights()])
        self.centre = FlatWeights(layout)  # the centre as last received
        self.local = FlatWeights(layout)  # the model's own weights, flattened
        self._steps = Steps(self.model)
        # Read once: only `_follow` changes it, so a commit need not ask the backend.
        self._rate = compiling.learning_rate_of(self.model)

    # ---- local training ----

    def batches(self, epoch: int) -> Iterator[tuple[npt.NDArray[Any], npt.NDArray[Any]]]:
        """This epoch's mini-batches, without those an earlier attempt committed."""
        self.epoch = epoch
        # Counted now, not as the batches are drawn: a loop may leave an epoch's batches undrawn.
        skip = min(self._skip, self.data.samples)
        self._skip -= skip
        batches = self.data.epoch(epoch)
        while skip > 0:
            skip -= len(next(batches)[0])  # the batches come in the same order on every attempt
        return batches

    def train(self, x: npt.NDArray[Any], y: npt.NDArray[Any]) -> None:
        """One mini-batch (a window of them is faster as one `train_steps`)."""
        self.train_steps([(x, y)])

    def train_steps(self, batches: Iterable[tuple[npt.NDArray[Any], npt.NDArray[Any]]]) -> int:
        """Trains on `batches` in order, as few calls into the backend as they fit in; returns
        how many there were. The history's loss and metrics are Keras' means over the steps."""
        it, done = iter(batches), 0
        while chunk := self._chunk(it):
            t = time.perf_counter()
            logs = self._steps(chunk)
            self.compute_seconds += time.perf_counter() - t
            samples = sum(len(x) for x, _ in chunk)
            self.steps += len(chunk)
            self.samples += samples
            done += len(chunk)
            for name, value in logs.items():
                self._log_sums[name] = self._log_sums.get(name, 0.0) + value * samples
            self._log_samples += samples
        return done

    @staticmethod
    def _chunk(batches: Iterator[tuple[npt.NDArray[Any], npt.NDArray[Any]]]) -> list[Any]:
        first = next(batches, None)
        if first is None:
            return []
        room = max(1, min(CALL_STEPS, CALL_BYTES // max(1, first[0].nbytes)))
        return [first, *itertools.islice(batches, room - 1)]

    def _means(self) -> dict[str, float]:
        """Each log's mean over the steps since the last history row."""
        n = self._log_samples
        return {name: total / n for name, total in self._log_sums.items()} if n else {}

    def model_weights(self) -> F32:
        """The model's current weights as one flat vector (a buffer reused between calls)."""
        self.local.load(self.model.get_weights())
        return self.local.flat

    def reinitialize(self, seed: int) -> None:
        """Fresh initial weights drawn with `seed` (ensemble members must differ)."""
        import keras

        keras.utils.set_random_seed(seed)
        self.model.set_weights(keras.models.clone_model(self.model).get_weights())

    def set_model(self, flat: F32) -> None:
        if flat is not self.local.flat:
            np.copyto(self.local.flat, flat)
        self.model.set_weights(self.local.views)

    # ---- the parameter server ----

    def _client(self) -> Client:
        if self.client is None:
            raise PluginError("this optimizer runs without a parameter server")
        return self.client

    def pull(self) -> int:
        """Fetches the centre into `self.centre.flat` and makes it the model's weights."""
        t = time.perf_counter()
        self.clock = self._client().pull(self.centre.flat)
        self.comm_seconds += time.perf_counter() - t
        self.set_model(self.centre.flat)
        return self.clock

    def commit(self, values: F32, out: F32 | None = None) -> tuple[int, int]:
        t = time.perf_counter()
        client = self._client()
        means = self._means()
        names = self.log_names or ["loss"]
        client.set_progress(self.samples, self.epoch, [means.get(n, math.nan) for n in names])
        clock, staleness = client.commit(np.ascontiguousarray(values, dtype=np.float32), out=out)
        self.comm_seconds += time.perf_counter() - t
        self.clock = clock
        self.record(staleness=staleness)
        self._follow(client)
        return clock, staleness

    def _follow(self, client: Client) -> None:
        """What the driver said in the server's reply: a new learning rate, or stop."""
        rate = client.learning_rate
        if rate is not None and rate != self._rate:
            self.model.optimizer.learning_rate = rate  # read by every later step, compiled or not
            self._rate = rate
        if client.stop_requested:
            raise Stopped

    def flush(self) -> None:
        """Sends what a lossy codec's error feedback still holds back, densely. Not called by the
        built-in loops: measured on digits with `topk:0.01`, dumping the stale residual into the
        centre at the end cost accuracy, and for fp16/bf16/int8 it costs a float32 commit for
        rounding noise."""
        if self.client is None:
            return
        t = time.perf_counter()
        applied = self.client.flush()
        self.comm_seconds += time.perf_counter() - t
        if applied is not None:
            self.clock = applied[0]
            self.record(staleness=applied[1], flush=True)

    def record(self, **extra: Any) -> None:
        """Adds a history row for the steps since the last one."""
        means = self._means()
        row = {
            "time": time.time(),
            "worker": self.worker_id,
            "epoch": self.epoch,
            "steps": self.steps,
            "samples": self.samples,
            "loss": None,
            **{k: (None if math.isnan(v) else v) for k, v in means.items()},
            "clock": self.clock,
            "learning_rate": self._rate,
            "compute_seconds": self.compute_seconds,
            "comm_seconds": self.comm_seconds,
            **extra,
        }
        self.history.append(row)
        self._log_sums, self._log_samples = {}, 0
