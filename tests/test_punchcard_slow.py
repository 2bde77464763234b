"""Punchcard end to end with real training: `dk train` on local Spark in the job's child."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from punchcard_daemon import Daemon, submit, wait_for

from distkeras_plus.punchcard import procs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    from distkeras_plus.data.datasets import load

    root = tmp_path_factory.mktemp("real")
    load("digits").to_parquet(root / "data")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.save(root / "m.keras")
    return root, root / "m.keras"


def test_a_real_training_job_end_to_end(setup: tuple[Path, Path], tmp_path: Path) -> None:
    import keras

    root, model_file = setup
    daemon = Daemon(tmp_path / "state", f"--data-root={root / 'data'}")
    try:
        token = daemon.add_user("alice")
        spec = {
            "name": "digits",
            "plugin": "adag",
            "options": {"window": 4},
            "data": str(root / "data" / "train.parquet"),
            "test_data": str(root / "data" / "test.parquet"),
            "epochs": 2,
            "workers": 2,
            "batch_size": 32,
            "worker_optimizer": "adam",
            "seed": 1,
        }
        with daemon.client(token) as c:
            r = submit(c, spec, model_file)
            assert r.status_code == 201, r.text
            job_id = r.json()["id"]
            job = wait_for(c, job_id, timeout=600)
            log = c.get(f"/jobs/{job_id}/logs").json()["text"]
            assert job["state"] == "succeeded", log
            result = job["result"]
            assert result["plugin"] == "adag" and result["options"]["window"] == 4
            assert result["workers"] == 2 and result["epochs"] == 2 and result["samples"] > 0
            assert result["commits"] > 0 and 0 <= result["test_accuracy"] <= 1
            assert job["progress"] is not None and "seconds" in job["progress"]
            trained = c.get(f"/jobs/{job_id}/result")
            history = c.get(f"/jobs/{job_id}/history").json()
        assert trained.status_code == 200
        (tmp_path / "trained.keras").write_bytes(trained.content)
        model = keras.saving.load_model(tmp_path / "trained.keras", safe_mode=True, compile=False)
        before = keras.saving.load_model(model_file, compile=False).get_weights()
        assert [w.shape for w in model.get_weights()] == [(64, 32), (32,), (32, 10), (10,)]
        assert all((a != b).any() for a, b in zip(model.get_weights(), before, strict=True))  # it trained
        assert history["epoch"] == [0, 1] and len(history["history"]["loss"]) == 2
        rows = history["workers"]
        assert rows and {"worker", "loss"} <= set(rows[0]) and {h["worker"] for h in rows} == {0, 1}
    finally:
        daemon.stop()


def test_cancel_stops_the_spark_jvm_too(setup: tuple[Path, Path], tmp_path: Path) -> None:
    root, model_file = setup
    daemon = Daemon(tmp_path / "state", "--kill-grace=5")
    try:
        token = daemon.add_user("alice")
        spec = {"data": str(root / "data" / "train.parquet"), "epochs": 1000, "workers": 1}
        with daemon.client(token) as c:
            job_id = submit(c, spec, model_file).json()["id"]
            wait_for(c, job_id, {"running"})
            child = daemon.running_pid(job_id)  # running comes first, then the child's pid
            # Wait until the child has started Spark's JVM: that is what must not outlive a cancel.
            deadline = time.monotonic() + 300
            while True:
                members = procs.session_members(child)
                commands = {p.pid: (Path(f"/proc/{p.pid}/cmdline").read_bytes()) for p in members}
                if any(b"java" in cmd for cmd in commands.values()) and (
                    c.get(f"/jobs/{job_id}").json()["progress"] is not None
                ):
                    break
                assert time.monotonic() < deadline, c.get(f"/jobs/{job_id}/logs").json()["text"]
                time.sleep(0.5)
            pids = [p.pid for p in members]
            started = time.monotonic()
            assert c.post(f"/jobs/{job_id}/cancel").status_code == 202
            job_json = wait_for(c, job_id, timeout=60)
            took = time.monotonic() - started
        assert job_json["state"] == "cancelled", json.dumps(job_json)
        assert procs.session_members(child) == []
        for pid in pids:
            state = procs.stat(pid)
            assert state is None or state.state == "Z", f"{commands[pid][:200]!r} survived the cancel"
        assert took < 30
    finally:
        daemon.stop()
