"""Punchcard's queue under a restart and under load: nothing submitted is ever lost."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from punchcard_daemon import Daemon, stub_daemon, submit, wait_for

from distkeras_plus.punchcard import procs


@pytest.mark.parametrize("requeue", [False, True])
def test_a_restart_in_the_middle_of_a_queue_loses_nothing(
    tmp_path: Path, model_file: Path, requeue: bool
) -> None:
    data = str(tmp_path)
    daemon = stub_daemon(tmp_path, "--kill-grace=2")
    token = daemon.add_user("alice")
    with daemon.client(token) as c:
        done = wait_for(c, submit(c, {"data": data, "epochs": 1}, model_file).json()["id"])["id"]
        # A job that runs until it is stopped, and four queued behind it.
        running = submit(c, {"data": data, "seed": 2, "name": "long"}, model_file).json()["id"]
        queued = [
            submit(c, {"data": data, "epochs": 2, "name": f"q{i}"}, model_file).json()["id"] for i in range(4)
        ]
        cancelled = submit(c, {"data": data}, model_file).json()["id"]
        c.post(f"/jobs/{cancelled}/cancel")
        wait_for(c, running, {"running"})
        orphans = daemon.stub_children(running)
        assert [j["state"] for j in c.get("/jobs").json()["jobs"]][:5] == ["cancelled", *["queued"] * 4]

    daemon.kill()  # no clean-up: the job's processes outlive the daemon
    assert procs.stat(orphans[0]) is not None
    assert daemon.running_pid(running) == orphans[0]

    args = ["--requeue-interrupted"] if requeue else []
    again = stub_daemon(tmp_path, "--kill-grace=2", *args)
    try:
        assert again.info["recovered_jobs"] == [running]
        # The new daemon stopped every process the old one had left running.
        assert procs.session_members(orphans[0]) == []
        with again.client(token) as c:
            listed = {j["id"]: j for j in c.get("/jobs").json()["jobs"]}
            assert set(listed) == {done, running, cancelled, *queued}
            assert listed[done]["state"] == "succeeded" and listed[done]["result"]["test_accuracy"] == 0.75
            assert c.get(f"/jobs/{done}/result").content == model_file.read_bytes()
            assert listed[cancelled]["state"] == "cancelled"
            if requeue:
                # First in the queue again: it runs a second time (and is cancelled, or it would
                # hold the queue forever).
                job = wait_for(c, running, {"running"})
                assert job["attempts"] == 2
                c.post(f"/jobs/{running}/cancel")
                assert wait_for(c, running)["state"] == "cancelled"
                log = c.get(f"/jobs/{running}/logs").json()["text"]
                assert "the daemon stopped while this job was running; queued again" in log
                assert "starting job" in log.split("queued again")[1]
            else:
                job = listed[running]
                assert job["state"] == "failed" and job["reason"] == (
                    "the daemon stopped while this job was running; "
                    "submit it again (or start the daemon with --requeue-interrupted)"
                )
            for job_id in queued:
                job = wait_for(c, job_id, timeout=60)
                assert job["state"] == "succeeded" and job["attempts"] == 1
    finally:
        again.stop()


def test_a_clean_stop_stops_the_jobs_too(tmp_path: Path, model_file: Path) -> None:
    daemon = stub_daemon(tmp_path, "--kill-grace=2")
    token = daemon.add_user("alice")
    with daemon.client(token) as c:
        job_id = submit(c, {"data": str(tmp_path), "seed": 2}, model_file).json()["id"]
        wait_for(c, job_id, {"running"})
    pid = daemon.running_pid(job_id)
    daemon.stop()
    assert procs.session_members(pid) == []
    again = stub_daemon(tmp_path)
    try:
        with again.client(token) as c:
            assert c.get(f"/jobs/{job_id}").json()["state"] == "failed"
    finally:
        again.stop()


def test_one_daemon_per_state_folder(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path / "state")
    try:
        second = subprocess.run(
            [
                sys.executable,
                "-P",
                "-m",
                "distkeras_plus",
                "punchcard",
                "serve",
                "--port=0",
                f"--state-dir={tmp_path / 'state'}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 2
        assert (
            second.stderr.strip()
            == f"Error: another punchcard daemon (pid {daemon.proc.pid}) serves {tmp_path / 'state'}"
        )
        assert daemon.client().get("/health").status_code == 200
    finally:
        daemon.stop()


def test_load_status_requests_and_queued_submissions(tmp_path: Path, model_file: Path) -> None:
    """Dozens of submissions and hundreds of concurrent status requests: all answered, no job lost."""
    submissions, status_requests, concurrency = 40, 600, 64
    # All clients are on 127.0.0.1: one address, so its connection limit is raised.
    daemon = stub_daemon(
        tmp_path, "--max-concurrent-jobs=2", f"--max-connections-per-client={4 * concurrency}"
    )
    tokens = [daemon.add_user(f"user{i}") for i in range(4)]
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    clients = [
        httpx.Client(
            base_url=daemon.url, headers={"Authorization": f"Bearer {t}"}, limits=limits, timeout=120
        )
        for t in tokens
    ]
    try:
        with clients[0] as warm:  # TensorFlow's start-up in the model checker is not what is measured
            first = submit(warm, {"data": str(tmp_path), "epochs": 1}, model_file)
        clients[0] = httpx.Client(
            base_url=daemon.url, headers={"Authorization": f"Bearer {tokens[0]}"}, limits=limits, timeout=120
        )
        ids: dict[str, list[str]] = {t: [] for t in tokens}
        ids[tokens[0]].append(first.json()["id"])
        lock = threading.Lock()

        def submit_one(i: int) -> float:
            client = clients[i % len(clients)]
            start = time.perf_counter()
            r = submit(client, {"data": str(tmp_path), "epochs": 1, "name": f"load-{i}"}, model_file)
            took = time.perf_counter() - start
            assert r.status_code == 201, r.text
            with lock:
                ids[tokens[i % len(tokens)]].append(r.json()["id"])
            return took

        def status_one(i: int) -> float:
            client = clients[i % len(clients)]
            with lock:
                mine = ids[tokens[i % len(tokens)]]
                job_id = mine[i % len(mine)] if mine else None
            start = time.perf_counter()
            r = client.get(f"/jobs/{job_id}" if job_id else "/jobs")
            took = time.perf_counter() - start
            assert r.status_code == 200, r.text
            return took

        start = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            submit_futures = [pool.submit(submit_one, i) for i in range(submissions)]
            status_futures = [pool.submit(status_one, i) for i in range(status_requests)]
            submit_times = [f.result() for f in submit_futures]
            status_times = [f.result() for f in status_futures]
        elapsed = time.perf_counter() - start

        # Every job is listed by its owner and only by its owner, and every one of them runs.
        for token, client in zip(tokens, clients, strict=True):
            listed = [j["id"] for j in client.get("/jobs").json()["jobs"]]
            assert sorted(listed) == sorted(ids[token])
        deadline = time.monotonic() + 240
        for token, client in zip(tokens, clients, strict=True):
            for job_id in ids[token]:
                job = wait_for(client, job_id, timeout=max(1, deadline - time.monotonic()))
                assert job["state"] == "succeeded", job
        total = time.perf_counter() - start
        figures: dict[str, Any] = {
            "submissions": submissions + 1,
            "status_requests": status_requests,
            "concurrency": concurrency,
            "burst_seconds": round(elapsed, 2),
            "status_p50_ms": round(1000 * statistics.median(status_times), 1),
            "status_p99_ms": round(1000 * statistics.quantiles(status_times, n=100)[98], 1),
            "submit_p50_ms": round(1000 * statistics.median(submit_times), 1),
            "submit_max_ms": round(1000 * max(submit_times), 1),
            "all_jobs_done_seconds": round(total, 2),
        }
        print("punchcard load:", json.dumps(figures))
    finally:
        for client in clients:
            client.close()
        daemon.stop()
