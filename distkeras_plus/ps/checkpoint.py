"""Checkpoints of a training run: the centre, its clock and the run's configuration, written by the
driver every N commits and/or T seconds, to a local folder or any Hadoop-compatible URI.

One checkpoint is one file, `ckpt-<clock>.dkc`:

    b"DKCK" | version u8 | 3 zero bytes | metadata length u32 | metadata (JSON)
    | centre (float32, little-endian) | SHA-256 of everything before it

A file is written beside its final name and renamed into place (after an fsync, locally), so a
crash while writing leaves the previous checkpoints whole; a file that is truncated or corrupt
anyway fails its checksum and is skipped for the one before it, with a warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from distkeras_plus.data import storage
from distkeras_plus.errors import CheckpointError

MAGIC = b"DKCK"
VERSION = 1
_HEAD = struct.Struct("<4sB3xI")
_NAME = re.compile(r"^ckpt-(\d{12})\.dkc$")


@dataclass(frozen=True)
class Checkpoint:
    """A centre at a clock, and what the run had done by then."""

    clock: int
    values: npt.NDArray[np.float32]
    meta: dict[str, Any]

    @property
    def config(self) -> dict[str, Any]:
        """The run's configuration, as the run that wrote it recorded it."""
        return dict(self.meta.get("config", {}))

    @property
    def epochs_done(self) -> int:
        """Whole epochs every worker has finished, from the samples they reported."""
        return int(self.meta.get("epochs_done", 0))


def encode(clock: int, values: npt.NDArray[np.float32], meta: dict[str, Any]) -> bytes:
    body = json.dumps({**meta, "clock": clock, "num_params": int(values.size)}).encode()
    data = _HEAD.pack(MAGIC, VERSION, len(body)) + body + np.ascontiguousarray(values, "<f4").tobytes()
    return data + hashlib.sha256(data).digest()


def decode(data: bytes, where: str = "checkpoint") -> Checkpoint:
    if len(data) < _HEAD.size + 32:
        raise CheckpointError(f"{where} is truncated ({len(data)} bytes)")
    if hashlib.sha256(data[:-32]).digest() != data[-32:]:
        raise CheckpointError(f"{where} is corrupt or truncated: its checksum does not match")
    magic, version, meta_len = _HEAD.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        raise CheckpointError(f"{where} is not a version {VERSION} checkpoint")
    start = _HEAD.size + meta_len
    meta = json.loads(data[_HEAD.size : start])
    values = np.frombuffer(data[start:-32], "<f4").astype(np.float32)
    if values.size != meta.get("num_params"):
        raise CheckpointError(f"{where} holds {values.size} values but says {meta.get('num_params')}")
    return Checkpoint(int(meta["clock"]), values, meta)


class Folder:
    """A checkpoint folder: a local path, or a URI written through the Spark session's Hadoop
    (without a session, on an executor: through pyarrow's file systems)."""

    def __init__(self, where: str, spark: Any = None) -> None:
        self.where = where.rstrip("/")
        self.spark = spark

    def path(self, name: str) -> str:
        return f"{self.where}/{name}"

    def names(self) -> list[str]:
        if storage.is_uri(self.where):
            return storage.list_names(self.spark, self.where)
        folder = Path(self.where)
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []

    def read(self, name: str) -> bytes:
        if storage.is_uri(self.where):
            return storage.read_bytes(self.spark, self.path(name))
        return Path(self.path(name)).read_bytes()

    def write(self, name: str, data: bytes) -> None:
        """Replaces `name` whole: written beside it, flushed to disk, then renamed into place."""
        if storage.is_uri(self.where):
            storage.write_bytes(self.spark, self.path(name), data)
            return
        folder = Path(self.where)
        folder.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(prefix=f".{name}.", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, folder / name)
        except BaseException:
            Path(partial).unlink(missing_ok=True)
            raise
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a power cut
        finally:
            os.close(dir_fd)

    def delete(self, name: str) -> None:
        if storage.is_uri(self.where):
            storage.delete(self.spark, self.path(name))
        else:
            Path(self.path(name)).unlink(missing_ok=True)

    def checkpoints(self) -> list[str]:
        """Checkpoint file names, newest first."""
        return sorted((n for n in self.names() if _NAME.match(n)), reverse=True)

    def save(self, clock: int, values: npt.NDArray[np.float32], meta: dict[str, Any], keep: int = 3) -> str:
        """Writes the checkpoint for `clock` and removes all but the newest `keep`."""
        name = f"ckpt-{clock:012d}.dkc"
        self.write(name, encode(clock, values, {**meta, "written": time.time()}))
        for old in self.checkpoints()[keep:]:
            self.delete(old)
        return self.path(name)

    def latest(self) -> Checkpoint:
        """The newest checkpoint that is whole; a damaged one is skipped with a warning."""
        names = self.checkpoints()
        if not names:
            raise CheckpointError(f"no checkpoints in {self.where}")
        for name in names:
            try:
                return decode(self.read(name), self.path(name))
            except (CheckpointError, OSError, ValueError) as e:
                warnings.warn(f"skipping checkpoint {self.path(name)}: {e}", stacklevel=2)
        raise CheckpointError(f"every checkpoint in {self.where} is damaged")


