"""Codec benchmark (`dk bench codecs`): compression ratio and encode/decode speed per codec, and
training with `adag` (2 workers, local[2]) per codec against `none` in the same run."""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np

from benchmarks import machine
from benchmarks.train import evaluate, fashion_mnist, model_for
from distkeras_plus import Codec

CODECS = ["none", "fp16", "bf16", "int8", "int8:stochastic", "topk:0.01"]
TARGETS = {"speed_gb_s": 1.0, "topk_gb_s": 0.5, "fp16_points": 0.2, "int8_points": 0.5, "int8_ratio": 3.9,
           "topk_points": 1.0, "topk_ratio": 50.0}  # fmt: skip


def speed(n: int, reps: int) -> list[dict[str, Any]]:
    values = (np.random.default_rng(0).standard_normal(n) * 1e-3).astype(np.float32)
    out = np.empty(n, np.float32)
    rows = []
    for name in CODECS:
        codec = Codec(name)
        data = codec.encode(values)
        enc, dec = [], []
        for _ in range(reps):
            t = time.perf_counter()
            data = codec.encode(values, seed=1)
            enc.append(time.perf_counter() - t)
            t = time.perf_counter()
            codec.decode(data, out)
            dec.append(time.perf_counter() - t)
        gb = 4 * n / 1e9
        rows.append(
            {
                "codec": name,
                "params": n,
                "ratio": 4 * n / len(data),
                "encode_gb_s": gb / statistics.median(enc),
                "decode_gb_s": gb / statistics.median(dec),
            }
        )
    return rows


def training(spark: Any, data: Any, epochs: int) -> list[dict[str, Any]]:
    import distkeras_plus

    df = data.to_spark(spark).cache()
    df.count()
    rows = []
    # `none` twice: the difference between those two runs is the noise of asynchronous training.
    for label, name in [("none", "none"), ("none (again)", "none"), *[(c, c) for c in CODECS[1:]]]:
        result = distkeras_plus.train(df, model_for(data), "adag", num_workers=2, epochs=epochs, codec=name)
        rows.append(
            {
                "codec": label,
                "accuracy": evaluate(result.model, data),
                "commit_bytes": result.ps_stats["commit_bytes"],
                "commits": result.ps_stats["commits"],
                "seconds": result.seconds,
            }
        )
    base = rows[0]
    for r in rows:
        r["points_vs_none"] = 100 * (r["accuracy"] - base["accuracy"])
        r["fewer_bytes"] = base["commit_bytes"] / r["commit_bytes"]
    df.unpersist()
    return rows


def run(sizes: list[int], quick: bool = False) -> dict[str, Any]:
    from distkeras_plus.data.datasets import digits
    from distkeras_plus.spark.session import local_session

    results: dict[str, Any] = {"benchmark": "codecs", "machine": machine.describe()}
    results["speed"] = [row for n in sizes for row in speed(n, 3 if quick else 10)]
    spark = local_session(2)
    spark.sparkContext.setLogLevel("ERROR")
    sets = [("digits", digits(), 2 if quick else 8)]
    fmnist = None if quick else fashion_mnist()
    if fmnist is not None:
        sets.append(("fashion-mnist", fmnist, 2))
    results["training"] = [
        {"dataset": name, "epochs": e, "rows": training(spark, d, e)} for name, d, e in sets
    ]
    return results


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"machine: {m['cpu']}, {m['cores']} cores",
        "",
        "codec              params  ratio  encode GB/s  decode GB/s",
    ]
    for r in results["speed"]:
        speeds = f"{r['encode_gb_s']:10.2f} {r['decode_gb_s']:12.2f}"
        lines.append(f"  {r['codec']:<16} {r['params']:>9,} {r['ratio']:6.1f}x {speeds}")
    for s in results["training"]:
        lines += ["", f"adag on {s['dataset']}, {s['epochs']} epochs, 2 workers:"]
        lines.append("  codec              accuracy  vs none  commit bytes  fewer")
        for r in s["rows"]:
            acc = f"{r['accuracy']:9.4f} {r['points_vs_none']:+7.2f}"
            lines.append(f"  {r['codec']:<16} {acc}  {r['commit_bytes']:12,} {r['fewer_bytes']:6.1f}x")
    return "\n".join(lines)
