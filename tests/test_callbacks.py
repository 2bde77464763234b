"""`train` as `model.fit` on local Spark: the model's own compile(), Keras callbacks over the
cluster's epochs, validation, History; real Keras, real Spark, a real parameter server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import distkeras_plus
from distkeras_plus.callbacks import ModelCheckpoint
from distkeras_plus.data.datasets import default_model
from distkeras_plus.errors import SettingError
from distkeras_plus.spark.predict import evaluate


def kept() -> Any:
    """A callback that keeps every epoch's logs and the weights the epoch ended with."""
    import keras

    class Kept(keras.callbacks.Callback):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.logs: list[dict[str, float]] = []
            self.weights: list[list[np.ndarray]] = []

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            self.logs.append(dict(logs or {}))
            self.weights.append(self.model.get_weights())

    return Kept()


def test_a_compiled_model_trains_with_its_own_optimizer_and_comes_back_compiled(
    spark: Any, digits_data: Any
) -> None:
    import keras

    model = default_model(64, 10)
    model.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.5),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    result = distkeras_plus.train(
        digits_data.to_spark(spark), model, "adag", num_workers=2, epochs=3, window=4
    )
    optimizer = result.model.optimizer
    assert type(optimizer).__name__ == "SGD"
    assert optimizer.get_config()["learning_rate"] == pytest.approx(0.05)
    assert optimizer.get_config()["momentum"] == pytest.approx(0.5)
    used = {round(row["learning_rate"], 7) for row in result.worker_history}
    assert used == {0.05}, used  # what the workers trained with, as they reported it
    _, accuracy = result.model.evaluate(digits_data.x_test, digits_data.y_test, verbose=0)
    assert accuracy > 0.5  # SGD learns digits more slowly than the plugin's Adam
    history = result.history.history
    assert set(history) == {"loss", "accuracy"} and result.history.epoch == [0, 1, 2]
    assert all(len(v) == 3 for v in history.values())
    assert history["loss"][2] < history["loss"][0] and history["accuracy"][2] > history["accuracy"][0]


def test_learning_rate_setting_overrides_the_models(spark: Any, digits_data: Any) -> None:
    model = default_model(64, 10)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    result = distkeras_plus.train(
        digits_data.to_spark(spark), model, "adag", num_workers=2, epochs=1, window=4, learning_rate=0.03
    )
    assert result.model.optimizer.get_config()["learning_rate"] == pytest.approx(0.03)
    assert {round(row["learning_rate"], 7) for row in result.worker_history} == {0.03}


def test_early_stopping_stops_every_worker_and_restores_the_best_weights(
    spark: Any, digits_data: Any, tmp_path: Path
) -> None:
    import keras

    train_df, test_df = digits_data.to_spark(spark), digits_data.to_spark(spark, "test")
    # Nothing improves by 10: the run stops at the second epoch's end, keeping the first's weights.
    stop = keras.callbacks.EarlyStopping("val_loss", patience=1, min_delta=10.0, restore_best_weights=True)
    keep = kept()
    best = tmp_path / "best.keras"
    checkpoint = keras.callbacks.ModelCheckpoint(best, monitor="val_loss", save_best_only=True)
    # The same through Spark's Hadoop file systems (here Hadoop's local one, by a file:// URI).
    remote = ModelCheckpoint(f"{(tmp_path / 'remote').as_uri()}/best.keras", save_best_only=True)
    epochs, n = 100, len(digits_data.x_train)
    result = distkeras_plus.train(
        train_df,
        default_model(64, 10),
        "adag",
        num_workers=2,
        epochs=epochs,
        window=4,
        batch_size=8,
        callbacks=[stop, keep, checkpoint, remote],
        validation_data=test_df,
    )
    assert stop.stopped_epoch == 1
    assert result.history.epoch == [0, 1] and len(result.history.history["val_loss"]) == 2
    # The workers stopped long before the last epoch: at their first commit after the driver saw
    # the second epoch's end (they went on meanwhile; a digits epoch takes them a few tenths of a second).
    assert result.samples < epochs * n / 4
    assert result.ps_stats["workers_connected"] == 0  # and said goodbye
    for got, first in zip(result.model.get_weights(), keep.weights[0], strict=True):
        np.testing.assert_array_equal(got, first)
    # val_loss is what `dk evaluate` gives for the same weights; the checkpoint kept the best.
    for logs, weights in zip(keep.logs, keep.weights, strict=True):
        scored = keras.models.clone_model(result.model)
        scored.set_weights(weights)
        scores = evaluate(test_df, scored)
        assert logs["val_loss"] == pytest.approx(scores.loss, abs=1e-5)
        assert logs["val_accuracy"] == pytest.approx(scores.accuracy, abs=1e-6)
    best_epoch = int(np.argmin(result.history.history["val_loss"]))
    for path in (best, tmp_path / "remote" / "best.keras"):
        saved = keras.saving.load_model(path)
        for got, want in zip(saved.get_weights(), keep.weights[best_epoch], strict=True):
            np.testing.assert_array_equal(got, want)
    assert not list((tmp_path / "remote").glob(".*partial*"))


