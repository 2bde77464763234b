"""An ensemble: one independent model per partition; prediction is the mean of their outputs."""

from __future__ import annotations

from typing import Any

import numpy as np

from distkeras_plus import OptimizerSpec, Option, hookimpl
from distkeras_plus.ps.weights import FlatWeights
from distkeras_plus.worker import WorkerContext, local_loop


def run(ctx: WorkerContext) -> None:
    ctx.reinitialize(ctx.options["seed"] + ctx.worker_id)
    local_loop(ctx)


def combine(model: Any, results: list[bytes]) -> Any:
    """A Keras model whose output is the mean of the members' outputs."""
    import keras

    layout = FlatWeights.from_arrays(model.get_weights()).layout
    members = []
    for i, data in enumerate(results):
        member = keras.models.clone_model(model)
        member.name = f"member_{i}"
        member.set_weights(FlatWeights(layout, np.frombuffer(data, dtype=np.float32).copy()).views)
        members.append(member)
    if len(members) == 1:
        return members[0]
    inputs = keras.Input(shape=model.input_shape[1:])
    return keras.Model(inputs, keras.layers.Average()([m(inputs) for m in members]), name="ensemble")


@hookimpl
def dk_optimizers() -> list[OptimizerSpec]:
    return [
        OptimizerSpec(
            name="ensemble",
            summary="Ensemble: n independent models (one per partition, different seeds), outputs averaged",
            options=[Option("seed", int, 0, "member i is initialised with seed + i", minimum=0)],
            rule=lambda opts, n: None,
            worker=run,
            combine=combine,
            description="No parameter server. The result is one Keras model that averages its members.",
        )
    ]
