"""Training through a real Spark standalone cluster: a master and two workers started from the
installed PySpark on 127.0.0.1, driven by the `dk` command (slow; CI runs it)."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faults import commits_so_far, kill_busiest_worker, wait_for

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"process exited with {proc.returncode}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"nothing listens on port {port}")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[str]:
    import pyspark

    home = Path(pyspark.__file__).parent
    env = {
        **os.environ,
        "SPARK_HOME": str(home),
        "SPARK_LOG_DIR": str(tmp_path),
        "PYSPARK_PYTHON": sys.executable,
    }
    spark_class = str(home / "bin" / "spark-class")
    port = free_port()
    master_url = f"spark://127.0.0.1:{port}"
    procs = []
    log = (tmp_path / "cluster.log").open("wb")
    try:
        master = subprocess.Popen(
            [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
             "--webui-port", str(free_port())],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        procs.append(master)
        wait_for_port(port, master)
        for i in range(2):
            worker_port = free_port()
            worker = subprocess.Popen(
                [spark_class, "org.apache.spark.deploy.worker.Worker", master_url, "--host", "127.0.0.1",
                 "--port", str(worker_port), "--webui-port", str(free_port()), "--cores", "1",
                 "--memory", "2g", "--work-dir", str(tmp_path / f"work{i}")],
                env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
            procs.append(worker)
            wait_for_port(worker_port, worker)
        yield master_url
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        log.close()


def test_adag_through_a_standalone_cluster(cluster: str, tmp_path: Path) -> None:
    dk = str(Path(sys.executable).parent / "dk")
    out = tmp_path / "model.keras"
    run = subprocess.run(
        [dk, "train", "--plugin", "adag", "--master", cluster, "--workers", "2", "--epochs", "3",
         "--output", str(out), "--output-format", "json"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PYSPARK_PYTHON": sys.executable},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)
    assert report["plugin"] == "adag" and report["workers"] == 2
    assert report["commits"] > 0 and report["bytes_received"] > 0
    assert report["test_accuracy"] > 0.7
    assert out.is_file()
    # The parameter server in a task of the stage: one worker and the server in the two slots.
    run = subprocess.run(
        [dk, "train", "--plugin", "adag", "--master", cluster, "--workers", "1", "--epochs", "3",
         "--ps-location", "executor", "--output", str(out), "--overwrite", "--output-format", "json"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PYSPARK_PYTHON": sys.executable},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)
    assert report["ps_location"] == "executor" and report["commits"] > 0
    assert report["test_accuracy"] > 0.7


def test_a_killed_worker_on_the_cluster_is_retried(cluster: str, tmp_path: Path) -> None:
    dk = str(Path(sys.executable).parent / "dk")
    progress = tmp_path / "progress"
    proc = subprocess.Popen(
        [dk, "train", "--plugin", "adag", "--master", cluster, "--workers", "2", "--epochs", "4",
         "--dataset", "synthetic:100000", "--output", str(tmp_path / "m.keras"), "--output-format", "json",
         "--progress-file", str(progress)],
        stdout=subprocess.PIPE, stderr=(tmp_path / "train.log").open("w"), text=True,
        env={**os.environ, "PYSPARK_PYTHON": sys.executable},
    )  # fmt: skip
    wait_for(lambda: commits_so_far(progress) >= 10 or proc.poll() is not None, 300, "the first commits")
    assert proc.poll() is None, "the run ended before a worker could be killed"
    kill_busiest_worker(os.getpid())  # the executors' Python workers descend from the cluster's Workers
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, (tmp_path / "train.log").read_text()[-3000:]
    report = json.loads(out)
    assert report["retried_workers"] and report["samples"] == 4 * 80_000
    assert report["commits"] == 2 * math.ceil(4 * 1250 / 12)  # no work committed twice
    assert report["test_accuracy"] > 0.5


@pytest.fixture
def connect_server(cluster: str, tmp_path: Path) -> Iterator[str]:
    """A Spark Connect server, started from the installed PySpark, whose application runs on the
    standalone cluster's executors."""
    import pyspark

    home = Path(pyspark.__file__).parent
    port = free_port()
    log = (tmp_path / "connect.log").open("wb")
    args = [
        str(home / "bin" / "spark-submit"),
        *("--class", "org.apache.spark.sql.connect.service.SparkConnectServer", "--master", cluster),
        *("--conf", f"spark.connect.grpc.binding.port={port}", "--conf", "spark.ui.enabled=false"),
        *("--conf", f"spark.pyspark.python={sys.executable}", "--conf", "spark.executorEnv.PYTHONSAFEPATH=1"),
    ]
    env = {**os.environ, "SPARK_HOME": str(home), "PYSPARK_PYTHON": sys.executable}
    server = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, server, timeout=120)
        yield f"sc://127.0.0.1:{port}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def test_a_connect_server_on_the_cluster_trains_with_the_server_in_a_task(
    connect_server: str, tmp_path: Path
) -> None:
    dk = str(Path(sys.executable).parent / "dk")

    def train(*args: str) -> dict[str, Any]:
        out = tmp_path / f"model-{len(list(tmp_path.glob('model-*')))}.keras"
        run = subprocess.run(
            [dk, "train", "--remote", connect_server, "--epochs", "3", "--output", str(out),
             "--output-format", "json", *args],
            capture_output=True, text=True, timeout=600, cwd=tmp_path,
        )  # fmt: skip
        assert run.returncode == 0 and run.stderr == "", run.stderr[-3000:]
        assert out.is_file()
        return json.loads(run.stdout)  # type: ignore[no-any-return]

    # The executors are not this client's: the parameter server goes into the training stage,
    # one worker and the server in the cluster's two slots.
    report = train("--workers", "1")
    assert report["ps_location"] == "executor" and report["commits"] > 0
    assert report["test_accuracy"] > 0.7
    # The server in the client, which the cluster's executors reach at the address given.
    report = train("--workers", "2", "--plugin", "averaging", "--ps-location=driver", "--ps-host=127.0.0.1")
    assert report["ps_location"] == "driver" and report["workers"] == 2
    assert report["test_accuracy"] > 0.7
