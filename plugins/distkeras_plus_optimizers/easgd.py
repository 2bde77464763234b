"""Synchronous elastic averaging SGD (Zhang, Choromanska, LeCun 2015)."""

from __future__ import annotations

from distkeras_plus import OptimizerSpec, Option, RuleChoice, hookimpl
from distkeras_plus.worker import WorkerContext, sync_loop
from distkeras_plus_optimizers.common import sgd, window


def run(ctx: WorkerContext) -> None:
    sync_loop(ctx, ctx.options["window"], alpha=ctx.options["rho"] * ctx.options["learning_rate"])


@hookimpl
def dk_optimizers() -> list[OptimizerSpec]:
    return [
        OptimizerSpec(
            name="easgd",
            summary="EASGD (synchronous): every w steps E_i = alpha (W_i - C); W_i -= E_i; C += sum E_i",
            options=[
                window(10),
                Option("rho", float, 5.0, "elastic strength; alpha = rho * learning_rate", minimum=0.0),
                Option("learning_rate", float, 0.1, "the workers' SGD learning rate", minimum=0.0),
            ],
            rule=lambda opts, n: RuleChoice("sync", {"workers": n, "scale": 1.0}),
            worker=run,
            synchronous=True,
            worker_optimizer=lambda opts: sgd(opts["learning_rate"]),
            description="Runs as a Spark barrier stage. Local steps are gradient descent (the original's "
            "synchronous EASGD ascended). The default learning rate is 0.1 rather than the original's "
            "0.01, with which the default model barely moves in a few epochs.",
        )
    ]
