"""The loops the built-in optimizers are made of; plugins may use them too."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np

from distkeras_plus.errors import PluginError
from distkeras_plus.worker.context import WorkerContext


def train_in_windows(ctx: WorkerContext, window: int, exchange: Callable[[int], None]) -> None:
    """Trains every batch of every epoch, calling `exchange(steps)` after each `window` local
    steps and once more for a last, partial window. A window is one call into the backend (two
    where it spans the end of an epoch, whose last batch is smaller)."""
    steps = 0
    for epoch in range(ctx.epochs):
        batches = ctx.batches(epoch)
        while trained := ctx.train_steps(itertools.islice(batches, window - steps)):
            steps += trained
            if steps == window:
                exchange(steps)
                steps = 0
    if steps:
        exchange(steps)


def delta_loop(ctx: WorkerContext, window: int, normalize: bool) -> None:
    """Every `window` local steps: commit `D = W - W0` (divided by the steps taken when
    `normalize`), pull, and continue from the centre. The last partial window is committed too."""
    ctx.pull()
    w0 = ctx.centre.flat.copy()

    def exchange(steps: int) -> None:
        delta = ctx.model_weights() - w0
        if normalize:
            delta /= steps
        ctx.commit(delta)
        ctx.pull()
        np.copyto(w0, ctx.centre.flat)

    train_in_windows(ctx, window, exchange)


def elastic_loop(ctx: WorkerContext, window: int) -> None:
    """Asynchronous elastic averaging: every `window` local steps the server computes
    `E = alpha * (W - C)` against the current centre, applies `C += E` and returns `E`; the worker
    does `W -= E` and is not reset to the centre."""
    ctx.pull()
    elastic = np.empty_like(ctx.centre.flat)

    def exchange(steps: int) -> None:
        weights = ctx.model_weights()
        ctx.commit(weights, out=elastic)
        ctx.set_model(weights - elastic)

    train_in_windows(ctx, window, exchange)


def sync_loop(ctx: WorkerContext, window: int, alpha: float | None) -> None:
    """Synchronous rounds (a barrier stage): every worker commits once per round and waits for
    the others. With `alpha`: EASGD, each commits `E = alpha * (W - C)` and does `W -= E`; without:
    model averaging, each commits `W - C` (the server scales by 1/n) and takes the new centre.
    `window` 0 means one round per epoch. Workers agree on the number of rounds first, so one
    with a smaller partition still takes part in every round."""
    if ctx.all_gather is None:
        raise PluginError("synchronous optimizers run as a barrier stage")
    ctx.pull()
    centre = ctx.centre.flat
    per_epoch = max(int(n) for n in ctx.all_gather(str(len(ctx.data))))
    window = window or per_epoch
    rounds_per_epoch = math.ceil(per_epoch / window)
    # A retried stage continues after the rounds the centre already holds (their batches are
    # left out by `ctx.batches`).
    done = ctx.clock - ctx.start_clock
    for epoch in range(ctx.epochs):
        batches = ctx.batches(epoch)
        for r in range(rounds_per_epoch):
            if epoch * rounds_per_epoch + r < done:
                continue
            ctx.train_steps(itertools.islice(batches, window))
            weights = ctx.model_weights()
            if alpha is None:
                ctx.commit(weights - centre, out=centre)
                ctx.set_model(centre)
            else:
                elastic = alpha * (weights - centre)
                ctx.commit(elastic, out=centre)
                ctx.set_model(weights - elastic)


def local_loop(ctx: WorkerContext) -> None:
    """Plain training on the whole partition. With a parameter server, what each epoch changed is
    committed at its end (so the driver sees the epochs); without one, the result is the model."""
    if ctx.client is not None:
        ctx.pull()
    committed = ctx.model_weights().copy()
    for epoch in range(ctx.epochs):
        ctx.train_steps(ctx.batches(epoch))
        if ctx.client is None:
            ctx.record()
            continue
        weights = ctx.model_weights()
        ctx.commit(weights - committed)
        np.copyto(committed, weights)
    if ctx.client is None:
        ctx.result = ctx.model_weights().tobytes()
