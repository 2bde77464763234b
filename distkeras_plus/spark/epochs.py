"""The cluster's epochs as Keras sees them, on the driver.

Workers tell the parameter server their epoch and their window's loss and metrics with every
commit; the server sums them per epoch. An epoch is done once every worker has committed in a
later one (the last, once the training stage has ended), and the server keeps a copy of the
centre at that moment. Then the driver's model takes those weights, is evaluated on the
validation data, and every Keras callback's
`on_epoch_end(epoch, logs)` runs with `logs` the epoch's means over all the workers' steps and
the `val_*` scores: `model.fit`'s meaning, for the cluster as a whole. What the callbacks decide
(`model.stop_training`, a new learning rate) goes back to the workers in the server's replies.

A window of local steps that spans an epoch's end counts in the next epoch; asynchronous workers
are not in step, so the centre at an epoch's end may hold some of the next epoch's commits."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from distkeras_plus.errors import SettingError, exception_line
from distkeras_plus.ps.weights import FlatWeights
from distkeras_plus.spark.validation import Held, OnSpark
from distkeras_plus.worker import compiling


def log_names(model: Any, one_hot: bool, classes: int) -> list[str]:
    """The names of the logs a worker sends, in the order it sends them (`ordered`): Keras' own
    names for the compiled model's loss and metrics, found from one batch of zeros."""
    x = np.zeros((1, *model.input_shape[1:]), np.float32)
    y = np.zeros((1, classes), np.float32) if one_hot else np.zeros((1,), np.int32)
    try:
        logs = model.test_on_batch(x, y, return_dict=True)
    except Exception as e:  # Keras refusing the compiled loss or metrics for these labels
        form = "one-hot labels" if one_hot else "class-index labels"
        raise SettingError(
            f"the model's loss or metrics do not suit {form}: {exception_line(str(e))}"
        ) from None
    model.reset_metrics()
    return ordered(logs)


def ordered(logs: Any) -> list[str]:
    """Log names in the order they travel: the loss first, then the rest by name."""
    return sorted(logs, key=lambda k: (k != "loss", k))


class Epochs:
    """Runs `callbacks` (a `keras.callbacks.CallbackList`, History included) over the epochs of
    one run, from the parameter server's statistics; `poll` is called while the workers train
    (from one thread), `finish` once after they are done."""

    def __init__(
        self,
        model: Any,
        server: Any,
        layout: Any,
        callbacks: Any,
        names: Sequence[str],
        validation: Held | OnSpark | None,
        *,
        first: int,
        epochs: int,
        batch_size: int,
        steps: int,
    ) -> None:
        import keras

        self.model, self.server, self.layout, self.callbacks = model, server, layout, callbacks
        self.history = next(c for c in callbacks.callbacks if isinstance(c, keras.callbacks.History))
        self.names, self.validation = list(names), validation
        self.first, self.epochs, self.batch_size = first, epochs, batch_size
        self.steps = steps  # the cluster's mini-batches in an epoch
        self.done = 0  # epochs of this run whose end the callbacks have seen
        self.stopped = False
        self.learning_rate = compiling.learning_rate_of(model)

    def begin(self) -> float | None:
        """`on_train_begin` and the first `on_epoch_begin`; returns the learning rate the
        workers start with when a callback changed it (a schedule's first epoch)."""
        self.model.stop_training = False
        if self.validation is not None:
            self.validation.warm(self.model)
        self.callbacks.on_train_begin()
        self.callbacks.on_epoch_begin(self.first)
        rate = compiling.learning_rate_of(self.model)
        if rate != self.learning_rate:
            self.learning_rate = rate
            return rate
        return None

    def poll(self) -> None:
        """Ends every epoch that every worker has left behind, then tells the callbacks how far
        the cluster is into the next (`on_train_batch_end` with the cluster's steps so far: a
        progress bar moves, at the pace of the polls)."""
        while not self.stopped and self.done < min(self.server.epochs_ended, self.epochs):
            self._end(self.done)
        current = self.server.epochs().get(self.done)
        if current is not None and not self.stopped and self.done < self.epochs:
            step = min(self.steps, math.ceil(current["samples"] / self.batch_size))
            self.callbacks.on_train_batch_end(step - 1, self._logs(current["means"]))

    def finish(self) -> None:
        """After the training stage: the epochs that ended with it, then `on_train_end`."""
        reported = max((e + 1 for e in self.server.epochs()), default=0)
        while not self.stopped and self.done < min(reported, self.epochs):
            self._end(self.done)
        if not self.stopped:
            self._take(self.server.centre.to_numpy())
        self.callbacks.on_train_end()

    def _logs(self, means: Sequence[float]) -> dict[str, float]:
        return {n: float(v) for n, v in zip(self.names, means, strict=False) if math.isfinite(v)}

    def _end(self, epoch: int) -> None:
        logs = self._logs(self.server.epochs().get(epoch, {}).get("means", []))
        # The centre as the epoch left it (the last epochs end with the training: the centre now).
        kept = self.server.take_epoch_centre(epoch)
        self._take(kept if kept is not None else self.server.centre.to_numpy())
        if self.validation is not None:
            logs.update({f"val_{k}": v for k, v in self.validation.scores(self.model).items()})
        self.callbacks.on_epoch_end(self.first + epoch, logs)
        self.done = epoch + 1
        if self.model.stop_training:
            self.stopped = True
            self.server.set_control(stop=True, learning_rate=self.learning_rate)
            return
        if self.done < self.epochs:
            self.callbacks.on_epoch_begin(self.first + self.done)
        rate = compiling.learning_rate_of(self.model)
        if rate != self.learning_rate:
            self.learning_rate = rate
            self.server.set_control(stop=False, learning_rate=rate)

    def _take(self, centre: npt.NDArray[np.float32]) -> None:
        self.model.set_weights(FlatWeights(self.layout, centre).views)
