"""A real punchcard daemon on a loopback port, in a child process, and the fixtures the punchcard
tests share. conftest.py loads this module as a plugin (`pytest_plugins`): a test module asks for
`model_file` or `daemon` by name and imports only the helpers it calls."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from distkeras_plus.punchcard import users
from distkeras_plus.punchcard.store import Store

TESTS = Path(__file__).resolve().parent
FINAL = {"succeeded", "failed", "cancelled"}
_STARTED: list[Daemon] = []


@pytest.fixture(autouse=True)
def stop_daemons() -> Iterator[None]:
    """Daemons a test started go when it ends, pass or fail (in a test that starts none, nothing)."""
    before = len(_STARTED)
    yield
    while len(_STARTED) > before:
        _STARTED.pop().stop()


@pytest.fixture(scope="session")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small saved Keras model to upload. The daemon only checks that Keras loads it in safe
    mode and the stub hands it back as the trained model: its shape is never looked at."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    path = tmp_path_factory.mktemp("model") / "m.keras"
    keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)]).save(path)
    return path


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One stub daemon for the test module, with `--kill-grace=2`."""
    d = stub_daemon(tmp_path_factory.mktemp("punchcard"), "--kill-grace=2")
    yield d
    d.stop()


def stub_python(folder: Path) -> Path:
    """An executable that the daemon runs as its `--python`: the stub instead of `dk train`."""
    path = folder / "stub-python"
    path.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        f"sys.path.insert(0, {str(TESTS)!r})\n"
        "import punchcard_stub\n"
        "sys.exit(punchcard_stub.main(sys.argv[1:]))\n"
    )
    path.chmod(0o755)
    return path


class Daemon:
    """`dk punchcard serve` on 127.0.0.1 and a port the kernel picks."""

    def __init__(self, state: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.state = state
        self.log = state.parent / f"{state.name}-daemon.log"
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-P",  # the installed package, not the checkout's (which has no compiled core)
                    "-m",
                    "distkeras_plus",
                    "punchcard",
                    "serve",
                    "--port=0",
                    f"--state-dir={state}",
                    "--output-format=json",
                    "--no-access-log",
                    *args,
                ],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env={**os.environ, **(env or {})},
            )
        _STARTED.append(self)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, self.log.read_text()
        self.info: dict[str, Any] = json.loads(line)
        self.url: str = self.info["url"]

    def add_user(self, name: str) -> str:
        store = Store(self.state / "punchcard.db")
        try:
            return users.add_user(store, name)
        finally:
            store.close()

    def store(self) -> Store:
        return Store(self.state / "punchcard.db")

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def stop(self) -> None:
        """SIGTERM, as an operator (or systemd) stops it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                raise

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to clean up."""
        self.proc.kill()
        self.proc.wait(timeout=30)

    def running_pid(self, job_id: str, timeout: float = 30) -> int:
        """The job's child, from the store (so also once the daemon is gone): the daemon records
        it just after marking the job running."""
        store = self.store()
        deadline = time.monotonic() + timeout
        try:
            while (job := store.get(job_id)) is not None and job.pid is None and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            store.close()
        assert job is not None and job.pid is not None
        return job.pid

    def stub_children(self, job_id: str, timeout: float = 30) -> list[int]:
        """The pids a stub job run with seed 2 writes once it has started its grandchildren: its
        own first, then theirs."""
        path = self.state / "jobs" / job_id / "children.json"
        deadline = time.monotonic() + timeout
        while True:
            text = path.read_text() if path.exists() else ""
            if text.endswith("]"):  # all of it written
                pids: list[int] = json.loads(text)
                return pids
            assert time.monotonic() < deadline, f"job {job_id} has written no {path.name}"
            time.sleep(0.05)


def stub_daemon(folder: Path, *args: str, env: dict[str, str] | None = None) -> Daemon:
    """A daemon whose jobs run the stub (`stub_python(folder)`), its state in `folder / "state"`."""
    return Daemon(folder / "state", f"--python={stub_python(folder)}", *args, env=env)


def submit(
    client: httpx.Client, spec: dict[str, Any], model: Path, filename: str = "model.keras"
) -> httpx.Response:
    with model.open("rb") as f:
        return client.post("/jobs", data={"spec": json.dumps(spec)}, files={"model": (filename, f)})


def wait_for(client: httpx.Client, job_id: str, states: set[str] = FINAL, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/jobs/{job_id}").json()
        if job["state"] in states:
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job['state']}: {job}"
        time.sleep(0.1)
