"""How a worker's model is compiled: the loss, metrics and optimizer a run names, resolved with
Keras. The driver resolves them first, so that a typo is one line before Spark starts rather than
an error from every executor.

What a run names wins; what it leaves out comes from the model's own `compile()`, and then from the
optimizer plugin's defaults (`resolve`). The result is Keras' own compile config (plain data), which
the workers compile from and the trained model comes back compiled with.

Importing Keras takes seconds, so the names Keras knows are kept in a small cache file, one per
Keras version, written the first time they are resolved: a later run whose Keras is not imported
yet finds a misspelt name there at once. Everything else is still resolved with Keras itself."""

from __future__ import annotations

import difflib
import json
import os
import sys
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

from distkeras_plus.errors import SettingError
from distkeras_plus.quiet import import_keras

# Names `Model.compile` maps to a metric by the loss, which `keras.metrics.get` does not know.
_COMPILE_METRICS = ("accuracy", "acc", "crossentropy", "ce")
_NOT_NAMES = {"get", "serialize", "deserialize", "legacy", "schedules"}


def check(loss: Any, metrics: Sequence[Any] | None, optimizer: Any, with_keras: bool = True) -> None:
    """Raises a one-line `SettingError` for a loss, metric or optimizer that Keras cannot resolve
    (no loss: the default, chosen from the labels). Without `with_keras`, only what the cache of
    names can tell, at once."""
    named = [
        *([("loss", loss)] if loss is not None else []),
        *(("metric", m) for m in metrics or () if not (isinstance(m, str) and m.lower() in _COMPILE_METRICS)),
        *([("worker optimizer", optimizer)] if optimizer is not None else []),
    ]
    known = _cached_names()
    if known is not None and "keras" not in sys.modules:
        for what, identifier in named:
            if isinstance(identifier, str) and identifier not in known[what]:
                raise SettingError(_unknown(what, identifier, known[what]))
    if not with_keras:
        return
    keras = import_keras()
    modules = {"loss": keras.losses, "metric": keras.metrics, "worker optimizer": keras.optimizers}
    if known is None:
        _cache_names({what: _names_known(module) for what, module in modules.items()})
    for what, identifier in named:
        _resolve(what, identifier, modules[what])


def resolve(
    model: Any,
    loss: Any,
    metrics: Sequence[Any] | None,
    optimizer: Any,
    learning_rate: float | None,
    defaults: tuple[Any, Any],
) -> dict[str, Any]:
    """The compile config the workers use: `loss`, `metrics` and `optimizer` where given, else
    the model's own where it is compiled, else `defaults` (the optimizer plugin's optimizer and
    the loss the labels call for) and accuracy. `learning_rate` replaces the optimizer's."""
    import keras

    own = model.get_compile_config() if getattr(model, "compiled", False) else {}
    default_optimizer, default_loss = defaults
    chosen = optimizer if optimizer is not None else own.get("optimizer") or default_optimizer
    loss = loss if loss is not None else own.get("loss") or default_loss
    metrics = list(metrics) if metrics is not None else own.get("metrics") or ["accuracy"]
    plain = keras.saving.serialize_keras_object  # names stay names; objects become configs
    config = {
        **own,
        "optimizer": keras.optimizers.serialize(keras.optimizers.get(chosen)),
        "loss": plain(loss),
        "metrics": plain(metrics),
    }
    return config if learning_rate is None else with_learning_rate(config, learning_rate)


def compile_model(model: Any, config: dict[str, Any]) -> None:
    """Compiles `model` from a config `resolve` made."""
    model.compile_from_config(config)


def learning_rate_of(model: Any) -> float | None:
    """A compiled model's learning rate now (None for a schedule, which has no one rate)."""
    import keras

    rate = getattr(model.optimizer, "_learning_rate", None)
    if rate is None or isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
        return None
    return float(keras.ops.convert_to_numpy(rate))


def with_learning_rate(config: dict[str, Any], rate: float) -> dict[str, Any]:
    """A copy of a compile config whose optimizer has this learning rate."""
    optimizer = config["optimizer"]
    return {**config, "optimizer": {**optimizer, "config": {**optimizer["config"], "learning_rate": rate}}}


def _resolves(module: ModuleType, identifier: Any) -> bool:
    try:
        return module.get(identifier) is not None
    except (ValueError, TypeError, KeyError):
        return False


def _resolve(what: str, identifier: Any, module: ModuleType) -> None:
    try:
        if module.get(identifier) is None:
            raise ValueError("nothing")
    except (ValueError, TypeError, KeyError) as e:
        if not isinstance(identifier, str):
            raise SettingError(f"Keras cannot build the {what} {identifier!r}: {e}") from None
        raise SettingError(_unknown(what, identifier, _names_known(module))) from None


_MODULES = {"loss": "losses", "metric": "metrics", "worker optimizer": "optimizers"}


def _unknown(what: str, identifier: str, known: Iterable[str]) -> str:
    # Suggest lower-case names: Keras takes a class's name in lower case too ("adam" for Adam).
    names = sorted({n for n in known if n.islower()} - _NOT_NAMES)
    close = difflib.get_close_matches(identifier.lower(), names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; see keras.{_MODULES[what]}"
    return f"Keras has no {what} {identifier!r}{hint}"


def _names_known(module: ModuleType) -> list[str]:
    """Every name of `module` that Keras resolves: its public names, in lower case too, and the
    names of Keras' own registry where it has one (`mse`, `sparse_categorical_accuracy`)."""
    public = [n for n in dir(module) if not n.startswith("_")]
    source = sys.modules.get(f"keras.src.{module.__name__.split('.')[-1]}")
    registry = getattr(source, "ALL_OBJECTS_DICT", {})
    candidates = {*public, *(n.lower() for n in public), *registry}
    return sorted(n for n in candidates if _resolves(module, n))


def _cache_file() -> Path | None:
    try:
        version = metadata.version("keras")
    except metadata.PackageNotFoundError:
        return None
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "distkeras-plus" / f"keras-{version}-names.json"


def _cached_names() -> dict[str, set[str]] | None:
    path = _cache_file()
    try:
        data = json.loads(path.read_text()) if path is not None else None
        return {what: set(data[what]) for what in _MODULES} if data else None
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no cache, or not one of ours: Keras decides


def _cache_names(names: dict[str, list[str]]) -> None:
    path = _cache_file()
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.partial")
        partial.write_text(json.dumps(names))
        os.replace(partial, path)  # two runs writing at once leave one whole file
    except OSError:
        pass  # a read-only home only makes typos slower to report
