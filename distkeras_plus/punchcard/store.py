"""The job store: one SQLite file in the state folder.

Every change is committed before the daemon acts on it (a job row exists before its child
starts), so a daemon that dies loses nothing it has answered for. One connection behind a lock:
statements take microseconds, and SQLite serialises writers anyway.
"""

from __future__ import annotations

import hmac
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from distkeras_plus.errors import UserExistsError

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL = frozenset({"succeeded", "failed", "cancelled"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    spec TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    pid INTEGER,
    pid_start INTEGER,
    boot_id TEXT,
    exit_code INTEGER,
    reason TEXT,
    result TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, seq);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, seq);
"""

# Schema changes since _SCHEMA, in order: a database at version N (`PRAGMA user_version`) gets
# the ones after N. Old databases and new ones go through the same steps.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: a retried submission finds its job by its key; job folders removed after --keep-days.
    (
        "ALTER TABLE jobs ADD COLUMN idempotency_key TEXT",
        "ALTER TABLE jobs ADD COLUMN files_removed REAL",
        # NULLs are distinct in a UNIQUE index: jobs submitted without a key never clash.
        "CREATE UNIQUE INDEX jobs_key ON jobs (owner, idempotency_key)",
    ),
)

T = TypeVar("T")


class QueueFull(Exception):
    """The owner already has `limit` queued jobs."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"you have {limit} jobs queued; wait or cancel some")
        self.limit = limit


@dataclass(frozen=True)
class Job:
    """One row of the jobs table."""

    seq: int
    id: str
    owner: str
    name: str
    state: str
    spec: dict[str, Any]
    created: float
    started: float | None
    finished: float | None
    pid: int | None
    pid_start: int | None
    boot_id: str | None
    exit_code: int | None
    reason: str | None
    result: dict[str, Any] | None
    cancel_requested: bool
    attempts: int
    idempotency_key: str | None
    files_removed: float | None  # when --keep-days removed the job's folder

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        values = dict(row)
        values["spec"] = json.loads(values["spec"])
        values["result"] = None if values["result"] is None else json.loads(values["result"])
        values["cancel_requested"] = bool(values["cancel_requested"])
        return cls(**values)


@dataclass(frozen=True)
class User:
    name: str
    created: float
    jobs: int


