"""The parameter server in a task of the training stage (`ps_location="executor"`): real Spark,
real Keras, the real server in an executor's Python worker."""

from __future__ import annotations

from typing import Any

import pytest

import distkeras_plus
from distkeras_plus.data.datasets import default_model
from distkeras_plus.errors import SettingError, TrainingError


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


@pytest.mark.parametrize(
    ("settings", "error", "message"),
    [
        ({"plugin": "averaging", "num_workers": 1}, SettingError, "averaging is synchronous; the parameter"),
        ({"num_workers": 2}, TrainingError, "takes a task slot beside the 2 workers, but the cluster has 2"),
        (
            {"num_workers": 1, "checkpoint_dir": "/tmp/x"},
            SettingError,
            "callbacks, validation and checkpoints",
        ),
        ({"plugin": "ensemble"}, SettingError, "ensemble trains without a parameter server: there is none"),
    ],
    ids=["synchronous", "slots", "checkpoints", "no-server"],
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
