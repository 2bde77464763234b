"""ADAG with per-weight staleness (the thesis's ADAG; dist-keras's `Experimental`)."""

from __future__ import annotations

from distkeras_plus import OptimizerSpec, Option, RuleChoice, hookimpl
from distkeras_plus_optimizers.adag import run  # the same loop; only the server rule differs
from distkeras_plus_optimizers.common import adam, window


@hookimpl
def dk_optimizers() -> list[OptimizerSpec]:
    return [
        OptimizerSpec(
            name="adag-adaptive",
            summary="ADAG with per-weight staleness: C += D / ((C - Cs)^2 / gamma + 1)",
            options=[
                window(12),
                Option("gamma", float, 1e-4, "drift scale of the per-weight staleness", minimum=1e-12),
            ],
            rule=lambda opts, n: RuleChoice("adaptive", {"gamma": opts["gamma"]}),
            worker=run,
            worker_optimizer=adam(0.02),
            description="What J. Hermans' thesis calls ADAG; shipped by dist-keras as `Experimental`. "
            "Each weight's update is damped by how far the centre has drifted from what this worker "
            "last pulled (Cs).",
        )
    ]
