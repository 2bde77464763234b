"""The parameter server's own TensorBoard scalars, written on the driver while a run trains:
commits per second, staleness, bytes each way and each worker's loss, with the centre's clock as
the step. They go to `DIR/server`, beside the `train` and `validation` folders that Keras'
TensorBoard callback writes when it is given the same `DIR`. Written with TensorFlow's summary
writer (no TensorBoard install needed to write; `pip install tensorboard` to look)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class ServerBoard:
    """Writes one set of scalars per `write` (about once a second), and a histogram of every
    commit's staleness at `close`."""

    def __init__(self, folder: str) -> None:
        import tensorflow as tf

        self.tf = tf
        self.writer = tf.summary.create_file_writer(str(Path(folder) / "server"))
        self.last: tuple[float, int] | None = None  # (time, commits) of the last write

    def write(self, stats: dict[str, Any]) -> None:
        tf, now, commits = self.tf, time.perf_counter(), int(stats.get("commits", 0))
        step = int(stats.get("clock", 0))
        workers = stats.get("workers", {})
        with self.writer.as_default(step=step):
            if self.last is not None and now > self.last[0]:
                tf.summary.scalar("commits_per_second", (commits - self.last[1]) / (now - self.last[0]))
            tf.summary.scalar("commits", commits)
            tf.summary.scalar("bytes_received", int(stats.get("bytes_in", 0)))
            tf.summary.scalar("bytes_sent", int(stats.get("bytes_out", 0)))
            active = [w for w in workers.values() if w.get("commits")]
            if active:
                total = sum(w["commits"] for w in active)
                mean = sum(w["mean_staleness"] * w["commits"] for w in active) / total
                tf.summary.scalar("staleness_mean", mean)
                tf.summary.scalar("staleness_max", max(w["max_staleness"] for w in active))
            for worker, w in workers.items():
                if math.isfinite(w.get("loss", math.nan)):
                    tf.summary.scalar(f"worker_{worker}/loss", w["loss"])
        self.writer.flush()
        self.last = (now, commits)

    def close(self, stats: dict[str, Any], staleness: Sequence[int]) -> None:
        """The last scalars, and the staleness of every commit the workers reported."""
        self.write(stats)
        if staleness:
            with self.writer.as_default(step=int(stats.get("clock", 0))):
                self.tf.summary.histogram(
                    "staleness", list(staleness), buckets=max(1, min(30, max(staleness) + 1))
                )
        self.writer.close()
