"""The queue: runs queued jobs as `dk train` children, at most `max_concurrent` at a time.

Each child leads a process session of its own (`start_new_session=True`), so cancelling a job
can stop everything it started, the Spark JVM included. Its stdout and stderr share one pipe
that passes through here on the way to the job's log: the log keeps the order in which things
were written, and the one JSON report `dk train --output-format json` prints at the end is
caught on the way, without parsing the log afterwards.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from distkeras_plus.punchcard import procs
from distkeras_plus.punchcard.spec import SETTINGS, JobSpec, train_args
from distkeras_plus.punchcard.store import Job, Store

log = logging.getLogger("distkeras_plus.punchcard")

# Files of a job, in STATE/jobs/<id>/; none of these names comes from a user.
MODEL, OUTPUT, LOG, PROGRESS, HISTORY, SPEC = (
    "model.keras",
    "output.keras",
    "log.txt",
    "progress.jsonl",
    "history.json",
    "spec.json",
)


@dataclass
class _Running:
    proc: subprocess.Popen[bytes]
    log: BinaryIO
    start: int
    stopping: threading.Event = field(default_factory=threading.Event)
    overran: bool = False  # stopped for running longer than max_job_seconds


class Runner:
    def __init__(
        self,
        store: Store,
        jobs_dir: Path,
        max_concurrent: int = 1,
        master: str | None = None,
        kill_grace: float = 10.0,
        python: str = sys.executable,
        max_job_seconds: float | None = None,
        keep_days: float | None = None,
        remote: str | None = None,
    ) -> None:
        self.store, self.jobs_dir, self.max_concurrent = store, jobs_dir, max_concurrent
        self.remote = remote
        self.master, self.kill_grace, self.python = master, kill_grace, python
        self.max_job_seconds, self.keep_days = max_job_seconds, keep_days
        self._next_sweep = 0.0  # time.monotonic() of the next removal of old job folders: now
        self._running: dict[str, _Running] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="punchcard-queue", daemon=True)

    def job_dir(self, job_id: str) -> Path:
        return self.jobs_dir / job_id

    # Start-up and shut-down

    def recover(self, requeue: bool) -> list[str]:
        """Deals with what a previous daemon left running: its processes are stopped, and each
        job is failed with the reason, re-queued (`requeue`), or cancelled if that was asked."""
        handled = []
        for job in self.store.interrupted():
            if job.pid is not None:
                stopped = procs.stop_left_behind(job.pid, job.pid_start, job.boot_id, self.kill_grace)
                if stopped:
                    log.warning("job %s: stopped %d processes left by the previous daemon", job.id, stopped)
            note = "the daemon stopped while this job was running"
            if job.cancel_requested:
                self.store.finish(job.id, "cancelled", f"cancelled; {note}")
            elif requeue:
                self.store.requeue(job.id)
                self._append_log(job.id, f"\n--- punchcard: {note}; queued again ---\n")
            else:
                self.store.finish(
                    job.id,
                    "failed",
                    f"{note}; submit it again (or start the daemon with --requeue-interrupted)",
                )
            handled.append(job.id)
        return handled

    def start(self) -> None:
        self._thread.start()

    def shutdown(self) -> None:
        """Stops the queue and every running child; their jobs stay marked running, and the next
        daemon deals with them like after a crash (see `recover`)."""
        self._stop.set()
        self._wake.set()
        self._thread.join()
        with self._lock:
            running = list(self._running.items())
        for job_id, r in running:
            r.stopping.set()
            procs.stop_session(r.proc.pid, self.kill_grace, r.start)
            log.info("job %s: stopped with the daemon", job_id)

    def wake(self) -> None:
        self._wake.set()

    def running(self) -> int:
        with self._lock:
            return len(self._running)

    # The queue

    SWEEP_INTERVAL = 3600.0  # seconds between removals of old job folders

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            if self.keep_days is not None and time.monotonic() >= self._next_sweep:
                self._next_sweep = time.monotonic() + self.SWEEP_INTERVAL
                try:
                    self.remove_old(self.keep_days)
                except Exception:
                    log.exception("removing old job folders failed; trying again in an hour")
            try:
                while not self._stop.is_set() and self.running() < self.max_concurrent:
                    job = self.store.claim_next()
                    if job is None:
                        break
                    self._launch(job)
            except Exception:
                log.exception("the job queue failed; retrying in a second")

    def _launch(self, job: Job) -> None:
        folder = self.job_dir(job.id)
        try:
            # A spec stored by an older daemon may give null for "the default".
            spec = JobSpec.model_validate({k: v for k, v in job.spec.items() if v is not None})
            args = train_args(spec, folder, folder / MODEL, self.master, self.python, self.remote)
            (folder / SETTINGS).write_text("# dk train settings: none beyond the command line\n")
            out = (folder / LOG).open("ab")
        except Exception as e:
            self.store.finish(job.id, "failed", f"the job could not start: {e}")
            return
        out.write(f"--- punchcard: starting job {job.id} (attempt {job.attempts}) ---\n".encode())
        out.flush()
        env = child_env(os.environ)
        try:
            proc = subprocess.Popen(  # noqa: S603 - an argument list, no shell; values checked
                args,
                cwd=folder,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own session: see stop_session
            )
        except OSError as e:
            out.close()
            self.store.finish(job.id, "failed", f"the training process could not start: {e}")
            return
        me = procs.stat(proc.pid)
        self.store.set_process(job.id, proc.pid, None if me is None else me.start, procs.boot_id())
        running = _Running(proc, out, 0 if me is None else me.start)
        with self._lock:
            self._running[job.id] = running
        latest = self.store.get(job.id)
        if latest is not None and latest.cancel_requested:  # cancelled between claim and start
            threading.Thread(
                target=procs.stop_session, args=(proc.pid, self.kill_grace, running.start)
            ).start()
        threading.Thread(target=self._watch, args=(job.id, running), name=f"job-{job.id[:8]}").start()
        log.info("job %s: started (pid %d)", job.id, proc.pid)

    def _watch(self, job_id: str, r: _Running) -> None:
        reports: list[dict[str, Any]] = []
        pump = threading.Thread(target=_pump, args=(r, reports), name=f"job-{job_id[:8]}-out")
        pump.start()
        try:
            try:
                code = r.proc.wait(self.max_job_seconds)
            except subprocess.TimeoutExpired:
                r.overran = True
                log.info("job %s: ran longer than %g s; stopping it", job_id, self.max_job_seconds)
                procs.stop_session(r.proc.pid, self.kill_grace, not_before=r.start)
                code = r.proc.wait()
            # Whatever the child left behind in its session (a JVM slow to exit) goes with it;
            # those processes may hold the stdout pipe, so this comes before waiting for EOF.
            procs.stop_session(r.proc.pid, self.kill_grace, not_before=r.start)
            pump.join()
        finally:
            with self._lock:
                self._running.pop(job_id, None)
        if r.stopping.is_set():
            return  # the daemon is shutting down: the next one recovers the job
        self._finish(job_id, code, reports[-1] if reports else None, r.overran)
        self._wake.set()

    def _finish(self, job_id: str, code: int, report: dict[str, Any] | None, overran: bool) -> None:
        job = self.store.get(job_id)
        if job is None:
            return
        if job.cancel_requested:
            self.store.finish(job_id, "cancelled", "cancelled while running", code)
        elif overran:
            self.store.finish(
                job_id, "failed", f"ran longer than --max-job-seconds {self.max_job_seconds:g}", code
            )
        elif code == 0 and report is not None and (self.job_dir(job_id) / OUTPUT).is_file():
            report.pop("model_path", None)  # a path on the daemon's machine; clients use /result
            self.store.finish(job_id, "succeeded", None, code, report)
        elif code == 0:
            self.store.finish(job_id, "failed", "training ended without a model or a report", code)
        else:
            how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
            last = _last_line(self.job_dir(job_id) / LOG)
            self.store.finish(job_id, "failed", f"training {how}" + (f": {last}" if last else ""), code)
        log.info("job %s: finished with status %d", job_id, code)

    def remove_old(self, keep_days: float) -> list[str]:
        """Removes the folders of jobs that finished more than `keep_days` ago; their rows stay,
        marked `files_removed`. Returns their ids."""
        removed = []
        for job in self.store.expired(time.time() - keep_days * 86400):
            try:
                shutil.rmtree(self.job_dir(job.id))
            except FileNotFoundError:
                pass
            except OSError as e:
                log.warning("job %s: its folder could not be removed: %s", job.id, e)
                continue
            self.store.files_removed(job.id)
            removed.append(job.id)
        if removed:
            log.info("removed the folders of %d jobs finished more than %g days ago", len(removed), keep_days)
        return removed

    def cancel(self, job_id: str, by: str) -> str | None:
        """Cancels a job of any state; returns the state it was in (None: no such job).

        A queued job is cancelled at once; a running one is stopped in the background (SIGTERM to
        its session, SIGKILL after the grace period) and is cancelled when its child has exited."""
        was = self.store.request_cancel(job_id, by)
        if was == "running":
            with self._lock:
                r = self._running.get(job_id)
            if r is not None:
                threading.Thread(
                    target=procs.stop_session, args=(r.proc.pid, self.kill_grace, r.start), daemon=True
                ).start()
        return was

    def _append_log(self, job_id: str, text: str) -> None:
        try:
            with (self.job_dir(job_id) / LOG).open("ab") as f:
                f.write(text.encode())
        except OSError:
            pass


# DK_* variables set `dk train` options: the daemon's own shell must not change users' runs.
# These few are about the installation, not the run, and do pass.
PASSED_DK_VARIABLES = frozenset({"DK_LOAD_PLUGINS", "DK_DISABLE_PLUGINS", "DK_DATA_DIR"})


def child_env(env: Mapping[str, str]) -> dict[str, str]:
    kept = {k: v for k, v in env.items() if not k.startswith("DK_") or k in PASSED_DK_VARIABLES}
    return {**kept, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}


def _pump(r: _Running, reports: list[dict[str, Any]]) -> None:
    """Copies the child's output to its log as it comes, keeping the JSON report when it passes."""
    assert r.proc.stdout is not None
    fd = r.proc.stdout.fileno()
    line = b""
    try:
        while chunk := os.read(fd, 1 << 16):
            r.log.write(chunk)
            r.log.flush()
            *complete, line = (line + chunk).split(b"\n")
            reports.extend(report for report in map(_report, complete) if report is not None)
            line = line[-(1 << 20) :]  # a line without end is not the report: bound what is kept
    finally:
        r.proc.stdout.close()
        r.log.close()


def _report(line: bytes) -> dict[str, Any] | None:
    """The JSON object `dk train --output-format json` prints, if this line is it."""
    if not line.lstrip().startswith(b"{"):
        return None
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) and "test_accuracy" in value else None


def _last_line(path: Path, tail: int = 4096) -> str:
    """The last non-blank line of a log (often the one-line error `dk train` ends with)."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - tail))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [x.strip() for x in text.splitlines() if x.strip() and not x.startswith("--- punchcard")]
    return lines[-1][:300] if lines else ""


def progress(folder: Path, tail: int = 8192) -> dict[str, Any] | None:
    """The last complete line of the job's progress file, read from its end (the file grows)."""
    try:
        with (folder / PROGRESS).open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - tail))
            lines = f.read().split(b"\n")
    except OSError:
        return None
    for line in reversed(lines[:-1] if len(lines) > 1 else lines):  # the last may be half written
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None
