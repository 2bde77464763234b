"""A whole run (`dk bench run`): `dk train` on Fashion-MNIST as a user starts it (a new process:
the JVM, Spark, the workers, the test evaluation, the saved model) against a plain single-process
Keras script that trains the same model for the same epochs and batch size and evaluates it on
the test set, back to back in one run.

Also: when the first training step began and how long the process took after the last commit
(from the run's history), and the peak memory of each process tree (the driver, the JVM and the
Python workers: their resident set sizes summed, sampled every 0.1 s)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks import machine

TARGETS = {"wall_vs_keras_max": 1.2, "first_step_seconds_max": 8.0, "after_last_commit_max": 2.0}
TARGETS_MEMORY = {"peak_rss_gb_max": 2.0}

PLAIN_KERAS = """
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
from distkeras_plus.data.datasets import default_model, fashion_mnist
data = fashion_mnist()
model = default_model(784, 10)
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
model.fit(data.x_train, data.y_train, epochs=int(sys.argv[1]), batch_size=int(sys.argv[2]), verbose=0)
print(model.evaluate(data.x_test, data.y_test, batch_size=1024, verbose=0)[1])
"""


def _tree_rss(root: int) -> int:
    """The resident bytes of `root` and every process below it: each process's proportional set
    size, so pages that forked Python workers share with their daemon count once, not per process."""
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    tree, grew = {root}, True
    while grew:
        below = {pid for pid, parent in parents.items() if parent in tree} - tree
        grew = bool(below)
        tree |= below
    total = 0
    for pid in tree:
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            total += int(next(x for x in rollup.splitlines() if x.startswith("Pss:")).split()[1]) << 10
        except (OSError, ValueError, StopIteration):
            continue
    return total


def _timed(command: list[str], cwd: str) -> dict[str, Any]:
    """Runs `command`; its wall time, output and the peak memory of its process tree."""
    peak = [0]
    started = time.time()
    proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):  # reading the proportional sizes costs the kernel time
            peak[0] = max(peak[0], _tree_rss(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    ended = time.time()
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{command[0]} failed ({proc.returncode}): {err.strip()[-2000:]}")
    return {"started": started, "ended": ended, "wall": ended - started, "stdout": out, "peak_rss": peak[0]}


def run(epochs: int = 3, batch_size: int = 32, workers: int = 2) -> dict[str, Any]:
    from distkeras_plus.data.datasets import fashion_mnist

    fashion_mnist()  # one clear error now when it is not installed
    dk = str(Path(sys.executable).parent / "dk")
    with tempfile.TemporaryDirectory() as folder:
        history = Path(folder) / "history.json"
        ours = _timed(
            [dk, "train", "--dataset", "fashion-mnist", "--epochs", str(epochs), "--batch-size",
             str(batch_size), "--workers", str(workers), "--output", str(Path(folder) / "model.keras"),
             "--history-file", str(history), "--output-format", "json"],
            folder,
        )  # fmt: skip
        plain = _timed([sys.executable, "-c", PLAIN_KERAS, str(epochs), str(batch_size)], folder)
        rows = json.loads(history.read_text())
    report = json.loads(ours["stdout"])
    # A history row is written after its window: the window began its steps and exchange before.
    first_step = min(r["time"] - r["compute_seconds"] - r["comm_seconds"] for r in rows if r["steps"])
    last_commit = max(r["time"] for r in rows)
    results = {
        "benchmark": "run",
        "machine": machine.describe(),
        "epochs": epochs,
        "batch_size": batch_size,
        "workers": workers,
        "dk_train": {
            "wall_seconds": ours["wall"],
            "training_seconds": report["seconds"],
            "first_step_seconds": first_step - ours["started"],
            "after_last_commit_seconds": ours["ended"] - last_commit,
            "peak_rss_gb": ours["peak_rss"] / 1e9,
            "test_accuracy": report["test_accuracy"],
        },
        "plain_keras": {
            "wall_seconds": plain["wall"],
            "peak_rss_gb": plain["peak_rss"] / 1e9,
            "test_accuracy": float(plain["stdout"].split()[-1]),
        },
    }
    results["wall_vs_keras"] = ours["wall"] / plain["wall"]
    results["targets"] = {**TARGETS, **TARGETS_MEMORY}
    return results


def render(results: dict[str, Any]) -> str:
    m, ours, plain, t = results["machine"], results["dk_train"], results["plain_keras"], results["targets"]
    return "\n".join(
        [
            f"machine: {m['cpu']}, {m['cores']} cores; Fashion-MNIST, {results['epochs']} epochs, "
            f"batch {results['batch_size']}, {results['workers']} workers on local[{results['workers']}]",
            f"  dk train:    {ours['wall_seconds']:6.1f} s wall, {ours['training_seconds']:.1f} s training, "
            f"peak {ours['peak_rss_gb']:.2f} GB, test accuracy {ours['test_accuracy']:.4f}",
            f"  plain Keras: {plain['wall_seconds']:6.1f} s wall, peak {plain['peak_rss_gb']:.2f} GB, "
            f"test accuracy {plain['test_accuracy']:.4f}",
            f"  wall vs plain Keras: {results['wall_vs_keras']:.2f}x (target <= {t['wall_vs_keras_max']}x)",
            f"  first training step after {ours['first_step_seconds']:.1f} s "
            f"(target <= {t['first_step_seconds_max']:.0f} s); "
            f"{ours['after_last_commit_seconds']:.1f} s from the last commit to exit "
            f"(target <= {t['after_last_commit_max']:.0f} s)",
            f"  peak memory of dk train's processes: {ours['peak_rss_gb']:.2f} GB "
            f"(target <= {t['peak_rss_gb_max']:.0f} GB)",
        ]
    )
