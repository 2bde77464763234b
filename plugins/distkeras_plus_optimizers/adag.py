"""ADAG: DOWNPOUR with the accumulated change normalised by the steps taken (AGN)."""

from __future__ import annotations

from distkeras_plus import OptimizerSpec, RuleChoice, hookimpl
from distkeras_plus.worker import WorkerContext, delta_loop
from distkeras_plus_optimizers.common import adam, window


def run(ctx: WorkerContext) -> None:
    delta_loop(ctx, ctx.options["window"], normalize=True)


@hookimpl
def dk_optimizers() -> list[OptimizerSpec]:
    return [
        OptimizerSpec(
            name="adag",
            summary="ADAG (AGN): every w steps commit D = (W - W0) / w, pull, continue from the centre",
            options=[window(12)],
            rule=lambda opts, n: RuleChoice("add"),
            worker=run,
            worker_optimizer=adam(0.02),
            description="dist-keras's ADAG class, called AGN (accumulated gradient normalisation) in "
            "J. Hermans' thesis (arXiv 1710.02368). The recommended default. A last partial window is "
            "normalised by the steps it actually took.",
        )
    ]
