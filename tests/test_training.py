"""Training on local Spark: the main path, end to end."""

from __future__ import annotations

from typing import Any

import numpy as np

import distkeras_plus
from distkeras_plus.data.datasets import default_model


def test_adag_on_local_spark(spark: Any, digits_data: Any) -> None:
    df = digits_data.to_spark(spark)
    model = default_model(64, 10)
    result = distkeras_plus.train(df, model, "adag", num_workers=2, epochs=2, window=6)
    assert result.model is model
    n = len(digits_data.x_train)
    assert result.samples == 2 * n
    workers = {h["worker"] for h in result.worker_history}
    assert workers == {0, 1}
    commits = [h for h in result.worker_history if "staleness" in h]
    assert result.ps_stats["commits"] == len(commits) == result.ps_stats["clock"]
    assert all(h["time"] > 0 for h in result.worker_history)
    assert result.worker_history == sorted(result.worker_history, key=lambda h: h["time"])
    assert result.ps_stats["workers_connected"] == 0  # every worker said goodbye
    # The centre became the model's weights, and it learned something in two epochs.
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    _, accuracy = model.evaluate(digits_data.x_test, digits_data.y_test, verbose=0)
    assert accuracy > 0.5
    assert not np.allclose(model.get_weights()[0], default_model(64, 10).get_weights()[0])


def test_a_partition_spilled_to_local_disk_trains_as_a_held_one(spark: Any, digits_data: Any) -> None:
    df = digits_data.to_spark(spark)
    runs = {}
    for in_memory_mb in (None, 0):
        model = default_model(64, 10)
        result = distkeras_plus.train(
            df, model, "adag", num_workers=2, epochs=4, window=6, in_memory_mb=in_memory_mb
        )
        model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        runs[in_memory_mb] = result, model.evaluate(digits_data.x_test, digits_data.y_test, verbose=0)[1]
    (held, held_accuracy), (spilled, spilled_accuracy) = runs[None], runs[0]
    assert held.spilled_bytes == 0 and spilled.spilled_bytes > digits_data.x_train.nbytes
    assert spilled.samples == held.samples == 4 * len(digits_data.x_train)
    assert len(spilled.worker_peak_rss) == 2 and min(spilled.worker_peak_rss) > 100 << 20
    assert spilled_accuracy > 0.85 and abs(spilled_accuracy - held_accuracy) < 0.05, runs
