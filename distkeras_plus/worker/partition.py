"""A worker's partition: held as arrays when it is small, spilled to local disk when it is not.

`load` reads the partition's Arrow batches once. Up to a limit they are kept in memory
(`Batches`); past it, everything is written to Arrow IPC files on the executor's local disk
(`Spilled`) and every epoch streams them back through a shuffle buffer of bounded size, so a
worker's memory does not grow with its partition.
"""

from __future__ import annotations

import math
import os
import resource
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from distkeras_plus.data.tables import arrays
from distkeras_plus.errors import DataError

Pair = tuple[npt.NDArray[Any], npt.NDArray[Any]]

#: Rows are written in blocks of about this many bytes: an epoch's order is a shuffle of blocks,
#: and a buffer draws its blocks from all over the partition (sorted data still mixes).
BLOCK_BYTES = 1 << 20
#: Blocks per IPC file. A file is memory-mapped only while blocks are read from it: a map as
#: large as the partition would count against the address space that
#: `spark.executor.pyspark.memory` limits.
FILE_BLOCKS = 64
#: The shuffle buffer: how many bytes of rows are drawn and shuffled together.
SHUFFLE_BYTES = 64 << 20
#: The most a worker holds in memory when its setting does not say (see `memory_limit`).
HOLD_BYTES = 1 << 30


class Batches:
    """A partition held as arrays, served in mini-batches, reshuffled every epoch.

    The last, smaller batch of an epoch is kept: every sample is trained on. `input_shape` (set
    by the worker from its model) shapes each batch's features.
    """

    input_shape: tuple[int, ...] | None = None

    def __init__(self, x: npt.NDArray[Any], y: npt.NDArray[Any], batch_size: int, seed: int) -> None:
        if len(x) != len(y):
            raise DataError(f"{len(x)} feature rows but {len(y)} labels")
        self.x, self.y, self.batch_size, self.seed = x, y, batch_size, seed

    @property
    def samples(self) -> int:
        return len(self.x)

    def __len__(self) -> int:
        return math.ceil(self.samples / self.batch_size)

    def epoch(self, epoch: int) -> Iterator[Pair]:
        order = np.random.default_rng((self.seed, epoch)).permutation(len(self.x))
        yield from self._batches(self.x, self.y, order)

    def _batches(self, x: npt.NDArray[Any], y: npt.NDArray[Any], order: npt.NDArray[Any]) -> Iterator[Pair]:
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            yield self._shaped(x[idx]), y[idx]

    def _shaped(self, x: npt.NDArray[Any]) -> npt.NDArray[Any]:
        return x if self.input_shape is None else x.reshape((len(x), *self.input_shape))

    @property
    def spilled_bytes(self) -> int:
        """What the partition takes on local disk (nothing, here)."""
        return 0

    def close(self) -> None:
        """Frees what the partition holds outside memory (nothing, here)."""


