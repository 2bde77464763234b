"""A worker's context: its model, its partition, its connection to the parameter server and its
history. Loops (`distkeras_plus.worker.loops`, or a plugin's own) drive it."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from distkeras_plus._core import Client, Layout
from distkeras_plus.errors import DataError, PluginError
from distkeras_plus.ps.weights import FlatWeights

F32 = npt.NDArray[np.float32]


class Batches:
    """A worker's partition held as arrays, served in mini-batches, reshuffled every epoch.

    The last, smaller batch of an epoch is kept: every sample is trained on.
    """

    def __init__(self, x: npt.NDArray[Any], y: npt.NDArray[Any], batch_size: int, seed: int) -> None:
        if len(x) != len(y):
            raise DataError(f"{len(x)} feature rows but {len(y)} labels")
        self.x, self.y, self.batch_size, self.seed = x, y, batch_size, seed

    @property
    def samples(self) -> int:
        return len(self.x)

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def epoch(self, epoch: int) -> Iterator[tuple[npt.NDArray[Any], npt.NDArray[Any]]]:
        order = np.random.default_rng((self.seed, epoch)).permutation(len(self.x))
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            yield self.x[idx], self.y[idx]


@dataclass
class WorkerContext:
    """Everything a worker loop needs. Loops call `batches`, `train`, `pull`, `commit`,
    `model_weights` and `set_model`; the context keeps the time spent computing and
    communicating, and the history.

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
    resume_samples: int = 0  # what an earlier attempt of this task committed: not trained again
    result: bytes | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    compute_seconds: float = 0.0
    comm_seconds: float = 0.0
    steps: int = 0
    samples: int = 0
    epoch: int = 0
    clock: int = 0
    _window_losses: list[float] = field(default_factory=list)
    _last_logs: dict[str, float] = field(default_factory=dict)

    _skip: int = 0

    def __post_init__(self) -> None:
        self.samples = self._skip = self.resume_samples
        layout = Layout([list(w.shape) for w in self.model.get_weights()])
        self.centre = FlatWeights(layout)  # the centre as last received
        self.local = FlatWeights(layout)  # the model's own weights, flattened

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
        t = time.perf_counter()
        logs = self.model.train_on_batch(x, y, return_dict=True)
        self.compute_seconds += time.perf_counter() - t
        self.steps += 1
        self.samples += len(x)
        self._last_logs = {k: float(v) for k, v in logs.items()}
        self._window_losses.append(self._last_logs.get("loss", float("nan")))

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
        losses = self._window_losses
        client.set_progress(self.samples, float(np.mean(losses)) if losses else float("nan"))
        clock, staleness = client.commit(np.ascontiguousarray(values, dtype=np.float32), out=out)
        self.comm_seconds += time.perf_counter() - t
        self.clock = clock
        self.record(staleness=staleness)
        return clock, staleness

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
        losses = self._window_losses
        row = {
            "time": time.time(),
            "worker": self.worker_id,
            "epoch": self.epoch,
            "steps": self.steps,
            "samples": self.samples,
            "loss": float(np.mean(losses)) if losses else None,
            **{k: v for k, v in self._last_logs.items() if k != "loss"},
            "clock": self.clock,
            "compute_seconds": self.compute_seconds,
            "comm_seconds": self.comm_seconds,
            **extra,
        }
        self.history.append(row)
        self._window_losses = []
