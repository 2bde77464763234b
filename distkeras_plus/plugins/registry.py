"""Finding optimizer plugins through the `distkeras_plus` entry-point group (pluggy).

Entry points are loaded once per process, and again when the switches below change, after
`reload()`, or when an optimizer is asked for that they do not provide (it may have been
installed since). `DK_LOAD_PLUGINS=a,b` loads only the named entry points; `DK_DISABLE_PLUGINS=a,b`
skips them. Names are entry-point names (what `dk plugins list` shows in its plugin column).

A plugin that fails to load, or that names an optimizer another plugin has, does not stop the
others: it is listed as broken, and only a run that asks for what it would have provided fails.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from importlib.metadata import entry_points

import pluggy

from distkeras_plus.errors import PluginError
from distkeras_plus.plugins import hookspecs
from distkeras_plus.plugins.spec import OptimizerSpec

__all__ = ["Installed", "PluginError", "Registered", "get", "load", "reload"]


@dataclass(frozen=True)
class Registered:
    """An optimizer and where it comes from."""

    spec: OptimizerSpec
    plugin: str
    distribution: str
    version: str


@dataclass
class Installed:
    """What the installed plugins provide, and the ones that could not be used, with why."""

    optimizers: dict[str, Registered] = field(default_factory=dict)
    #: Entry-point name -> the error, in one line.
    broken: dict[str, str] = field(default_factory=dict)
    #: Optimizer name -> why it cannot be used (two plugins both register it).
    conflicts: dict[str, str] = field(default_factory=dict)


_cache: dict[tuple[str | None, str | None], Installed] = {}


def _names(value: str | None) -> set[str] | None:
    if value is None:
        return None
    return {n.strip() for n in value.split(",") if n.strip()}


def reload() -> None:
    """Forgets what was loaded: the next lookup reads the entry points again."""
    _cache.clear()


def installed() -> Installed:
    """Every allowed plugin's optimizers, loaded on first use."""
    key = (os.environ.get("DK_LOAD_PLUGINS"), os.environ.get("DK_DISABLE_PLUGINS"))
    if key not in _cache:
        _cache[key] = _discover(_names(key[0]), _names(key[1]) or set())
    return _cache[key]


def load() -> dict[str, Registered]:
    """The usable optimizers by name."""
    return dict(installed().optimizers)


def _discover(only: set[str] | None, skip: set[str]) -> Installed:
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    found = Installed()
    origin: dict[str, tuple[str, str]] = {}
    for ep in entry_points(group=hookspecs.PROJECT):
        if (only is not None and ep.name not in only) or ep.name in skip:
            continue
        where = (ep.dist.name, ep.dist.version) if ep.dist else ("unknown", "")
        if manager.has_plugin(ep.name):
            found.broken[ep.name] = f"two installed distributions both name their plugin {ep.name!r}"
            continue
        try:
            manager.register(ep.load(), name=ep.name)  # pluggy checks each hook against its spec
        except Exception as e:
            found.broken[ep.name] = f"{ep.value} from {where[0]} failed to load: {_line(e)}"
            continue
        origin[ep.name] = where

    # One call per plugin rather than one hook call, so every optimizer keeps its origin.
    for impl in manager.hook.dk_optimizers.get_hookimpls():
        name = impl.plugin_name
        dist, version = origin.get(name, ("unknown", ""))
        try:
            returned: list[object] = list(impl.function())  # type: ignore[call-overload]
        except Exception as e:
            found.broken[name] = f"its dk_optimizers hook failed: {_line(e)}"
            continue
        specs = [s for s in returned if isinstance(s, OptimizerSpec)]
        if len(specs) != len(returned):
            bad = next(s for s in returned if not isinstance(s, OptimizerSpec))
            found.broken[name] = f"its dk_optimizers hook returned {bad!r}, not an OptimizerSpec"
            continue
        for spec in specs:
            if spec.name in found.conflicts:
                continue
            other = found.optimizers.pop(spec.name, None)
            if other is None:
                found.optimizers[spec.name] = Registered(spec, name, dist, version)
                continue
            found.conflicts[spec.name] = (
                f"optimizer {spec.name!r} is registered twice: by {other.distribution} "
                f"(plugin {other.plugin}) and by {dist} (plugin {name}); uninstall one or set "
                f"DK_DISABLE_PLUGINS={name} (or {other.plugin})"
            )
    return found


def _line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def get(name: str) -> Registered:
    """The optimizer `name`, or a clear error listing what is installed and what is broken."""
    found = installed()
    if name not in found.optimizers and name not in found.conflicts:
        importlib.invalidate_caches()  # a distribution installed into this running process
        reload()
        found = installed()
    if name in found.optimizers:
        return found.optimizers[name]
    if name in found.conflicts:
        raise PluginError(found.conflicts[name])
    broken = ""
    if found.broken:
        plugins = ", ".join(sorted(found.broken))
        details = "; ".join(f"{p}: {e}" for p, e in sorted(found.broken.items()))
        broken = (
            f"; plugins that failed to load (it may be theirs): {details} "
            f"(set DK_DISABLE_PLUGINS={plugins} to skip them)"
        )
    if not found.optimizers:
        raise PluginError(
            "no optimizer plugins are installed; install the built-in ones with "
            f"`pip install ./plugins` from a distkeras-plus checkout{broken}"
        )
    raise PluginError(f"unknown optimizer {name!r}; installed: {', '.join(sorted(found.optimizers))}{broken}")