def test_keras_own_checkpoint_to_a_hadoop_uri_is_refused_before_training(
    spark: Any, digits_data: Any
) -> None:
    import keras

    checkpoint = keras.callbacks.ModelCheckpoint("s3a://bucket/best.keras")
    with pytest.raises(SettingError, match=r"distkeras_plus\.callbacks\.ModelCheckpoint"):
        distkeras_plus.train(digits_data.to_spark(spark), default_model(64, 10), callbacks=[checkpoint])


def test_a_learning_rate_schedule_reaches_the_workers(spark: Any, digits_data: Any) -> None:
    import keras

    def rate(epoch: int, lr: float = 0.0) -> float:
        return 0.02 * 0.5**epoch

    schedule = keras.callbacks.LearningRateScheduler(rate)
    # Workers do not wait for the driver: epochs of a few seconds (digits 8 times over) leave it
    # the time to set each epoch's rate early in the epoch.
    df = digits_data.to_spark(spark)
    for _ in range(3):
        df = df.unionAll(df)
    result = distkeras_plus.train(
        df,
        default_model(64, 10),
        "adag",
        num_workers=2,
        epochs=4,
        window=4,
        batch_size=8,
        callbacks=[schedule],
    )
    rows = result.worker_history
    scheduled = [round(rate(e), 7) for e in range(4)]
    assert {round(r["learning_rate"], 7) for r in rows if r["epoch"] == 0} == {scheduled[0]}
    for worker in (0, 1):
        used = [round(r["learning_rate"], 7) for r in rows if r["worker"] == worker]
        # In order: a worker takes each rate at its first exchange after the driver set it.
        assert used == sorted(used, reverse=True) and set(used) <= set(scheduled)
        assert len(set(used)) >= 3, used
    assert result.history.history["learning_rate"] == pytest.approx([rate(e) for e in range(4)])