class Spilled(Batches):
    """A partition written to Arrow IPC files in `folder` (removed by `close`).

    An epoch shuffles the order of the blocks, reads them a buffer at a time (each file
    memory-mapped while its blocks are copied out), shuffles each buffer's rows and serves them
    in mini-batches; the rows left over from one buffer go on into the next. It draws the same
    batches in the same order for the same seed and epoch, as `Batches` does.
    """

    def __init__(self, folder: Path, batch_size: int, seed: int) -> None:
        self.folder, self.batch_size, self.seed = folder, batch_size, seed
        self.blocks: list[tuple[int, int]] = []  # (file, record batch) of every block
        self._rows = 0
        self._pending: Pair | None = None  # rows short of a whole block
        self._block_rows = 0
        self._writer: Any = None
        self._file = -1
        self._shapes: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())  # of a row's x and y

    @property
    def samples(self) -> int:
        return self._rows

    def append(self, x: npt.NDArray[Any], y: npt.NDArray[Any]) -> None:
        if not len(x):
            return
        rows = self._block_rows = self._block_rows or max(1, BLOCK_BYTES // max(1, x[0].nbytes + y[0].nbytes))
        if self._pending is not None:
            need = rows - len(self._pending[0])
            head = np.concatenate([self._pending[0], x[:need]]), np.concatenate([self._pending[1], y[:need]])
            x, y = x[need:], y[need:]
            self._pending = head
            if len(head[0]) < rows:
                return
            self._write(*head)
        full = len(x) - len(x) % rows
        for start in range(0, full, rows):
            self._write(x[start : start + rows], y[start : start + rows])
        if full < len(x):
            self._pending = x[full:].copy(), y[full:].copy()

    def finish(self) -> None:
        """Writes the last, partial block and closes the last file."""
        if self._pending is not None:
            self._write(*self._pending)
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _write(self, x: npt.NDArray[Any], y: npt.NDArray[Any]) -> None:
        import pyarrow as pa

        self._pending = None
        batch = pa.record_batch([_column(x), _column(y)], names=["x", "y"])
        if len(self.blocks) % FILE_BLOCKS == 0:
            if self._writer is not None:
                self._writer.close()
            self._file += 1
            self._writer = pa.ipc.new_file(str(self._path(self._file)), batch.schema)
        self._writer.write_batch(batch)
        self.blocks.append((self._file, len(self.blocks) % FILE_BLOCKS))
        self._rows += len(x)
        self._shapes = x.shape[1:], y.shape[1:]

    def _path(self, file: int) -> Path:
        return self.folder / f"part-{file:05d}.arrow"

    @property
    def spilled_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.glob("*.arrow"))

    def epoch(self, epoch: int) -> Iterator[Pair]:
        rng = np.random.default_rng((self.seed, epoch))
        order = rng.permutation(len(self.blocks))
        per_buffer = max(1, SHUFFLE_BYTES // BLOCK_BYTES)
        left: list[Pair] = []
        for start in range(0, len(order), per_buffer):
            x, y = _joined([*left, *self._read(order[start : start + per_buffer])])
            perm = rng.permutation(len(x))
            full = len(x) - len(x) % self.batch_size
            yield from self._batches(x, y, perm[:full])
            left = [(x[perm[full:]], y[perm[full:]])]
        if left and len(left[0][0]):
            yield self._shaped(left[0][0]), left[0][1]

    def _read(self, blocks: Iterable[int]) -> list[Pair]:
        """The rows of `blocks` (copied out of the files, which are unmapped again)."""
        import pyarrow as pa

        wanted = [self.blocks[b] for b in blocks]
        out: list[Pair] = []
        for file in sorted({f for f, _ in wanted}):
            with pa.memory_map(str(self._path(file))) as source:
                reader = pa.ipc.open_file(source)
                for f, b in wanted:
                    if f == file:
                        batch = reader.get_batch(b)
                        out.append((self._array(batch, 0), self._array(batch, 1)))
        return out

    def _array(self, batch: Any, i: int) -> npt.NDArray[Any]:
        column, shape = batch.column(i), self._shapes[i]
        values = column.values if shape else column
        return np.array(values.to_numpy(zero_copy_only=True).reshape((len(column), *shape)))

    def close(self) -> None:
        self.finish()
        shutil.rmtree(self.folder, ignore_errors=True)


def _joined(pairs: list[Pair]) -> Pair:
    xs, ys = zip(*pairs, strict=True)
    return np.concatenate(xs), np.concatenate(ys)


def _column(a: npt.NDArray[Any]) -> Any:
    import pyarrow as pa

    if a.ndim == 1:
        return pa.array(a)
    return pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1)), int(np.prod(a.shape[1:])))


def memory_limit(in_memory_mb: int | None) -> int:
    """The bytes of its partition a worker holds in memory: `in_memory_mb` MiB when given;
    otherwise `HOLD_BYTES`, or a quarter of the address space the process has left where it is
    limited (Spark enforces `spark.executor.pyspark.memory` that way), whichever is less. Called
    once the backend is imported, whose address space is not the partition's to use."""
    if in_memory_mb is not None:
        return in_memory_mb << 20
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit == resource.RLIM_INFINITY:
        return HOLD_BYTES
    used = int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    return min(HOLD_BYTES, max(0, limit - used) // 4)


def local_folder() -> Path:
    """A new folder on the executor's local disk (Spark's local directories, else the system's
    temporary folder)."""
    dirs = [d for d in os.environ.get("SPARK_LOCAL_DIRS", "").split(",") if d]
    return Path(tempfile.mkdtemp(prefix="dk-partition-", dir=dirs[0] if dirs else None))


def load(
    batches: Iterable[Any],
    num_features: int,
    one_hot: bool,
    batch_size: int,
    seed: int,
    limit: int,
    folder: Callable[[], Path] = local_folder,
) -> Batches:
    """A partition from its Arrow record batches: held when its arrays take at most `limit`
    bytes, spilled to a new folder otherwise."""
    held: list[Pair] = []
    size = 0
    spilled: Spilled | None = None
    try:
        for batch in batches:
            if not batch.num_rows:
                continue
            x, y = arrays(batch, num_features, one_hot)
            if spilled is not None:
                spilled.append(x, y)
                continue
            held.append((x, y))
            size += x.nbytes + y.nbytes
            if size > limit:
                spilled = Spilled(folder(), batch_size, seed)
                for x, y in held:
                    spilled.append(x, y)
                held = []
    except BaseException:
        if spilled is not None:
            spilled.close()
        raise
    if spilled is not None:
        spilled.finish()
        return spilled
    if not held:
        return Batches(np.zeros((0, num_features), np.float32), np.zeros((0,), np.int32), batch_size, seed)
    return Batches(*_joined(held), batch_size, seed)
