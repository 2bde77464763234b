"""Hook specifications for distkeras-plus plugins.

A plugin is a module (or object) registered under the `distkeras_plus` entry-point group whose
functions are marked with `hookimpl`. Hooks are prefixed `dk_`.

Example, in a third-party distribution's `pyproject.toml`:

    [project.entry-points.distkeras_plus]
    my_optimizer = "my_package.my_optimizer"

and in `my_package/my_optimizer.py`:

    from distkeras_plus import OptimizerSpec, hookimpl

    @hookimpl
    def dk_optimizers() -> list[OptimizerSpec]:
        return [OptimizerSpec(name="my-optimizer", ...)]
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from distkeras_plus.plugins.spec import OptimizerSpec

PROJECT = "distkeras_plus"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def dk_optimizers() -> list[OptimizerSpec]:  # type: ignore[empty-body]
    """Return the distributed optimizers this plugin provides.

    Called once when plugins load. Each spec's `name` must be unique across all installed
    plugins; two plugins registering the same name is an error naming both distributions.
    """
