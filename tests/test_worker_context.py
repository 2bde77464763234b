"""The worker context: a retried task's loop, whatever it is, goes on where its earlier attempt
stopped (the batches that attempt committed are left out by `ctx.batches`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

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


def test_a_window_in_one_call_trains_as_one_call_per_batch(monkeypatch: Any) -> None:
    """The compiled window (and its split where the batch size changes, and into calls of at most
    CALL_STEPS) takes the same steps as Keras' `train_on_batch`, batch after batch; the history's
    loss is the window's mean, weighted by the batches' sizes."""
    import keras

    from distkeras_plus.worker import context as context_module
    from distkeras_plus.worker import train_in_windows

    monkeypatch.setattr(context_module, "CALL_STEPS", 4)  # 7-step windows: calls of 4 and 3 steps
    rng = np.random.default_rng(0)
    x, y = rng.random((50, 4), dtype=np.float32), rng.integers(0, 3, 50)  # 6 batches of 8, one of 2

    def compiled() -> Any:
        model = default_model(4, 3, seed=2)
        model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
        return model

    ctx = WorkerContext(0, 1, {}, compiled(), Batches(x, y, batch_size=8, seed=1), epochs=2)
    windows: list[int] = []

    def exchange(steps: int) -> None:
        windows.append(steps)
        ctx.record()

    train_in_windows(ctx, 7, exchange)
    assert windows == [7, 7] and ctx.steps == 14 and ctx.samples == 100

    reference, losses = compiled(), []
    for epoch in range(2):
        for bx, by in Batches(x, y, batch_size=8, seed=1).epoch(epoch):
            losses.append((float(reference.train_on_batch(bx, by)), len(bx)))
    for got, want in zip(ctx.model.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    for row, window in zip(ctx.history, (losses[:7], losses[7:]), strict=True):
        mean = sum(loss * n for loss, n in window) / sum(n for _, n in window)
        assert row["loss"] == pytest.approx(mean, rel=1e-5)
