"""A worker's memory against its partition's size (`dk bench memory`).

Synthetic data made by Spark itself (256 features, 10 classes), adag with 2 workers, 2 epochs:
each worker's peak RSS with partitions of 1x and 4x the size, held in memory and spilled to local
disk (`in_memory_mb=0`). Then one worker whose partition is larger than the memory Spark allows
a Python worker (`spark.executor.pyspark.memory`, enforced as an address-space limit) trains it.
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks import machine

FEATURES = 256
ROW_BYTES = FEATURES * 4 + 4  # as a worker holds it: float32 features, an int32 label
#: The Python worker's limit in the last case: TensorFlow alone maps about 2.2 GB of address
#: space here (2.5 GB is too little for it to import).
LIMIT_MB = 3072
TARGETS = {"spilled_growth_max": 0.10}


def _frame(spark: Any, rows: int) -> Any:
    from pyspark.sql import functions as F

    # One cheap expression (every feature of a row the same): Spark makes the data faster than
    # the workers take it. The labels are not learnable.
    i = F.col("id")
    features = F.array_repeat((i % 251 / 251.0).cast("double"), FEATURES)
    return spark.range(rows, numPartitions=2).select(
        features.alias("features"), (i % 10).cast("int").alias("label")
    )


def _train(spark: Any, rows: int, workers: int, in_memory_mb: int | None) -> dict[str, Any]:
    import distkeras_plus
    from distkeras_plus.data.datasets import default_model

    t = time.perf_counter()
    result = distkeras_plus.train(
        _frame(spark, rows),
        default_model(FEATURES, 10),
        "adag",
        num_workers=workers,
        epochs=2,
        batch_size=512,
        in_memory_mb=in_memory_mb,
    )
    return {
        "partition_mb": rows // workers * ROW_BYTES / 2**20,  # each worker's
        "in_memory_mb": in_memory_mb,
        "peak_rss_mb": max(result.worker_peak_rss) / 2**20,
        "spilled_mb": result.spilled_bytes / 2**20,
        "samples": result.samples,
        "seconds": time.perf_counter() - t,
    }


def run(rows_per_worker: int = 100_000) -> dict[str, Any]:
    from distkeras_plus.spark.session import local_session

    spark = local_session(2)
    spark.sparkContext.setLogLevel("ERROR")
    _train(spark, 20_000, 2, None)  # warm-up: the workers' first start is not the partition's
    cases = [
        _train(spark, factor * rows_per_worker * 2, 2, in_memory_mb)
        for in_memory_mb in (None, 0)
        for factor in (1, 4)
    ]
    spark.stop()
    limited = local_session(1, conf={"spark.executor.pyspark.memory": f"{LIMIT_MB}m"})
    limited.sparkContext.setLogLevel("ERROR")
    over = _train(limited, int(LIMIT_MB * 2**20 * 1.1 / ROW_BYTES), 1, None)
    limited.stop()
    growth = cases[3]["peak_rss_mb"] / cases[2]["peak_rss_mb"] - 1
    return {
        "machine": machine.describe(),
        "cases": cases,
        "spilled_growth": growth,
        "limit_mb": LIMIT_MB,
        "over_limit": over,
        "target_growth_max": TARGETS["spilled_growth_max"],
        "ok": growth <= TARGETS["spilled_growth_max"] and over["spilled_mb"] > 0,
    }


def render(results: dict[str, Any]) -> str:
    lines = [f"machine: {results['machine']['cpu']}, {results['machine']['cores']} cores"]
    for c in results["cases"]:
        how = "held   " if c["in_memory_mb"] is None else "spilled"
        lines.append(
            f"  {how} partition {c['partition_mb']:7.0f} MB: worker peak RSS {c['peak_rss_mb']:6.0f} MB, "
            f"spilled (all workers) {c['spilled_mb']:6.0f} MB, {c['seconds']:5.1f} s"
        )
    over = results["over_limit"]
    lines += [
        f"  spilled, 4x vs 1x: {results['spilled_growth']:+.1%} "
        f"(target <= +{results['target_growth_max']:.0%})",
        f"  one worker, partition {over['partition_mb']:.0f} MB > spark.executor.pyspark.memory "
        f"{results['limit_mb']} MB: trained {over['samples']:,} samples in {over['seconds']:.0f} s, "
        f"peak RSS {over['peak_rss_mb']:.0f} MB, spilled {over['spilled_mb']:.0f} MB",
        f"  ok: {results['ok']}",
    ]
    return "\n".join(lines)
