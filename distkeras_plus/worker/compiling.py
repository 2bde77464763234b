"""How a worker's model is compiled: the loss, metrics and optimizer a run names, resolved with
Keras. The driver resolves them first, so that a typo is one line before Spark starts rather than
an error from every executor.

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


def check(loss: Any, metrics: Sequence[Any], optimizer: Any, with_keras: bool = True) -> None:
    """Raises a one-line `SettingError` for a loss, metric or optimizer that Keras cannot resolve
    (no loss: the default, chosen from the labels). Without `with_keras`, only what the cache of
    names can tell, at once."""
    named = [
        *([("loss", loss)] if loss is not None else []),
        *(("metric", m) for m in metrics if not (isinstance(m, str) and m.lower() in _COMPILE_METRICS)),
        ("worker optimizer", optimizer),
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


def compile_model(model: Any, loss: Any, metrics: Sequence[Any], optimizer: Any) -> None:
    import keras

    model.compile(optimizer=keras.optimizers.get(optimizer), loss=loss, metrics=list(metrics))


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
