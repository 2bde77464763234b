"""A third-party optimizer: DOWNPOUR whose commits the server scales by 1/n (so n workers move
the centre like one); and, for the tests of how errors end a run, one whose loop always raises,
and two in which worker 1 fails after three commits while the others train on."""

import numpy as np

from distkeras_plus import OptimizerSpec, Option, RuleChoice, hookimpl
from distkeras_plus.worker import WorkerContext, delta_loop, sync_loop


def run(ctx: WorkerContext) -> None:
    delta_loop(ctx, ctx.options["window"], normalize=False)


def fail(ctx: WorkerContext) -> None:
    from pyspark import TaskContext

    task = TaskContext.get()
    raise ValueError(f"this loop always fails (attempt {task.attemptNumber() if task else 0})")


def fails_later(ctx: WorkerContext) -> None:
    if ctx.worker_id != 1:
        delta_loop(ctx, 1, normalize=False)
        return
    ctx.pull()
    for _ in range(3):
        ctx.commit(np.zeros_like(ctx.centre.flat))
    raise ValueError("worker 1 gave up after 3 commits")


def fails_later_in_a_round(ctx: WorkerContext) -> None:
    if ctx.worker_id != 1:
        sync_loop(ctx, 1, alpha=None)
        return
    assert ctx.all_gather is not None  # a barrier stage
    ctx.pull()
    ctx.all_gather(str(len(ctx.data)))
    for _ in range(3):
        ctx.commit(np.zeros_like(ctx.centre.flat), out=ctx.centre.flat)
    raise ValueError("worker 1 gave up after 3 rounds")


@hookimpl
def dk_optimizers() -> list[OptimizerSpec]:
    return [
        OptimizerSpec(
            name="mean-delta",
            summary="Example plugin: commit W - W0; the server adds it scaled by 1/n",
            options=[Option("window", int, 4, "local steps between commits", minimum=1)],
            rule=lambda opts, n: RuleChoice("add", {"scale": 1.0 / n}),
            worker=run,
            worker_optimizer={"class_name": "Adam", "config": {"learning_rate": 0.005}},
        ),
        OptimizerSpec(
            name="always-fails",
            summary="Example plugin: a worker loop that raises",
            options=[],
            rule=lambda opts, n: RuleChoice("add"),
            worker=fail,
        ),
        OptimizerSpec(
            name="fails-later",
            summary="Example plugin: worker 1 raises after three commits",
            options=[],
            rule=lambda opts, n: RuleChoice("add", {"scale": 1.0 / n}),
            worker=fails_later,
        ),
        OptimizerSpec(
            name="fails-later-in-a-round",
            summary="Example plugin: worker 1 raises after three synchronous rounds",
            options=[],
            rule=lambda opts, n: RuleChoice("sync", {"workers": n, "scale": 1.0 / n}),
            worker=fails_later_in_a_round,
            synchronous=True,
        ),
    ]
