"""A third-party optimizer: DOWNPOUR whose commits the server scales by 1/n (so n workers move
the centre like one); and one whose loop always raises, for the tests of how errors end a run."""

from distkeras_plus import OptimizerSpec, Option, RuleChoice, hookimpl
from distkeras_plus.worker import WorkerContext, delta_loop


def run(ctx: WorkerContext) -> None:
    delta_loop(ctx, ctx.options["window"], normalize=False)


def fail(ctx: WorkerContext) -> None:
    from pyspark import TaskContext

    task = TaskContext.get()
    raise ValueError(f"this loop always fails (attempt {task.attemptNumber() if task else 0})")


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
    ]
