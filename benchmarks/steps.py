"""A worker's local steps (`dk bench steps`): the window loop every built-in optimizer trains with
(`train_in_windows`, no parameter server) against plain Keras `model.fit(steps_per_execution=
window)` on the same model, data, batch size and thread count, in one process; one
`train_on_batch` per mini-batch (what workers did before) for reference.

The model is the Fashion-MNIST one (784-128-10, Adam), on random data of that shape, one
TensorFlow thread, as a worker of a 2-worker run on 2 cores has."""

from __future__ import annotations

import logging
import os
import statistics
import time
from typing import Any

import numpy as np

from benchmarks import machine

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

logging.getLogger("tensorflow").setLevel(logging.ERROR)  # a new model per run: "retracing" warnings

BATCHES = (4, 32, 128)
TARGETS = {"vs_fit_min": 0.95}


def _model() -> Any:
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((784,)), keras.layers.Dense(128, activation="relu"), keras.layers.Dense(10, "softmax")]
    )
    return model


def _compile(model: Any, **kwargs: Any) -> Any:
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"], **kwargs)
    return model


def _fit(x: Any, y: Any, batch: int, window: int, epochs: int) -> float:
    model = _compile(_model(), steps_per_execution=window)
    model.fit(x[: batch * window], y[: batch * window], batch_size=batch, verbose=0)  # traced
    t = time.perf_counter()
    model.fit(x, y, batch_size=batch, epochs=epochs, verbose=0)
    return time.perf_counter() - t


def _windows(x: Any, y: Any, batch: int, window: int, epochs: int) -> float:
    from distkeras_plus.worker import Batches, WorkerContext, train_in_windows

    ctx = WorkerContext(0, 1, {}, _compile(_model()), Batches(x, y, batch, 0), epochs)
    ctx.train_steps(next(iter(ctx.data.epoch(99))) for _ in range(window))  # traced
    t = time.perf_counter()
    train_in_windows(ctx, window, lambda steps: None)
    return time.perf_counter() - t


def _per_batch(x: Any, y: Any, batch: int, window: int, epochs: int) -> float:
    model = _compile(_model())
    model.train_on_batch(x[:batch], y[:batch])
    order = np.random.default_rng(0).permutation(len(x))
    t = time.perf_counter()
    for _ in range(epochs):
        for start in range(0, len(x), batch):
            idx = order[start : start + batch]
            model.train_on_batch(x[idx], y[idx])
    return time.perf_counter() - t


def run(window: int = 12, steps: int = 600, repeats: int = 3) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    for batch in BATCHES:
        n = batch * steps
        x = rng.random((n, 784), dtype=np.float32)
        y = rng.integers(0, 10, n).astype(np.int32)
        epochs = 2
        timed = {
            name: statistics.median(f(x, y, batch, window, epochs) for _ in range(repeats)) / (steps * epochs)
            for name, f in (("fit", _fit), ("windows", _windows), ("per_batch", _per_batch))
        }
        rows.append(
            {
                "batch_size": batch,
                "ms_per_step": {k: 1000 * v for k, v in timed.items()},
                "vs_fit": timed["fit"] / timed["windows"],
                "per_batch_vs_fit": timed["fit"] / timed["per_batch"],
            }
        )
    return {
        "benchmark": "steps",
        "machine": machine.describe(),
        "window": window,
        "rows": rows,
        "target_vs_fit_min": TARGETS["vs_fit_min"],
        "ok": all(r["vs_fit"] >= TARGETS["vs_fit_min"] for r in rows),
    }


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"machine: {m['cpu']}, {m['cores']} cores; window {results['window']}, one TensorFlow thread",
        "  batch   fit(steps_per_execution)   our windows   vs fit   one train_on_batch per step",
    ]
    for r in results["rows"]:
        ms = r["ms_per_step"]
        lines.append(
            f"  {r['batch_size']:>5}   {ms['fit']:>13.3f} ms/step   {ms['windows']:>7.3f} ms   "
            f"{r['vs_fit']:5.2f}x   {ms['per_batch']:.3f} ms ({r['per_batch_vs_fit']:.2f}x)"
        )
    lines.append(f"  target: at least {results['target_vs_fit_min']}x fit at every batch size")
    return "\n".join(lines)
