"""Process sessions on Linux: a job's child leads a session of its own, and everything it starts
(the Spark JVM, PySpark's daemon, which moves to a process group of its own) stays in it.
Stopping a job means stopping every process of that session, not only the child."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class Proc:
    pid: int
    state: str
    session: int
    start: int  # clock ticks after boot: with the pid, names a process even after pid reuse


def stat(pid: int) -> Proc | None:
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    return Proc(pid, fields[0], int(fields[3]), int(fields[19]))


def boot_id() -> str | None:
    try:
        return (PROC / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def session_members(session: int) -> list[Proc]:
    """Live processes of a session (zombies are dead: they only wait to be reaped)."""
    members = []
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            p = stat(int(entry.name))
            if p is not None and p.session == session and p.state != "Z":
                members.append(p)
    return members


def _signal_all(members: list[Proc], sig: signal.Signals) -> None:
    for p in members:
        try:
            os.kill(p.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def stop_session(session: int, grace: float, not_before: int = 0) -> int:
    """SIGTERM to every process of `session`, SIGKILL to those still there after `grace` seconds.

    `not_before` skips processes started before the session's leader (a reused id cannot make us
    kill something older). Returns how many processes were signalled."""

    def members() -> list[Proc]:
        return [p for p in session_members(session) if p.start >= not_before]

    first = members()
    _signal_all(first, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not members():
            return len(first)
        time.sleep(0.1)
    _signal_all(members(), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while members() and time.monotonic() < deadline:
        time.sleep(0.05)
    return len(first)


def stop_left_behind(pid: int, pid_start: int | None, boot: str | None, grace: float) -> int:
    """Stops the session of a job child that a previous daemon started, if it is still that one."""
    if pid_start is None or boot is None or boot != boot_id():
        return 0  # another boot: every process of that run is gone
    leader = stat(pid)
    if leader is not None and leader.start != pid_start:
        return 0  # the id now names another process, and so another session
    return stop_session(pid, grace, not_before=pid_start)