class Store:
    """Users and jobs. Safe to share between threads; other processes (`dk punchcard add-user`
    while the daemon runs) may use the same file at the same time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        existed = path.exists()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        if not existed:
            path.chmod(0o600)  # token hashes and job specs are nobody else's business
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")  # readers do not wait for the writer
            self._db.execute("PRAGMA synchronous=FULL")  # a committed job survives a power cut
            self._db.executescript(_SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        with self._tx() as db:  # IMMEDIATE: another process opening the file migrates once, not twice
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            for statements in _MIGRATIONS[version:]:
                for statement in statements:
                    db.execute(statement)
            if version < len(_MIGRATIONS):
                db.execute(f"PRAGMA user_version = {len(_MIGRATIONS)}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction under the lock; IMMEDIATE so a read-then-write cannot be overtaken."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # Users

    def add_user(self, name: str, token_hash: str) -> None:
        try:
            with self._tx() as db:
                db.execute(
                    "INSERT INTO users (name, token_hash, created) VALUES (?, ?, ?)",
                    (name, token_hash, time.time()),
                )
        except sqlite3.IntegrityError:
            raise UserExistsError(f"user {name!r} exists; remove it first to issue a new token") from None

    def remove_user(self, name: str) -> bool:
        with self._tx() as db:
            return db.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount == 1

    def users(self) -> list[User]:
        with self._lock:
            rows = self._db.execute(
                "SELECT u.name, u.created, COUNT(j.id) AS jobs FROM users u "
                "LEFT JOIN jobs j ON j.owner = u.name GROUP BY u.name ORDER BY u.name"
            ).fetchall()
        return [User(r["name"], r["created"], r["jobs"]) for r in rows]

    def user_for_hash(self, token_hash: str) -> str | None:
        """The user whose token hashes to `token_hash`; every stored hash is compared in constant time."""
        with self._lock:
            rows = self._db.execute("SELECT name, token_hash FROM users").fetchall()
        found = None
        for row in rows:  # no early exit: the time taken does not depend on which one matched
            if hmac.compare_digest(row["token_hash"], token_hash):
                found = row["name"]
        return found

    # Jobs

    def add_job(
        self,
        job_id: str,
        owner: str,
        name: str,
        spec: dict[str, Any],
        answer: Callable[[Job, int | None], T],
        key: str | None = None,
        max_queued: int | None = None,
    ) -> tuple[T, bool]:
        """Queues a job and returns `answer(job, queue position)`, made inside the transaction:
        if it fails, nothing was stored. With a `key` the owner has used before, nothing is added
        and the answer is about that earlier job (and False). QueueFull when the owner already
        has `max_queued` queued jobs: checked in the same transaction as the insert."""
        text = json.dumps(spec, allow_nan=False)  # NaN is not JSON: refused before anything is stored
        with self._tx() as db:
            if key is not None:
                row = db.execute(
                    "SELECT id FROM jobs WHERE owner = ? AND idempotency_key = ?", (owner, key)
                ).fetchone()
                if row is not None:
                    return answer(self._must(db, row["id"]), self._position(db, row["id"])), False
            if max_queued is not None:
                queued = db.execute(
                    "SELECT COUNT(*) FROM jobs WHERE owner = ? AND state = 'queued'", (owner,)
                ).fetchone()[0]
                if queued >= max_queued:
                    raise QueueFull(max_queued)
            db.execute(
                "INSERT INTO jobs (id, owner, name, state, spec, created, idempotency_key) "
                "VALUES (?, ?, ?, 'queued', ?, ?, ?)",
                (job_id, owner, name, text, time.time(), key),
            )
            return answer(self._must(db, job_id), self._position(db, job_id)), True

    def by_key(self, owner: str, key: str) -> Job | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM jobs WHERE owner = ? AND idempotency_key = ?", (owner, key)
            ).fetchone()
        return None if row is None else Job.from_row(row)

    @staticmethod
    def _position(db: sqlite3.Connection, job_id: str) -> int | None:
        row = db.execute(
            "SELECT COUNT(*) FROM jobs WHERE state = 'queued' AND seq <= "
            "(SELECT seq FROM jobs WHERE id = ? AND state = 'queued')",
            (job_id,),
        ).fetchone()
        return int(row[0]) or None

    def get(self, job_id: str, owner: str | None = None) -> Job | None:
        """The job, or None when it does not exist or belongs to someone else (callers cannot tell)."""
        with self._lock:
            job = self._get(self._db, job_id)
        return None if job is None or (owner is not None and job.owner != owner) else job

    @staticmethod
    def _get(db: sqlite3.Connection, job_id: str) -> Job | None:
        row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else Job.from_row(row)

    @classmethod
    def _must(cls, db: sqlite3.Connection, job_id: str) -> Job:
        job = cls._get(db, job_id)
        assert job is not None
        return job

    def jobs(self, owner: str | None = None, state: str | None = None, limit: int = 1000) -> list[Job]:
        """Newest first."""
        where, args = [], []
        if owner is not None:
            where.append("owner = ?")
            args.append(owner)
        if state is not None:
            where.append("state = ?")
            args.append(state)
        # Only fixed fragments are joined; the values are bound parameters.
        sql = "SELECT * FROM jobs" + (" WHERE " + " AND ".join(where) if where else "")  # noqa: S608
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY seq DESC LIMIT ?", (*args, limit)).fetchall()
        return [Job.from_row(r) for r in rows]

    def queue_positions(self) -> dict[str, int]:
        """Queued job id -> place in the queue (1 is next)."""
        with self._lock:
            rows = self._db.execute("SELECT id FROM jobs WHERE state = 'queued' ORDER BY seq").fetchall()
        return {r["id"]: i for i, r in enumerate(rows, 1)}

    def count(self, owner: str, state: str) -> int:
        with self._lock:
            row = self._db.execute(
                "SELECT COUNT(*) FROM jobs WHERE owner = ? AND state = ?", (owner, state)
            ).fetchone()
        return int(row[0])

    def claim_next(self) -> Job | None:
        """The oldest queued job, now marked running (the caller starts it)."""
        with self._tx() as db:
            row = db.execute("SELECT id FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1").fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET state = 'running', started = ?, attempts = attempts + 1 WHERE id = ?",
                (time.time(), row["id"]),
            )
            return self._must(db, row["id"])

    def set_process(self, job_id: str, pid: int, pid_start: int | None, boot_id: str | None) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET pid = ?, pid_start = ?, boot_id = ? WHERE id = ?",
                (pid, pid_start, boot_id, job_id),
            )

    def finish(
        self,
        job_id: str,
        state: str,
        reason: str | None = None,
        exit_code: int | None = None,
        result: dict[str, Any] | None = None,
    ) -> bool:
        """Moves a queued or running job to a final state; False when it already was in one."""
        assert state in FINAL
        with self._tx() as db:
            return (
                db.execute(
                    "UPDATE jobs SET state = ?, reason = ?, exit_code = ?, result = ?, finished = ? "
                    "WHERE id = ? AND state IN ('queued', 'running')",
                    (
                        state,
                        reason,
                        exit_code,
                        None if result is None else json.dumps(result),
                        time.time(),
                        job_id,
                    ),
                ).rowcount
                == 1
            )

    def request_cancel(self, job_id: str, by: str) -> str | None:
        """Cancels a queued job at once, or flags a running one; returns the state it was in."""
        with self._tx() as db:
            job = self._get(db, job_id)
            if job is None:
                return None
            if job.state == "queued":
                db.execute(
                    "UPDATE jobs SET state = 'cancelled', reason = ?, finished = ? WHERE id = ?",
                    (f"cancelled by {by} while queued", time.time(), job_id),
                )
            elif job.state == "running":
                db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
            return str(job.state)

    def interrupted(self) -> list[Job]:
        """Jobs marked running: at start-up, the ones a previous daemon left behind."""
        return self.jobs(state="running", limit=1_000_000)

    def requeue(self, job_id: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET state = 'queued', started = NULL, pid = NULL, pid_start = NULL, "
                "boot_id = NULL WHERE id = ? AND state = 'running'",
                (job_id,),
            )

    def expired(self, before: float) -> list[Job]:
        """Finished jobs that ended before `before` and still have their folder."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE state IN ('succeeded', 'failed', 'cancelled') "
                "AND finished < ? AND files_removed IS NULL ORDER BY seq",
                (before,),
            ).fetchall()
        return [Job.from_row(r) for r in rows]

    def files_removed(self, job_id: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE jobs SET files_removed = ? WHERE id = ?", (time.time(), job_id))

    def ids(self) -> set[str]:
        with self._lock:
            return {r["id"] for r in self._db.execute("SELECT id FROM jobs").fetchall()}
