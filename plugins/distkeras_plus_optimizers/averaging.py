"""Model averaging (local SGD): the workers' weights are averaged every w steps or every epoch."""

from __future__ import annotations

from distkeras_plus import OptimizerSpec, Option, RuleChoice, hookimpl
from distkeras_plus.worker import WorkerContext, sync_loop


def run(ctx: WorkerContext) -> None:
    sync_loop(ctx, ctx.options["window"], alpha=None)


@hookimpl
def dk_optimizers() -> list[OptimizerSpec]:
    return [
        OptimizerSpec(
            name="averaging",
            summary="Model averaging: every w steps (default: every epoch) C = mean_i W_i; W_i = C",
            options=[
                Option("window", int, 0, "local steps between averagings; 0 = once per epoch", minimum=0)
            ],
            rule=lambda opts, n: RuleChoice("sync", {"workers": n, "scale": 1.0 / n}),
            worker=run,
            synchronous=True,
            description="Runs as a Spark barrier stage; the server's round sum is reset every round "
            "(the original's was not) and every worker trains on all of its data.",
        )
    ]
