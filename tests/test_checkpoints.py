"""Checkpoints: the file format, damage detection, the write policy, Hadoop URIs, and a run that
resumes from one and goes on counting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import distkeras_plus
from distkeras_plus import RunConfig
from distkeras_plus.data.datasets import default_model
from distkeras_plus.errors import CheckpointError
from distkeras_plus.ps.checkpoint import Folder, Policy, decode, encode


def values(n: int, fill: float) -> np.ndarray:
    return np.full(n, fill, np.float32)


def test_round_trip_and_keep(tmp_path: Path) -> None:
    folder = Folder(str(tmp_path / "ck"))
    for clock in (5, 10, 15, 20):
        folder.save(
            clock, values(100, clock), {"epochs_done": clock // 10, "config": {"plugin": "adag"}}, keep=3
        )
    assert folder.checkpoints() == [f"ckpt-{c:012d}.dkc" for c in (20, 15, 10)]
    latest = folder.latest()
    assert latest.clock == 20 and latest.epochs_done == 2 and latest.config == {"plugin": "adag"}
    np.testing.assert_array_equal(latest.values, values(100, 20))
    # Nothing half-written is left behind.
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == folder.checkpoints()[::-1]


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[: len(b) // 2],  # truncated by a crash
        lambda b: b[:100] + bytes([b[100] ^ 1]) + b[101:],  # a flipped bit in the values
        lambda b: b"",  # empty
    ],
)
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(tmp_path: Path, damage: Any) -> None:
    folder = Folder(str(tmp_path))
    folder.save(7, values(64, 7), {})
    newest = Path(folder.save(9, values(64, 9), {}))
    newest.write_bytes(damage(newest.read_bytes()))
    with pytest.warns(UserWarning, match=f"skipping checkpoint {newest}"):
        latest = folder.latest()
    assert latest.clock == 7 and np.all(latest.values == 7)


def test_no_usable_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoints in"):
        Folder(str(tmp_path)).latest()
    (tmp_path / "ckpt-000000000001.dkc").write_bytes(b"DKCK nonsense")
    with (
        pytest.warns(UserWarning),
        pytest.raises(CheckpointError, match=r"every checkpoint in .* is damaged"),
    ):
        Folder(str(tmp_path)).latest()
    data = encode(3, values(4, 1), {})
    with pytest.raises(CheckpointError, match="checksum"):
        decode(data[:-1] + bytes([data[-1] ^ 0xFF]))


def test_policy() -> None:
    by_commits = Policy(every_commits=10, every_seconds=None)
    assert not by_commits.due(9, 0, 1e9) and by_commits.due(10, 0, 0.0)
    by_time = Policy(every_commits=None, every_seconds=30)
    assert not by_time.due(1, 0, 29.0) and by_time.due(1, 0, 30.0)
    assert not by_time.due(5, 5, 1e9)  # the centre has not moved: nothing new to write
    # The run's settings refuse a policy that would never (or always) write.
    for bad in ({"checkpoint_every": 0}, {"checkpoint_seconds": 0.0}):
        with pytest.raises(ValueError):
            RunConfig(**bad)
    with pytest.raises(ValueError):
        Policy(keep=0)


def test_checkpoints_on_a_hadoop_uri(spark: Any, tmp_path: Path) -> None:
    uri = (tmp_path / "remote").as_uri()
    folder = Folder(uri, spark)
    for clock in (1, 2, 3):
        assert folder.save(clock, values(10, clock), {}, keep=2) == f"{uri}/ckpt-{clock:012d}.dkc"
    assert folder.checkpoints() == ["ckpt-000000000003.dkc", "ckpt-000000000002.dkc"]
    assert folder.latest().clock == 3
    (tmp_path / "remote" / "ckpt-000000000003.dkc").write_bytes(b"broken")
    with pytest.warns(UserWarning):
        assert folder.latest().clock == 2


def test_a_run_resumes_from_its_checkpoint_and_the_clock_goes_on(
    spark: Any, digits_data: Any, tmp_path: Path
) -> None:
    df = digits_data.to_spark(spark)
    model = default_model(64, 10)
    first = distkeras_plus.train(
        df, model, "adag", num_workers=2, epochs=2, checkpoint_dir=str(tmp_path), window=6
    )
    folder = Folder(str(tmp_path))
    done = folder.latest()
    assert done.clock == first.ps_stats["clock"] > 0 and done.epochs_done == 2
    np.testing.assert_array_equal(done.values, np.concatenate([w.ravel() for w in first.model.get_weights()]))
    assert (tmp_path / "model.keras").is_file()

    # The same run asked for 4 epochs: it trains the 2 it has not done, from the centre it left.
    fresh = default_model(64, 10)
    second = distkeras_plus.train(
        df, fresh, "adag", num_workers=2, epochs=4, resume=done, checkpoint_dir=str(tmp_path), window=6
    )
    assert second.samples == first.samples  # two epochs, not four
    assert second.ps_stats["clock"] == done.clock + second.ps_stats["commits"]
    assert folder.latest().clock == second.ps_stats["clock"] and folder.latest().epochs_done == 4

    other = default_model(32, 10)
    with pytest.raises(CheckpointError, match="holds other weights"):
        distkeras_plus.train(
            spark.createDataFrame([([0.0] * 32, 1)], ["features", "label"]), other, "adag", resume=done
        )
