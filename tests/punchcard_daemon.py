"""A real punchcard daemon on a loopback port, in a child process, for the punchcard tests."""

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
    """Imported by each punchcard test module: daemons a test started go when it ends, pass or fail."""
    before = len(_STARTED)
    yield
    while len(_STARTED) > before:
        _STARTED.pop().stop()


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
