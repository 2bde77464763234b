"""Finding optimizer plugins through the `distkeras_plus` entry-point group (pluggy).

`DK_LOAD_PLUGINS=a,b` loads only the named entry points; `DK_DISABLE_PLUGINS=a,b` skips them.
Names are entry-point names (what `dk plugins list` shows in its plugin column).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib.metadata import entry_points

import pluggy

from distkeras_plus import hookspecs
from distkeras_plus.optimizers import OptimizerSpec


class PluginError(RuntimeError):
    """Plugins that cannot be loaded together, or an optimizer that is not installed."""


@dataclass(frozen=True)
class Registered:
    """An optimizer and where it comes from."""

    spec: OptimizerSpec
    plugin: str
    distribution: str
    version: str


def _names(var: str) -> set[str] | None:
    value = os.environ.get(var)
    if value is None:
        return None
    return {n.strip() for n in value.split(",") if n.strip()}


def load() -> dict[str, Registered]:
    """Loads every allowed plugin and returns its optimizers by name."""
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    only, skip = _names("DK_LOAD_PLUGINS"), _names("DK_DISABLE_PLUGINS") or set()
    origin: dict[str, tuple[str, str]] = {}
    for ep in entry_points(group=hookspecs.PROJECT):
        if (only is not None and ep.name not in only) or ep.name in skip:
            continue
        if manager.has_plugin(ep.name):
            raise PluginError(f"two installed distributions both name their plugin {ep.name!r}")
        try:
            manager.register(ep.load(), name=ep.name)  # pluggy checks each hook against its spec
        except Exception as e:
            raise PluginError(f"plugin {ep.name} ({ep.value}) failed to load: {e}") from e
        origin[ep.name] = (ep.dist.name, ep.dist.version) if ep.dist else ("unknown", "")

    found: dict[str, Registered] = {}
    # One call per plugin rather than one hook call, so every optimizer keeps its origin.
    for impl in manager.hook.dk_optimizers.get_hookimpls():
        dist, version = origin.get(impl.plugin_name, ("unknown", ""))
        specs: list[object] = impl.function()  # type: ignore[assignment]  # pluggy types it as object
        for spec in specs:
            if not isinstance(spec, OptimizerSpec):
                raise PluginError(f"plugin {impl.plugin_name} returned {spec!r}, not an OptimizerSpec")
            if spec.name in found:
                other = found[spec.name]
                raise PluginError(
                    f"optimizer {spec.name!r} is registered twice: by {other.distribution} "
                    f"(plugin {other.plugin}) and by {dist} (plugin {impl.plugin_name}); "
                    f"uninstall one or set DK_DISABLE_PLUGINS={impl.plugin_name}"
                )
            found[spec.name] = Registered(spec, impl.plugin_name, dist, version)
    return found


def get(name: str) -> Registered:
    """The optimizer `name`, or a clear error listing what is installed."""
    installed = load()
    if name in installed:
        return installed[name]
    if not installed:
        raise PluginError(
            "no optimizer plugins are installed; install the built-in ones with "
            "`pip install ./plugins` from a distkeras-plus checkout"
        )
    raise PluginError(f"unknown optimizer {name!r}; installed: {', '.join(sorted(installed))}")
