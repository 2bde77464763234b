"""The parameter server in a task of the training stage (`ps_location="executor"`): real Spark,
real Keras, the real server in an executor's Python worker."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import distkeras_plus
from distkeras_plus.data.datasets import default_model
from distkeras_plus.errors import SettingError, TrainingError
from distkeras_plus.ps.checkpoint import Folder
from distkeras_plus.settings import from_keywords
from distkeras_plus.spark import driver


def test_the_parameter_server_in_the_cluster_trains_as_on_the_driver(spark: Any, digits_data: Any) -> None:
    df = digits_data.to_spark(spark)
    result = distkeras_plus.train(
        df,
        default_model(64, 10),
        "adag",
        num_workers=1,
        epochs=3,
        window=6,
        ps_location="executor",
        verbose=0,
    )
    n = len(digits_data.x_train)
    assert result.samples == 3 * n and len(result.worker_history) > 0
    stats = result.ps_stats  # the server task's own, returned with the stage
    assert stats["commits"] == stats["clock"] > 0 and stats["workers_connected"] == 0
    model = result.model
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    _, accuracy = model.evaluate(digits_data.x_test, digits_data.y_test, verbose=0)
    assert accuracy > 0.85  # the classic threshold for 3 epochs of adag on digits


def accuracy_of(model: Any, data: Any) -> float:
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return float(model.evaluate(data.x_test, data.y_test, verbose=0)[1])


def test_a_synchronous_optimizer_with_the_server_in_the_cluster(spark: Any, digits_data: Any) -> None:
    # The server's task takes part in the workers' exchanges (they agree on their rounds first).
    df = digits_data.to_spark(spark)
    result = distkeras_plus.train(
        df, default_model(64, 10), "easgd", num_workers=1, epochs=3, window=6, ps_location="executor"
    )
    n = len(digits_data.x_train)
    assert result.samples == 3 * n
    assert result.ps_stats["clock"] == result.ps_stats["commits"] == 3 * math.ceil(math.ceil(n / 32) / 6)
    assert accuracy_of(result.model, digits_data) > 0.85


def test_the_server_in_the_cluster_writes_checkpoints_and_progress(
    spark: Any, digits_data: Any, tmp_path: Path
) -> None:
    df = digits_data.to_spark(spark)
    seen: list[dict[str, Any]] = []
    settings: dict[str, Any] = {"num_workers": 1, "window": 2, "ps_location": "executor"}
    settings["checkpoint_dir"] = str(tmp_path)
    run = from_keywords({"plugin": "adag", "epochs": 8, **settings})
    first = driver.train(df, default_model(64, 10), run, progress=seen.append)
    done = Folder(str(tmp_path)).latest()  # written by the server's task, not by this process
    assert done.clock == first.ps_stats["clock"] > 0 and done.epochs_done == 8
    np.testing.assert_array_equal(done.values, np.concatenate([w.ravel() for w in first.model.get_weights()]))
    assert json.loads((tmp_path / "progress.json").read_text())["clock"] == done.clock
    assert seen[-1]["commits"] == first.ps_stats["commits"]  # the last word
    # (Progress read while it trains, and checkpoints on the way: test_kills, on a longer run.)

    # Resumed with more epochs: the server's task starts from the checkpoint's centre and clock.
    second = distkeras_plus.train(df, default_model(64, 10), "adag", epochs=9, resume=done, **settings)
    assert second.samples == len(digits_data.x_train)
    assert second.ps_stats["clock"] == done.clock + second.ps_stats["commits"]
    assert Folder(str(tmp_path)).latest().epochs_done == 9


def test_a_worker_that_ends_early_stops_its_peers(spark: Any) -> None:
    # A real barrier stage: worker 0 ends at once (as on an error); worker 1's exchange sees it.
    from distkeras_plus.spark.executor import Peers
    from distkeras_plus.worker.context import Stopped

    def task(batches: Any) -> Any:
        import pyarrow as pa
        from pyspark import BarrierTaskContext

        context = BarrierTaskContext.get()
        peers = Peers(context, 2)
        saw = "ended"
        if context.partitionId() == 1:
            try:
                peers.gather("round 1")
                saw = "nothing"
            except Stopped:
                saw = "stopped"
        peers.finish()
        yield pa.RecordBatch.from_pydict({"worker": [context.partitionId()], "saw": [saw]})

    rows = spark.range(2).repartition(2).mapInArrow(task, "worker long, saw string", barrier=True).collect()
    assert sorted((r["worker"], r["saw"]) for r in rows) == [(0, "ended"), (1, "stopped")]


@pytest.mark.parametrize(
    ("settings", "error", "message"),
    [
        ({"num_workers": 2}, TrainingError, "takes a task slot beside the 2 workers, but the cluster has 2"),
        (
            {"num_workers": 1, "validation_split": 0.2},
            SettingError,
            "callbacks and validation need the parameter server in this process",
        ),
        ({"plugin": "ensemble"}, SettingError, "ensemble trains without a parameter server: there is none"),
    ],
    ids=["slots", "validation", "no-server"],
)
def test_what_the_server_in_the_cluster_cannot_do_is_one_line(
    spark: Any, digits_data: Any, settings: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        distkeras_plus.train(
            digits_data.to_spark(spark), default_model(64, 10), ps_location="executor", **settings
        )


def test_a_bad_location_is_one_line() -> None:
    with pytest.raises(SettingError, match=r"^ps_location: takes driver, executor or auto, not 'cluster'$"):
        distkeras_plus.RunConfig(ps_location="cluster")
