"""A worker's partition: held when small, spilled to Arrow IPC files and streamed back when not,
with every sample served once an epoch, the same order on every attempt, and memory that does
not grow with the partition."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from distkeras_plus.errors import exception_line
from distkeras_plus.worker import Batches, Spilled, partition


def arrow_batches(rows: int, features: int, per_batch: int = 1000) -> Iterator[pa.RecordBatch]:
    """What Spark hands a worker: features as lists of doubles; feature 0 is the row's number."""
    for start in range(0, rows, per_batch):
        n = min(per_batch, rows - start)
        x = np.random.default_rng(start).random((n, features))
        x[:, 0] = np.arange(start, start + n)
        offsets = np.arange(0, n * features + 1, features, dtype=np.int32)
        feats = pa.ListArray.from_arrays(offsets, x.reshape(-1))
        yield pa.record_batch([feats, pa.array(np.arange(start, start + n) % 10)], names=["f", "label"])


@pytest.fixture
def small_blocks(monkeypatch: Any) -> None:
    """Blocks, files and the shuffle buffer small enough for a test's partition to have many."""
    monkeypatch.setattr(partition, "BLOCK_BYTES", 4 << 10)
    monkeypatch.setattr(partition, "FILE_BLOCKS", 8)
    monkeypatch.setattr(partition, "SHUFFLE_BYTES", 64 << 10)


def spill(tmp_path: Path, rows: int, features: int = 16, batch_size: int = 32) -> Batches:
    folder = tmp_path / "spill"
    folder.mkdir()
    return partition.load(arrow_batches(rows, features), features, False, batch_size, 7, 0, lambda: folder)


def test_a_partition_within_the_limit_is_held_as_arrays(tmp_path: Path) -> None:
    data = partition.load(arrow_batches(2500, 16), 16, False, 32, 7, 1 << 20, lambda: tmp_path / "no")
    assert type(data) is Batches and data.samples == 2500 and data.spilled_bytes == 0
    assert data.x.dtype == np.float32 and np.array_equal(data.x[:, 0], np.arange(2500))
    assert not (tmp_path / "no").exists()


@pytest.mark.usefixtures("small_blocks")
def test_a_spilled_partition_serves_every_sample_once_an_epoch(tmp_path: Path) -> None:
    data = spill(tmp_path, 2500)
    assert isinstance(data, Spilled) and data.samples == 2500 and len(data) == 79
    files = sorted((tmp_path / "spill").glob("*.arrow"))
    assert len(files) > 2 and data.spilled_bytes == sum(f.stat().st_size for f in files)
    data.input_shape = (4, 4)
    for epoch in range(2):
        batches = list(data.epoch(epoch))
        assert [len(x) for x, _ in batches] == [32] * 78 + [4]
        assert all(x.shape[1:] == (4, 4) and x.dtype == np.float32 for x, _ in batches)
        rows = np.concatenate([x[:, 0, 0] for x, _ in batches]).astype(int)
        labels = np.concatenate([y for _, y in batches])
        assert sorted(rows) == list(range(2500)) and np.array_equal(labels, rows % 10)
    data.close()
    assert not (tmp_path / "spill").exists()


@pytest.mark.usefixtures("small_blocks")
def test_a_spilled_epoch_is_the_same_on_every_attempt_and_mixes_the_whole_partition(tmp_path: Path) -> None:
    data = spill(tmp_path, 2500)

    def order(epoch: int) -> list[int]:
        return [int(r) for x, _ in data.epoch(epoch) for r in x[:, 0]]

    assert order(0) == order(0) and order(0) != order(1)
    # The first buffer's rows come from all over the partition, not from its beginning.
    first = order(0)[:320]
    assert max(first) - min(first) > 2000


@pytest.mark.usefixtures("small_blocks")
def test_memory_does_not_grow_with_the_spilled_partition(tmp_path: Path) -> None:
    def peak(rows: int, folder: Path) -> int:
        folder.mkdir()
        tracemalloc.start()
        data = partition.load(arrow_batches(rows, 16, per_batch=500), 16, False, 32, 7, 0, lambda: folder)
        for epoch in range(2):
            for _ in data.epoch(epoch):
                pass
        top = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        data.close()
        return top

    peak(1000, tmp_path / "warm")  # what the first use imports is not the partition's
    small, large = peak(4000, tmp_path / "a"), peak(16_000, tmp_path / "b")
    assert large < small * 1.1, (small, large)


def test_one_hot_labels_and_a_partial_last_block_come_back_whole(tmp_path: Path) -> None:
    x = np.arange(30 * 3, dtype=np.float32).reshape(30, 3)
    y = np.eye(3, dtype=np.float32)[np.arange(30) % 3]
    data = Spilled(tmp_path, batch_size=8, seed=0)
    for start in range(0, 30, 7):  # appends that do not line up with the blocks
        data.append(x[start : start + 7], y[start : start + 7])
    data.finish()
    got = list(data.epoch(0))
    assert [len(b) for b, _ in got] == [8, 8, 8, 6]
    xs, ys = np.concatenate([b for b, _ in got]), np.concatenate([c for _, c in got])
    order = np.argsort(xs[:, 0])
    assert np.array_equal(xs[order], x) and np.array_equal(ys[order], y)


def test_the_limit_is_the_setting_or_a_share_of_the_address_space_left() -> None:
    """Spark enforces spark.executor.pyspark.memory as an address-space limit (RLIMIT_AS)."""
    assert partition.memory_limit(5) == 5 << 20 and partition.memory_limit(0) == 0
    script = (
        "import os, resource; from distkeras_plus.worker import partition\n"
        "print(partition.memory_limit(None))\n"
        "used = int(open('/proc/self/statm').read().split()[0]) * os.sysconf('SC_PAGE_SIZE')\n"
        "resource.setrlimit(resource.RLIMIT_AS, (used + (400 << 20), resource.RLIM_INFINITY))\n"
        "print(partition.memory_limit(None))\n"
    )
    free, limited = map(int, subprocess.check_output([sys.executable, "-P", "-c", script], text=True).split())
    assert free == partition.HOLD_BYTES
    assert 90 << 20 < limited <= 100 << 20


def test_a_worker_out_of_memory_is_named_in_its_one_line() -> None:
    spark_report = (
        "An exception was thrown from the Python worker: Traceback (most recent call last):\n"
        '  File "pyarrow/error.pxi", line 89, in pyarrow.lib.check_status\nMemoryError\n SQLSTATE: 38000\n'
    )
    line = exception_line(spark_report)
    assert line.startswith("MemoryError: a worker ran out of memory") and "--in-memory-mb" in line
