"""Training under a real Spark Connect session (no SparkContext, no py4j on the client)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def test_a_connect_session_trains_as_a_classic_one(tmp_path: Path) -> None:
    script = Path(__file__).parent / "connect_run.py"
    run = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    found = json.loads(run.stdout.strip().splitlines()[-1])
    assert found["connect"] and found["local"] and found["slots"] == 2
    n = 1437  # digits' training rows
    for plugin in ("adag", "averaging", "ensemble"):
        assert found[plugin]["samples"] == 4 * n, found
        assert found[plugin]["accuracy"] > 0.5, found  # the thresholds of the classic tests
    assert found["in_cluster"]["samples"] == 2 * n and found["in_cluster"]["commits"] > 0
    assert len(found["val_accuracy"]) == 2 and found["val_accuracy"][1] > 0.3
    assert found["error"].startswith("no label column 'nope'"), found["error"]
    resumed = found["resumed"]  # the second run went on from the first's last checkpoint
    assert resumed["first"] > 0 and resumed["samples"] == n and resumed["clock"] > resumed["first"]
    assert found["model_at_uri"] is True and found["stage_at_uri"] == 64
    assert found["worker_error"].startswith("training with ensemble failed: worker "), found["worker_error"]
    assert "\n" not in found["worker_error"]
    failed = found["callback_error"]  # 1000 epochs would take minutes: the stage was interrupted
    assert failed["error"] == "a callback of the user's failed" and failed["seconds"] < 60, failed


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
