"""Training under a real Spark Connect session (no SparkContext, no py4j on the client)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import CONVERGENCE, example_plugin

N = 1437  # digits' training rows


def connect_run(tmp_path: Path, *args: str, timeout: float = 280) -> dict[str, Any]:
    """What tests/connect_run.py found, in a process of its own; nothing of it asked the Connect
    session for a SparkContext or the JVM (the local server's JVM is in that process, so only
    the session's own attributes tell)."""
    script = Path(__file__).parent / "connect_run.py"
    run = subprocess.run(
        [sys.executable, str(script), str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    found: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
    assert found.pop("spark_context_touched") == [], "the training path asked for a SparkContext"
    return found


def test_a_connect_session_trains_as_a_classic_one(tmp_path: Path) -> None:
    found = connect_run(tmp_path)
    assert found["connect"] and found["local"] and found["slots"] == 2
    for plugin in ("adag", "averaging", "ensemble"):
        assert found[plugin]["samples"] == 4 * N, found
        assert found[plugin]["accuracy"] > 0.5, found  # the thresholds of the classic tests
    assert found["trainer_class"]["commits"] > 0 and found["trainer_class"]["accuracy"] > 0.5
    for plugin in ("adag", "easgd"):
        in_cluster = found[f"in_cluster_{plugin}"]
        assert in_cluster["samples"] == 3 * N and in_cluster["commits"] > 0, in_cluster
        assert in_cluster["accuracy"] > 0.7, in_cluster
    assert len(found["val_accuracy"]) == 2 and found["val_accuracy"][1] > 0.3
    assert found["error"].startswith("no label column 'nope'"), found["error"]
    resumed = found["resumed"]  # the second run went on from the first's last checkpoint
    assert resumed["first"] > 0 and resumed["samples"] == N and resumed["clock"] > resumed["first"]
    assert found["model_at_uri"] is True and found["stage_at_uri"] == 64  # overwritten
    assert found["params_stage_at_uri"] == "second"
    assert found["worker_error"].startswith("training with ensemble failed: worker "), found["worker_error"]
    assert "\n" not in found["worker_error"]
    failed = found["callback_error"]  # 1000 epochs would take minutes: the stage was interrupted
    assert failed["error"] == "a callback of the user's failed" and failed["seconds"] < 60, failed


@pytest.mark.slow
def test_every_optimizer_learns_digits_under_connect(tmp_path: Path) -> None:
    found = connect_run(tmp_path, "optimizers", timeout=900)
    assert sorted(found) == sorted(CONVERGENCE)
    for plugin, run in found.items():  # the classic test's epochs and threshold
        assert run["samples"] == CONVERGENCE[plugin] * N, (plugin, run)
        assert run["accuracy"] >= 0.90, (plugin, run)


@pytest.mark.slow
def test_a_worker_that_fails_mid_run_ends_a_connect_run_at_once(tmp_path: Path) -> None:
    # Under Connect there are no accumulators: the failing worker tells the parameter server,
    # which stops the others, and the driver cancels the stage on seeing it.
    with example_plugin():
        found = connect_run(tmp_path, "failing")
    for plugin, last in (("fails-later", "3 commits"), ("fails-later-in-a-round", "3 rounds")):
        line = f"training with {plugin} failed: worker 1: ValueError: worker 1 gave up after {last}"
        assert found[plugin]["error"] == line, found
        assert found[plugin]["seconds"] < 60, found  # 300 epochs, or a 600 s round timeout, otherwise


@pytest.mark.slow
def test_dk_train_and_evaluate_through_a_connect_server(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from distkeras_plus.data.datasets import digits

    dk = str(Path(sys.executable).parent / "dk")
    model = tmp_path / "m.keras"
    train = [
        dk,
        "train",
        "--remote",
        "local[2]",
        "--epochs",
        "3",
        "--output",
        str(model),
        "--output-format",
        "json",
    ]
    done = subprocess.run(train, capture_output=True, text=True, timeout=280, cwd=tmp_path)
    assert done.returncode == 0 and done.stderr == "", done.stderr[-3000:]  # nothing foreign either
    report = json.loads(done.stdout)
    assert report["test_accuracy"] > 0.7 and report["samples"] == 3 * 1437
    pq.write_table(digits()._table("test"), tmp_path / "test.parquet")
    evaluate = [
        dk,
        "evaluate",
        "--model",
        str(model),
        "--data",
        str(tmp_path / "test.parquet"),
        "--output-format",
        "json",
    ]
    scores = []
    for where in (["--remote", "local[1]"], []):  # under Connect, and classic
        done = subprocess.run(evaluate + where, capture_output=True, text=True, timeout=280, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        scores.append(json.loads(done.stdout))
    assert scores[0]["accuracy"] == scores[1]["accuracy"] == pytest.approx(report["test_accuracy"])
    assert scores[0]["loss"] == pytest.approx(scores[1]["loss"], abs=1e-6)
