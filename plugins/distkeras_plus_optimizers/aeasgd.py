"""Asynchronous elastic averaging SGD (Zhang, Choromanska, LeCun 2015)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from distkeras_plus import OptimizerSpec, Option, RuleChoice, hookimpl
from distkeras_plus.worker import WorkerContext, elastic_loop
from distkeras_plus_optimizers.common import sgd, window

OPTIONS = [
    window(32),
    Option("rho", float, 5.0, "elastic strength; alpha = rho * learning_rate", minimum=0.0),
    Option("learning_rate", float, 0.1, "the workers' SGD learning rate", minimum=0.0),
]


def alpha(opts: Mapping[str, Any]) -> float:
    return float(opts["rho"] * opts["learning_rate"])


def run(ctx: WorkerContext) -> None:
    elastic_loop(ctx, ctx.options["window"])


@hookimpl
def dk_optimizers() -> list[OptimizerSpec]:
    return [
        OptimizerSpec(
            name="aeasgd",
            summary="AEASGD: every w steps E = alpha (W - C); C += E; W -= E (workers are not reset)",
            options=OPTIONS,
            rule=lambda opts, n: RuleChoice("elastic", {"alpha": alpha(opts)}),
            worker=run,
            worker_optimizer=lambda opts: sgd(opts["learning_rate"]),
            description="Asynchronous EASGD. The server computes E against the current centre, applies "
            "it and returns it in the same round trip, so no separate pull is needed.",
        )
    ]
