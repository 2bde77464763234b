"""Elastic averaging momentum SGD: AEASGD with a Nesterov-momentum local optimizer."""

from __future__ import annotations

from distkeras_plus import OptimizerSpec, Option, RuleChoice, hookimpl
from distkeras_plus_optimizers.aeasgd import OPTIONS, alpha, run  # only the local optimizer differs
from distkeras_plus_optimizers.common import sgd


@hookimpl
def dk_optimizers() -> list[OptimizerSpec]:
    return [
        OptimizerSpec(
            name="eamsgd",
            summary="EAMSGD: AEASGD whose workers use Nesterov momentum, v = mu v - lr grad(W + mu v)",
            options=[*OPTIONS, Option("momentum", float, 0.9, "Nesterov momentum mu", minimum=0.0)],
            rule=lambda opts, n: RuleChoice("elastic", {"alpha": alpha(opts)}),
            worker=run,
            worker_optimizer=lambda opts: sgd(opts["learning_rate"], opts["momentum"], nesterov=True),
            description="The local step is Keras SGD(momentum=mu, nesterov=True), which evaluates the "
            "look-ahead gradient at W + mu v (the original evaluated it on the wrong side).",
        )
    ]