@dataclass
class Policy:
    """When to write: after `every_commits` commits and/or `every_seconds` seconds, whichever
    comes first (a checkpoint is only written when the clock has moved)."""

    every_commits: int | None = None
    every_seconds: float | None = 60.0
    keep: int = 3

    def __post_init__(self) -> None:
        if self.keep < 1:  # the run's settings check the other two
            raise ValueError("keep at least one checkpoint")

    def due(self, clock: int, last_clock: int, seconds_since: float) -> bool:
        if clock <= last_clock:
            return False
        by_commits = self.every_commits is not None and clock - last_clock >= self.every_commits
        by_time = self.every_seconds is not None and seconds_since >= self.every_seconds
        return by_commits or by_time


class Checkpointer:
    """Writes a running server's centre to a folder when the policy says so.

    `rows` is the size of the training data: with the samples workers report, it tells how many
    whole epochs are done (`epochs_before` of them by runs this one resumed)."""

    def __init__(
        self, folder: Folder, policy: Policy, meta: dict[str, Any], rows: int, epochs_before: int = 0
    ) -> None:
        self.folder, self.policy, self.meta = folder, policy, meta
        self.rows, self.epochs_before = max(1, rows), epochs_before
        self.last_clock, self.last_time = -1, time.monotonic()
        self.written: list[str] = []

    def tick(self, server: Any, stats: dict[str, Any]) -> None:
        clock = int(stats.get("clock", 0))
        if self.last_clock < 0:
            self.last_clock = clock  # the clock the run started at is already safe
        if self.policy.due(clock, self.last_clock, time.monotonic() - self.last_time):
            self.write(server, self.epochs_done(stats))

    def epochs_done(self, stats: dict[str, Any]) -> int:
        """Whole epochs done, from the samples the server's statistics say workers reported."""
        samples = sum(int(w.get("samples", 0)) for w in stats.get("workers", {}).values())
        return self.epochs_before + samples // self.rows

    def write(self, server: Any, epochs_done: int) -> str:
        values = np.empty(server.centre.num_params, np.float32)
        clock = server.centre.pull(values)  # a consistent snapshot, whole commits only
        path = self.folder.save(clock, values, {**self.meta, "epochs_done": epochs_done}, self.policy.keep)
        self.last_clock, self.last_time = clock, time.monotonic()
        self.written.append(path)
        return path


def check_resumable(checkpoint: Checkpoint, layout_hash: bytes, num_params: int) -> None:
    """Refuses a checkpoint of another model."""
    if checkpoint.values.size != num_params or checkpoint.meta.get("layout") != layout_hash.hex():
        raise CheckpointError(
            f"the checkpoint at clock {checkpoint.clock} holds other weights "
            f"({checkpoint.values.size} parameters, shapes {checkpoint.meta.get('shapes')}) than this model"
        )