def test_validation_split_holds_data_out(spark: Any, digits_data: Any) -> None:
    result = distkeras_plus.train(
        digits_data.to_spark(spark),
        default_model(64, 10),
        "adag",
        num_workers=2,
        epochs=2,
        validation_split=0.25,
    )
    n = len(digits_data.x_train)
    assert 0.65 * 2 * n < result.samples < 0.85 * 2 * n
    assert set(result.history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert len(result.history.history["val_accuracy"]) == 2


def test_large_validation_data_is_evaluated_on_spark_to_keras_own_scores(
    spark: Any, digits_data: Any
) -> None:
    import keras

    model = default_model(64, 10)
    top3 = keras.metrics.SparseTopKCategoricalAccuracy(3, name="top3")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy", top3])
    test_df = digits_data.to_spark(spark, "test").repartition(3)  # partial sums from three tasks
    keep = kept()
    distkeras_plus.train(
        digits_data.to_spark(spark),
        model,
        "adag",
        num_workers=1,  # the second slot evaluates
        epochs=2,
        window=4,
        callbacks=[keep],
        validation_data=test_df,
        validation_in_memory_mb=0,  # any size is large: on Spark
    )
    assert [set(logs) for logs in keep.logs] == [
        {"loss", "accuracy", "top3", *(f"val_{k}" for k in ("loss", "accuracy", "top3"))}
    ] * 2
    for logs, weights in zip(keep.logs, keep.weights, strict=True):
        model.set_weights(weights)
        whole = model.evaluate(digits_data.x_test, digits_data.y_test, verbose=0, return_dict=True)
        for name, value in whole.items():  # what Keras gives for the whole data set at once
            assert logs[f"val_{name}"] == pytest.approx(value, abs=1e-5), name
        assert logs["val_loss"] == pytest.approx(evaluate(test_df, model).loss, abs=1e-5)


def test_validation_on_spark_needs_a_free_task_slot(spark: Any, digits_data: Any) -> None:
    with pytest.raises(SettingError, match="its 2 workers take all 2: train with fewer workers"):
        distkeras_plus.train(
            digits_data.to_spark(spark),
            default_model(64, 10),
            "adag",
            num_workers=2,
            validation_data=digits_data.to_spark(spark, "test"),
            validation_in_memory_mb=0,
        )


def test_callbacks_need_a_parameter_server(spark: Any, digits_data: Any) -> None:
    import keras

    with pytest.raises(SettingError, match="ensemble trains without a parameter server"):
        distkeras_plus.train(
            digits_data.to_spark(spark),
            default_model(64, 10),
            "ensemble",
            callbacks=[keras.callbacks.EarlyStopping()],
        )


def events(folder: Path) -> dict[str, list[tuple[int, Any]]]:
    """Every summary in the event files of `folder`: tag -> [(step, value)]."""
    import tensorflow as tf

    found: dict[str, list[tuple[int, Any]]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                found.setdefault(value.tag, []).append((event.step, tf.make_ndarray(value.tensor)))
    return found


def test_tensorboard_gets_the_epochs_and_the_servers_scalars(
    spark: Any, digits_data: Any, tmp_path: Path
) -> None:
    result = distkeras_plus.train(
        digits_data.to_spark(spark),
        default_model(64, 10),
        "adag",
        num_workers=2,
        epochs=3,
        window=4,
        validation_data=digits_data.to_spark(spark, "test"),
        tensorboard_dir=str(tmp_path),
    )
    history = result.history.history
    train = events(tmp_path / "train")
    assert [step for step, _ in train["epoch_loss"]] == [0, 1, 2]
    assert [float(v) for _, v in train["epoch_loss"]] == pytest.approx(history["loss"])
    assert [float(v) for _, v in train["epoch_accuracy"]] == pytest.approx(history["accuracy"])
    validation = events(tmp_path / "validation")
    assert [float(v) for _, v in validation["epoch_loss"]] == pytest.approx(history["val_loss"])
    server = events(tmp_path / "server")
    assert {"commits", "commits_per_second", "bytes_received", "bytes_sent", "staleness_mean"} <= set(server)
    assert {"staleness_max", "worker_0/loss", "worker_1/loss", "staleness"} <= set(server)
    last_step, last_commits = server["commits"][-1]
    assert last_step == int(last_commits) == result.ps_stats["commits"] == result.ps_stats["clock"]
    assert int(server["bytes_received"][-1][1]) == result.ps_stats["bytes_in"]
    ((_, buckets),) = server["staleness"]  # (left edge, right edge, count) per bucket
    assert int(buckets[:, 2].sum()) == result.ps_stats["commits"]


def test_a_synchronous_run_stops_at_a_round_boundary(spark: Any, digits_data: Any) -> None:
    import keras

    def stop_after_second(epoch: int, logs: Any) -> None:
        if epoch == 1:
            stopper.model.stop_training = True

    stopper = keras.callbacks.LambdaCallback(on_epoch_end=stop_after_second)
    epochs = 60
    result = distkeras_plus.train(
        digits_data.to_spark(spark),
        default_model(64, 10),
        "averaging",
        num_workers=2,
        epochs=epochs,
        window=4,
        batch_size=8,
        callbacks=[stopper],
    )
    assert result.history.epoch == [0, 1]
    commits = [r for r in result.worker_history if "staleness" in r]
    rounds = {w: sum(1 for r in commits if r["worker"] == w) for w in (0, 1)}
    assert rounds[0] == rounds[1] == result.ps_stats["clock"]  # every worker ended after the same round
    assert result.samples < epochs * len(digits_data.x_train) / 4
