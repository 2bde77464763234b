"""DOWNPOUR (Dean et al., 2012): commit the raw change since the last pull."""

from __future__ import annotations

from distkeras_plus import OptimizerSpec, RuleChoice, hookimpl
from distkeras_plus.worker import WorkerContext, delta_loop
from distkeras_plus_optimizers.common import window


def run(ctx: WorkerContext) -> None:
    delta_loop(ctx, ctx.options["window"], normalize=False)


@hookimpl
def dk_optimizers() -> list[OptimizerSpec]:
    return [
        OptimizerSpec(
            name="downpour",
            summary="DOWNPOUR: every w steps commit D = W - W0, pull, continue from the centre",
            options=[window(5)],
            rule=lambda opts, n: RuleChoice("add"),
            worker=run,
            description="Asynchronous SGD with a parameter server (Dean et al., NIPS 2012). The centre "
            "receives every worker's raw weight change, so n workers take n steps at once.",
        )
    ]
