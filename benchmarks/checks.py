"""The data check's cost (`dk bench checks`): the one Spark aggregation that checks the label and
features columns before training, against a one-epoch training run on the same data, in one run.

Fashion-MNIST when it is installed (`DK_DATA_DIR`, Debian's dataset-fashion-mnist); otherwise
random data of its size (60,000 rows of 784 features, 10 classes), which costs Spark the same.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import machine

TARGETS = {"check_share_max": 0.05}


def _data() -> Any:
    from distkeras_plus.data.datasets import Dataset, fashion_mnist
    from distkeras_plus.errors import DataError

    try:
        return fashion_mnist()
    except DataError:
        rng = np.random.default_rng(0)
        x = rng.random((70_000, 784), dtype=np.float32)
        y = rng.integers(0, 10, 70_000).astype(np.int32)
        return Dataset(
            "random, the size of fashion-mnist", x[:60_000], y[:60_000], x[60_000:], y[60_000:], 10
        )


def run(repeats: int = 3) -> dict[str, Any]:
    import distkeras_plus
    from distkeras_plus.data.datasets import default_model
    from distkeras_plus.data.tables import prepare
    from distkeras_plus.spark.session import local_session

    data = _data()
    spark = local_session(2)
    spark.sparkContext.setLogLevel("ERROR")
    with tempfile.TemporaryDirectory() as folder:
        data.to_parquet(Path(folder))
        df = spark.read.parquet(str(Path(folder) / "train.parquet"))
        prepare(df, "features", "label")  # warm-up: the JVM's first query plans and reads
        checks = []
        for _ in range(repeats):
            t = time.perf_counter()
            prepare(df, "features", "label")
            checks.append(time.perf_counter() - t)
        t = time.perf_counter()
        distkeras_plus.train(df, default_model(784, 10), "adag", num_workers=2, epochs=1)
        epoch = time.perf_counter() - t
    spark.stop()
    check = statistics.median(checks)
    return {
        "machine": machine.describe(),
        "data": data.name,
        "rows": len(data.x_train),
        "check_seconds": check,
        "epoch_seconds": epoch,
        "share": check / epoch,
        "target_share_max": TARGETS["check_share_max"],
        "ok": check / epoch <= TARGETS["check_share_max"],
    }


def render(results: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"machine: {results['machine']['cpu']}, {results['machine']['cores']} cores",
            f"data: {results['data']}, {results['rows']:,} rows",
            f"  data check (one aggregation): {results['check_seconds']:.2f} s",
            f"  one epoch of adag, 2 workers:  {results['epoch_seconds']:.2f} s (the check included)",
            f"  share: {results['share']:.1%} (target <= {results['target_share_max']:.0%})",
        ]
    )
