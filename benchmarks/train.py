"""Training benchmark (`dk bench train`): plain single-process Keras against each optimizer with
2 workers on local[2], same model, batch size and epochs, in one run.

Per data set: samples per second, test accuracy after 1, 2 and 4 epochs, wall time, and the share
of worker time spent communicating; plus the original author's headline setup on Fashion-MNIST
(mini-batch 4, 1 epoch, Adam, window 5) with adag and downpour.
"""

from __future__ import annotations

import os
import time
from typing import Any

from benchmarks import machine

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

OPTIMIZERS = ["single", "adag", "downpour", "aeasgd", "dynsgd", "averaging"]
EPOCHS = [1, 2, 4]
TARGETS = {"comm_share_max": 0.10, "throughput_vs_keras": 0.8, "averaging_points": 1.0}


def model_for(data: Any, seed: int = 0) -> Any:
    import keras

    keras.utils.set_random_seed(seed)
    width = 64 if data.x_train.shape[1] <= 64 else 128
    return keras.Sequential(
        [
            keras.Input((data.x_train.shape[1],)),
            keras.layers.Dense(width, activation="relu"),
            keras.layers.Dense(data.num_classes, activation="softmax"),
        ]
    )


def evaluate(model: Any, data: Any) -> float:
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return float(model.evaluate(data.x_test, data.y_test, verbose=0, batch_size=1024)[1])


def plain_keras(data: Any, batch_size: int) -> dict[str, Any]:
    """The baseline: one process, `model.fit`, the same model and batch size."""
    model = model_for(data)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(
        data.x_train[:batch_size], data.y_train[:batch_size], batch_size=batch_size, verbose=0
    )  # warm-up
    model = model_for(data)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    accuracy: dict[str, float] = {}
    seconds = 0.0
    done = 0
    for target in EPOCHS:
        t = time.perf_counter()
        model.fit(data.x_train, data.y_train, batch_size=batch_size, epochs=target - done, verbose=0)
        seconds += time.perf_counter() - t
        done = target
        accuracy[str(target)] = evaluate(model, data)
        model.compile(optimizer=model.optimizer, loss="sparse_categorical_crossentropy")
    return {
        "optimizer": "keras.fit (1 process)",
        "samples_per_second": EPOCHS[-1] * len(data.x_train) / seconds,
        "accuracy": accuracy,
        "seconds": seconds,
    }


def distributed(spark: Any, data: Any, optimizer: str, batch_size: int, **options: Any) -> dict[str, Any]:
    import distkeras_plus

    df = data.to_spark(spark).cache()
    df.count()
    accuracy: dict[str, float] = {}
    runs = []
    for epochs in EPOCHS:
        result = distkeras_plus.train(
            df, model_for(data), optimizer, num_workers=2, epochs=epochs, batch_size=batch_size, **options
        )
        accuracy[str(epochs)] = evaluate(result.model, data)
        runs.append(result)
    last = runs[-1]
    finals = {}
    for row in last.history:
        finals[row["worker"]] = row
    compute = sum(r["compute_seconds"] for r in finals.values())
    comm = sum(r["comm_seconds"] for r in finals.values())
    df.unpersist()
    return {
        "optimizer": optimizer,
        "samples_per_second": last.samples / last.seconds,
        "accuracy": accuracy,
        "seconds": last.seconds,
        "comm_share": comm / (comm + compute) if comm + compute else 0.0,
        "commits": last.ps_stats.get("commits", 0),
    }


def fashion_mnist() -> Any | None:
    """Fashion-MNIST when it is present (`DK_DATA_DIR`, Debian's dataset-fashion-mnist)."""
    from distkeras_plus.data import datasets
    from distkeras_plus.errors import DataError

    try:
        return datasets.fashion_mnist()
    except DataError:
        return None


def run(batch_size: int = 32, datasets: list[str] | None = None) -> dict[str, Any]:
    from distkeras_plus.data.datasets import digits
    from distkeras_plus.spark.session import local_session

    spark = local_session(2)
    spark.sparkContext.setLogLevel("ERROR")
    found = {"digits": digits()}
    fmnist = fashion_mnist()
    if fmnist is not None:
        found["fashion-mnist"] = fmnist
    results: dict[str, Any] = {"benchmark": "train", "machine": machine.describe(), "batch_size": batch_size}
    sets = []
    for name, data in found.items():
        if datasets and name not in datasets:
            continue
        baseline = plain_keras(data, batch_size)
        rows = [baseline] + [distributed(spark, data, o, batch_size) for o in OPTIMIZERS]
        for row in rows[1:]:
            row["vs_keras"] = row["samples_per_second"] / baseline["samples_per_second"]
        sets.append({"dataset": name, "train_samples": len(data.x_train), "rows": rows})
    results["datasets"] = sets
    if fmnist is not None and (not datasets or "fashion-mnist" in datasets):
        headline = []
        for optimizer in ("adag", "downpour"):
            import distkeras_plus

            t = time.perf_counter()
            result = distkeras_plus.train(
                fmnist.to_spark(spark), model_for(fmnist), optimizer, num_workers=2, epochs=1, batch_size=4,
                worker_optimizer="adam", window=5,
            )  # fmt: skip
            headline.append(
                {
                    "optimizer": optimizer,
                    "accuracy": evaluate(result.model, fmnist),
                    "seconds": time.perf_counter() - t,
                }
            )
        results["headline_fashion_mnist"] = headline
    return results


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [f"machine: {m['cpu']}, {m['cores']} cores; batch {results['batch_size']}"]
    for s in results["datasets"]:
        lines += ["", f"{s['dataset']} ({s['train_samples']} training samples), 2 workers on local[2]:"]
        lines.append("  optimizer               samples/s  vs keras  acc@1   acc@2   acc@4   wall s  comm")
        for r in s["rows"]:
            acc = "  ".join(f"{r['accuracy'][str(e)]:.4f}" for e in EPOCHS)
            vs = f"{r['vs_keras']:6.2f}x" if "vs_keras" in r else "      -"
            comm = f"{100 * r['comm_share']:4.1f}%" if "comm_share" in r else "    -"
            speed = r["samples_per_second"]
            lines.append(f"  {r['optimizer']:<22} {speed:9.0f}  {vs}  {acc}  {r['seconds']:6.1f}  {comm}")
    for h in results.get("headline_fashion_mnist", []):
        setup = "headline (batch 4, 1 epoch, Adam, window 5)"
        lines.append(f"{setup} {h['optimizer']}: {h['accuracy']:.4f} in {h['seconds']:.0f} s")
    return "\n".join(lines)
