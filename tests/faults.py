"""Finding and killing the processes of a running `dk train`, for the fault tests."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, CPU ticks used) of a live process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), int(fields[11]) + int(fields[12])


def descendants(root: int) -> list[int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None:
            parents[int(entry.name)] = st[0]
    found, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        children = [p for p, parent in parents.items() if parent == pid]
        found += children
        frontier += children
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def python_workers(root: int) -> list[int]:
    """The Python worker processes Spark forked under `root` (children of a `pyspark.daemon`)."""
    pids = descendants(root)
    # A forked worker has the daemon's command line; its parent tells them apart.
    spark = {p for p in pids if "pyspark.daemon" in _cmdline(p)}
    return [p for p in spark if (st := _stat(p)) is not None and st[0] in spark]


def kill_busiest_worker(root: int) -> int:
    """SIGKILLs the Python worker that has used the most CPU: one that is training."""
    workers = python_workers(root)
    assert workers, "no Python workers found"
    busiest = max(workers, key=lambda p: (_stat(p) or (0, 0))[1])
    os.kill(busiest, signal.SIGKILL)
    return busiest


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"waited {timeout:.0f} s for {what}")


def commits_so_far(progress: Path) -> int:
    """The latest commit count in a `--progress-file`."""
    if not progress.exists():
        return 0
    lines = progress.read_text().splitlines()
    return int(json.loads(lines[-1])["commits"]) if lines else 0
