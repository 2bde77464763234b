"""Fault tolerance end to end on local Spark, through the installed `dk`: a worker process killed
with SIGKILL in the middle of training (asynchronous and synchronous optimizers), and a killed
driver resumed from its checkpoints, one of them damaged (slow; CI runs them)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from faults import commits_so_far, kill_busiest_worker, wait_for

from distkeras_plus.ps.checkpoint import Folder, decode

pytestmark = pytest.mark.slow
DK = str(Path(sys.executable).parent / "dk")
# Big enough that training, not start-up, takes most of a run: 80,000 training rows.
DATA = ["--dataset", "synthetic:100000", "--workers", "2"]


def start(args: list[str], tmp_path: Path, name: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [DK, "train", "--output-format", "json", "--output", str(tmp_path / f"{name}.keras"), *args],
        stdout=subprocess.PIPE,
        stderr=(tmp_path / f"{name}.log").open("w"),
        text=True,
        cwd=tmp_path,
        start_new_session=True,  # its own process group: the driver, its JVM and Python workers
    )


def finish(proc: subprocess.Popen[str], tmp_path: Path, name: str) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
    return json.loads(out)  # type: ignore[no-any-return]


def train(args: list[str], tmp_path: Path, name: str) -> dict[str, Any]:
    return finish(start(args, tmp_path, name), tmp_path, name)


def train_and_kill_a_worker(args: list[str], tmp_path: Path, name: str) -> tuple[dict[str, Any], float]:
    progress = tmp_path / f"{name}.progress"
    started = time.monotonic()
    proc = start([*args, "--progress-file", str(progress)], tmp_path, name)
    wait_for(lambda: commits_so_far(progress) >= 10 or proc.poll() is not None, 300, "the first commits")
    assert proc.poll() is None, "the run ended before a worker could be killed"
    kill_busiest_worker(proc.pid)
    report = finish(proc, tmp_path, name)
    return report, time.monotonic() - started


def test_a_killed_worker_is_retried_and_an_async_run_finishes(tmp_path: Path) -> None:
    report, _ = train_and_kill_a_worker(["--plugin", "adag", "--epochs", "4", *DATA], tmp_path, "adag")
    assert report["retried_workers"], "no task was retried: was the worker killed?"
    assert report["test_accuracy"] > 0.5  # four classes: chance is 0.25
    # Every sample was trained into the centre once: the retried task went on after the work its
    # killed attempt had committed, so the centre took exactly a clean run's commits,
    # 2 workers x ceil(4 epochs x 1250 batches / window 12).
    assert report["samples"] == 4 * 80_000
    assert report["commits"] == 2 * math.ceil(4 * 1250 / 12)


def test_a_killed_worker_fails_the_barrier_stage_which_resumes_from_the_last_round(tmp_path: Path) -> None:
    args = ["--plugin", "easgd", "--epochs", "3", *DATA]
    baseline = train(args, tmp_path, "baseline")
    report, seconds = train_and_kill_a_worker(args, tmp_path, "easgd")
    # Every round is applied once: the retried stage skipped the rounds the centre already held.
    assert report["clock"] == baseline["clock"]
    assert abs(report["test_accuracy"] - baseline["test_accuracy"]) < 0.05
    assert seconds < 300  # not hung until the 600 s round timeout


def test_a_killed_driver_resumes_from_its_newest_whole_checkpoint(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    args = [
        "--plugin",
        "adag",
        "--epochs",
        "6",
        *DATA,
        "--checkpoint-dir",
        str(ckpt),
        "--checkpoint-seconds",
        "1",
    ]
    baseline = train(["--plugin", "adag", "--epochs", "6", *DATA], tmp_path, "baseline")

    proc = start(args, tmp_path, "killed")
    folder = Folder(str(ckpt))

    def two_checkpoints_past_epoch_1() -> bool:
        """The one before the newest (what the resume falls back to) holds a whole epoch."""
        names = folder.checkpoints()
        try:
            return len(names) >= 2 and decode((ckpt / names[1]).read_bytes()).epochs_done >= 1
        except FileNotFoundError:  # pruned meanwhile
            return False

    wait_for(lambda: proc.poll() is not None or two_checkpoints_past_epoch_1(), 300, "checkpoints")
    assert proc.poll() is None, "the run ended before its driver could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    newest, previous = folder.checkpoints()[:2]
    before = decode((ckpt / previous).read_bytes())
    # A crash of the disk, not of the writer: the newest is truncated; the resume must notice.
    damaged = ckpt / newest
    damaged.write_bytes(damaged.read_bytes()[:-100])

    resumed = start(["--resume", str(ckpt)], tmp_path, "resumed")
    report = finish(resumed, tmp_path, "resumed")
    assert f"skipping checkpoint {damaged}" in (tmp_path / "resumed.log").read_text()
    assert report["resumed_from_clock"] == before.clock
    assert report["clock"] > before.clock  # the clock goes on from the checkpoint
    assert report["epochs"] == 6 and before.epochs_done >= 1
    assert report["samples"] == (6 - before.epochs_done) * 80_000  # finished epochs are skipped
    assert abs(report["test_accuracy"] - baseline["test_accuracy"]) < 0.05
    assert folder.latest().epochs_done == 6


def test_a_killed_worker_with_the_server_in_the_cluster_resumes_from_a_checkpoint(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    args = ["--plugin", "adag", "--epochs", "12", *DATA, "--ps-location", "executor"]
    args += ["--checkpoint-dir", str(ckpt), "--checkpoint-seconds", "1"]
    progress = tmp_path / "progress"
    proc = start([*args, "--progress-file", str(progress)], tmp_path, "in-cluster")
    folder = Folder(str(ckpt))

    def a_whole_epoch_checkpointed() -> bool:
        names = folder.checkpoints()
        try:
            return bool(names) and decode((ckpt / names[0]).read_bytes()).epochs_done >= 1
        except FileNotFoundError:  # pruned meanwhile
            return False

    # The server task's progress reaches the driver as it trains, through its progress file.
    def ready() -> bool:
        return proc.poll() is not None or (a_whole_epoch_checkpointed() and commits_so_far(progress) > 0)

    wait_for(ready, 300, "a checkpoint and progress")
    assert proc.poll() is None, "the run ended before a worker could be killed"
    kill_busiest_worker(proc.pid)  # a worker or the server's task: either fails the barrier stage
    report = finish(proc, tmp_path, "in-cluster")
    assert report["retried_workers"] == [0, 1]  # the whole stage ran again
    # The retried stage's server started from the newest checkpoint: its clock, not 0, and the
    # epochs that checkpoint held whole were not trained again.
    restored_epochs = 12 - report["samples"] // 80_000
    assert report["samples"] % 80_000 == 0 and restored_epochs >= 1
    assert report["clock"] - report["commits"] > 0
    assert report["test_accuracy"] > 0.5
    assert folder.latest().epochs_done == 12
