"""Plain Keras training on one worker with all the data: the baseline every run is judged by."""

from __future__ import annotations

from distkeras_plus import OptimizerSpec, RuleChoice, hookimpl
from distkeras_plus.worker import WorkerContext, local_loop


def run(ctx: WorkerContext) -> None:
    local_loop(ctx)


@hookimpl
def dk_optimizers() -> list[OptimizerSpec]:
    return [
        OptimizerSpec(
            name="single",
            summary="Single: one worker, one partition, plain Keras training on every mini-batch",
            options=[],
            rule=lambda opts, n: RuleChoice("add"),
            worker=run,
            single_partition=True,
            description="The baseline. Trains every mini-batch of every epoch (the original trained one).",
        )
    ]
