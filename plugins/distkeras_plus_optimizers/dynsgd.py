"""DynSGD (Jiang et al., 2017): the server divides each commit by its staleness plus one."""

from __future__ import annotations

from distkeras_plus import OptimizerSpec, RuleChoice, hookimpl
from distkeras_plus_optimizers.common import adam, window
from distkeras_plus_optimizers.downpour import run  # the same loop; only the server rule differs


@hookimpl
def dk_optimizers() -> list[OptimizerSpec]:
    return [
        OptimizerSpec(
            name="dynsgd",
            summary="DynSGD: commit D = W - W0; the server applies D / (staleness + 1)",
            options=[window(5)],
            rule=lambda opts, n: RuleChoice("dynsgd"),
            worker=run,
            worker_optimizer=adam(0.002),
            description="Heterogeneity-aware asynchronous SGD (Jiang et al., SIGMOD 2017). The staleness "
            "is computed by the server atomically with the commit's application.",
        )
    ]
