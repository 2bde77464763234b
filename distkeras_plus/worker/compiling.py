"""How a worker's model is compiled: the loss, metrics and optimizer a run names, resolved with
Keras. The driver resolves them first, so that a typo is one line before Spark starts rather than
an error from every executor."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from distkeras_plus.errors import SettingError
from distkeras_plus.quiet import import_keras

# Names `Model.compile` maps to a metric by the loss, which `keras.metrics.get` does not know.
_COMPILE_METRICS = ("accuracy", "acc", "crossentropy", "ce")
_NOT_NAMES = {"get", "serialize", "deserialize", "legacy", "schedules"}


def check(loss: Any, metrics: Sequence[Any], optimizer: Any) -> None:
    """Raises a one-line `SettingError` for a loss, metric or optimizer that Keras cannot resolve
    (no loss: the default, chosen from the labels)."""
    keras = import_keras()

    if loss is not None:
        _resolve("loss", loss, keras.losses.get, keras.losses)
    for metric in metrics:
        if not (isinstance(metric, str) and metric.lower() in _COMPILE_METRICS):
            _resolve("metric", metric, keras.metrics.get, keras.metrics)
    _resolve("worker optimizer", optimizer, keras.optimizers.get, keras.optimizers)


def compile_model(model: Any, loss: Any, metrics: Sequence[Any], optimizer: Any) -> None:
    import keras

    model.compile(optimizer=keras.optimizers.get(optimizer), loss=loss, metrics=list(metrics))


def _resolve(what: str, identifier: Any, get: Callable[[Any], Any], module: ModuleType) -> None:
    try:
        if get(identifier) is None:
            raise ValueError("nothing")
    except (ValueError, TypeError, KeyError) as e:
        if not isinstance(identifier, str):
            raise SettingError(f"Keras cannot build the {what} {identifier!r}: {e}") from None
        # Keras accepts a function's name or a class's name in lower case ("adam" for Adam).
        names = {n if n.islower() else n.lower() for n in dir(module) if not n.startswith("_")}
        close = difflib.get_close_matches(identifier.lower(), sorted(names - _NOT_NAMES), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; see keras.{module.__name__.split('.')[-1]}"
        raise SettingError(f"Keras has no {what} {identifier!r}{hint}") from None
