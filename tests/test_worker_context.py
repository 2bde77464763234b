"""The worker context: a retried task's loop, whatever it is, goes on where its earlier attempt
stopped (the batches that attempt committed are left out by `ctx.batches`)."""

from __future__ import annotations

import numpy as np

from distkeras_plus.data.datasets import default_model
from distkeras_plus.worker import Batches, WorkerContext


def context(resume_samples: int) -> WorkerContext:
    x = np.arange(10 * 4, dtype=np.float32).reshape(10, 4)
    y = np.arange(10) % 3
    model = default_model(4, 3)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    return WorkerContext(
        worker_id=0,
        num_workers=1,
        options={},
        model=model,
        data=Batches(x, y, batch_size=4, seed=1),
        epochs=2,
        resume_samples=resume_samples,
    )


def third_party_loop(ctx: WorkerContext) -> list[np.ndarray]:
    """A loop with no code of its own for retries."""
    seen = []
    for epoch in range(ctx.epochs):
        for x, y in ctx.batches(epoch):
            ctx.train(x, y)
            seen.append(x)
    return seen


def test_a_retried_loop_skips_what_its_earlier_attempt_committed() -> None:
    clean = third_party_loop(context(0))
    assert [len(x) for x in clean] == [4, 4, 2, 4, 4, 2]
    # The earlier attempt committed epoch 0 and the first batch of epoch 1: 14 samples.
    retried = context(14)
    seen = third_party_loop(retried)
    assert len(seen) == 2 and all((a == b).all() for a, b in zip(seen, clean[4:], strict=True))
    assert retried.samples == 20 and retried.steps == 2


def test_an_epoch_left_undrawn_is_still_counted() -> None:
    ctx = context(10)
    ctx.batches(0)  # a loop that skips ahead without drawing epoch 0's batches
    assert len(list(ctx.batches(1))) == 3  # epoch 1 is trained whole
