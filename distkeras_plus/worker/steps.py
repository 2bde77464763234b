"""Local training steps: a window of mini-batches as one call into the backend.

One `train_on_batch` per mini-batch pays Python's and Keras' cost per call (the data adapter, the
metrics' reset, the logs fetched back), which at small batches costs more than the step itself.
On TensorFlow a window runs as one compiled function looping over Keras' own `train_step` (so a
model's custom `train_step` is used, as `fit` uses it); other backends run the window batch by
batch with the same meaning. Either way the logs that come back are the window's: Keras' metrics
reset at its start and averaged over its steps."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

Batch = tuple[npt.NDArray[Any], npt.NDArray[Any]]


class Steps:
    """Trains a compiled Keras model on lists of mini-batches."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self._window: Callable[..., Any] | None = None
        self._built = False

    def __call__(self, batches: Sequence[Batch]) -> dict[str, float]:
        """Trains on `batches` in order; returns the logs over all of them."""
        import keras

        model, first = self.model, True
        if not self._built:  # Keras builds the optimizer's and the metrics' state on a first call
            model.train_on_batch(*batches[0])
            self._built, first, batches = True, False, batches[1:]
        if keras.backend.backend() != "tensorflow":
            if first:
                model.reset_metrics()
            for x, y in batches:
                model.train_on_batch(x, y, reset_metrics=False)
            return {k: float(v) for k, v in model.get_metrics_result().items()}
        logs: Any = None
        # Batches of one shape at a time: only the last batch of an epoch is smaller.
        start = 0
        while start < len(batches):
            end = start + 1
            shape = batches[start][0].shape
            while end < len(batches) and batches[end][0].shape == shape:
                end += 1
            xs = np.stack([b[0] for b in batches[start:end]])
            ys = np.stack([b[1] for b in batches[start:end]])
            logs = self._compiled(xs, ys)(xs, ys, np.bool_(first))
            first, start = False, end
        if logs is None:
            return {k: float(v) for k, v in model.get_metrics_result().items()}
        return {k: float(v) for k, v in logs.items()}

    def _compiled(self, xs: npt.NDArray[Any], ys: npt.NDArray[Any]) -> Callable[..., Any]:
        if self._window is None:
            import tensorflow as tf

            model = self.model

            def window(x: Any, y: Any, reset: Any) -> Any:
                if reset:
                    model.reset_metrics()
                logs = model.train_step((x[0], y[0]))
                for i in tf.range(1, tf.shape(x)[0]):
                    logs = model.train_step((x[i], y[i]))
                return logs

            # Any number of steps and any batch size: traced once.
            signature = [
                tf.TensorSpec([None, None, *xs.shape[2:]], xs.dtype),
                tf.TensorSpec([None, None, *ys.shape[2:]], ys.dtype),
                tf.TensorSpec([], tf.bool),
            ]
            self._window = tf.function(window, input_signature=signature, jit_compile=model.jit_compile)
        return self._window
