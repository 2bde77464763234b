"""The Spark ML Estimator, and every stage saved and loaded as Spark ML saves its own: real Spark,
real Keras, real files (local paths and Hadoop's file:// URIs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import distkeras_plus
from distkeras_plus.data.datasets import default_model
from distkeras_plus.errors import SettingError
from distkeras_plus.ml import SETTINGS, KerasEstimator, KerasModel
from distkeras_plus.settings import RunConfig
from distkeras_plus.transformers import (
    AccuracyEvaluator,
    F1Evaluator,
    LabelIndexTransformer,
    LossEvaluator,
    MinMaxTransformer,
    ModelPredictor,
    OneHotTransformer,
    ReshapeTransformer,
    Standardizer,
    StandardTransformer,
    VectorToArrayTransformer,
)

#: A PipelineModel (Standardizer's transformer, a fitted KerasModel) saved by distkeras-plus 0.1.0,
#: with the predictions it gave then (`make_fixture`): what a new version must still load.
FIXTURE = Path(__file__).parent / "fixtures" / "pipeline-0.1.0"


def test_the_estimators_params_are_the_runs_settings() -> None:
    estimator = KerasEstimator(default_model(64, 10), batchSize=16, numWorkers=3, options={"window": 4})
    assert {"batchSize", "numWorkers", "featuresCol", "labelCol", "learningRate", "options"} <= set(SETTINGS)
    config = estimator.run_config()
    assert (config.batch_size, config.workers, config.options) == (16, 3, {"window": 4})
    assert config.epochs == RunConfig().epochs and estimator.getOrDefault("plugin") == "adag"
    for key in SETTINGS:
        assert estimator.hasParam(key) and estimator.getParam(key).doc  # the setting's own help
    with pytest.raises(SettingError, match="batch_size must be at least 1, got 0"):
        KerasEstimator(default_model(64, 10), batchSize=0)
    with pytest.raises(SettingError, match="KerasEstimator has no Param batch_size; its Params: plugin"):
        KerasEstimator(default_model(64, 10), batch_size=8)


def test_fit_trains_as_train_does_and_transform_predicts(spark: Any, digits_data: Any) -> None:
    train_df, test_df = digits_data.to_spark(spark), digits_data.to_spark(spark, "test")
    model = default_model(64, 10)
    before = model.get_weights()
    estimator = KerasEstimator(model, epochs=4, numWorkers=2, options={"window": 6})
    fitted = estimator.fit(train_df)
    assert isinstance(fitted, KerasModel) and fitted.model is not model
    for got, want in zip(model.get_weights(), before, strict=True):  # the estimator's model stays
        np.testing.assert_array_equal(got, want)
    assert len(fitted.history["loss"]) == 4
    scored = fitted.transform(test_df)
    assert {"prediction", "probability"} <= set(scored.columns)
    accuracy = AccuracyEvaluator().evaluate(scored)
    trained = distkeras_plus.train(train_df, default_model(64, 10), "adag", num_workers=2, epochs=4, window=6)
    _, expected = trained.model.evaluate(digits_data.x_test, digits_data.y_test, verbose=0)
    assert accuracy > 0.85 and abs(accuracy - expected) < 0.05, (accuracy, expected)


def _params(stage: Any) -> dict[str, Any]:
    return {p.name: v for p, v in stage.extractParamMap().items()}


def _same_model(a: Any, b: Any) -> None:
    for x, y in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(x, y)


def test_every_stage_saves_and_loads(spark: Any, digits_data: Any, tmp_path: Path) -> None:
    import keras

    model = default_model(64, 10)
    model.compile(optimizer=keras.optimizers.SGD(0.02), loss="sparse_categorical_crossentropy")
    stages: list[Any] = [
        MinMaxTransformer(inputCol="x", outputCol="y", oMin=0.0, oMax=16.0, nMin=-1.0),
        StandardTransformer(inputCol="x", mean=[1.0, 2.0], std=[3.0, 4.0]),
        Standardizer(inputCol="x", outputCol="z"),
        OneHotTransformer(outputDim=7, inputCol="digit"),
        LabelIndexTransformer(activationThreshold=0.3, defaultIndex=-2),
        ReshapeTransformer(shape=[8, 8], outputCol="img"),
        VectorToArrayTransformer(inputCol="v"),
        AccuracyEvaluator(predictionCol="p", labelCol="digit"),
        F1Evaluator(labelCol="l"),
        LossEvaluator(lossCol="l"),
        ModelPredictor(model, probabilityCol=None, labelCol="label", batchSize=64),
        KerasEstimator(model, plugin="downpour", epochs=3, learningRate=0.01, metrics=["accuracy"]),
    ]
    for i, stage in enumerate(stages):
        path = str(tmp_path / f"{i}-{type(stage).__name__}")
        stage.write().save(path)
        stage.write().overwrite().save(path)  # over the first
        loaded = type(stage).load(path)
        assert type(loaded) is type(stage) and loaded.uid == stage.uid
        assert _params(loaded) == _params(stage), type(stage).__name__
        if hasattr(stage, "model"):
            _same_model(loaded.model, stage.model)
            assert type(loaded.model.optimizer).__name__ == "SGD"  # compiled as it was
    loaded_estimator = KerasEstimator.load(str(tmp_path / "11-KerasEstimator"))
    assert loaded_estimator.run_config() == stages[-1].run_config()

    # A fitted model, at a Hadoop URI, predicts as it did.
    fitted = KerasEstimator(default_model(64, 10), epochs=1).fit(digits_data.to_spark(spark))
    uri = (tmp_path / "fitted").as_uri()
    fitted.write().save(uri)
    again = KerasModel.load(uri)
    assert again.history == fitted.history and len(again.history["loss"]) == 1
    test_df = digits_data.to_spark(spark, "test")
    first = fitted.transform(test_df).select("probability").toArrow()
    assert again.transform(test_df).select("probability").toArrow().equals(first)


def test_a_saved_stage_of_another_class_is_refused(tmp_path: Path) -> None:
    from distkeras_plus.errors import DataError

    ModelPredictor(default_model(64, 10)).write().save(str(tmp_path / "p"))
    with pytest.raises(DataError, match=r"holds a distkeras_plus\.transformers\.ModelPredictor, not a "):
        KerasModel.load(str(tmp_path / "p"))


def test_a_pipeline_saves_and_loads_with_the_same_predictions(
    spark: Any, digits_data: Any, tmp_path: Path
) -> None:
    from pyspark.ml import Pipeline, PipelineModel

    pipeline = Pipeline(
        stages=[
            Standardizer(outputCol="standard"),
            KerasEstimator(default_model(64, 10), featuresCol="standard", epochs=2, options={"window": 4}),
        ]
    )
    pipeline.write().save(str(tmp_path / "pipeline"))
    unfitted = Pipeline.load(str(tmp_path / "pipeline"))
    assert [type(s) for s in unfitted.getStages()] == [Standardizer, KerasEstimator]
    estimators: list[Any] = [unfitted.getStages()[1], pipeline.getStages()[1]]
    assert estimators[0].run_config() == estimators[1].run_config()

    fitted = pipeline.fit(digits_data.to_spark(spark))
    fitted.write().save(str(tmp_path / "fitted"))
    loaded = PipelineModel.load(str(tmp_path / "fitted"))
    test_df = digits_data.to_spark(spark, "test")
    want = fitted.transform(test_df).select("prediction", "probability").toArrow()
    assert loaded.transform(test_df).select("prediction", "probability").toArrow().equals(want)
    assert AccuracyEvaluator().evaluate(loaded.transform(test_df)) > 0.5


def test_a_pipeline_saved_by_an_earlier_version_loads(spark: Any) -> None:
    from pyspark.ml import PipelineModel

    loaded = PipelineModel.load(str(FIXTURE / "model"))
    expected = json.loads((FIXTURE / "expected.json").read_text())
    df = spark.createDataFrame([(row,) for row in expected["features"]], "features array<float>")
    got = loaded.transform(df).select("prediction", "probability").collect()
    assert [r["prediction"] for r in got] == expected["prediction"]
    np.testing.assert_allclose([r["probability"] for r in got], expected["probability"], rtol=1e-6)


@pytest.mark.slow
def test_tuning_picks_the_best_learning_rate_and_option(spark: Any, digits_data: Any) -> None:
    from pyspark.ml.tuning import ParamGridBuilder, TrainValidationSplit

    estimator = KerasEstimator(default_model(64, 10), epochs=3, numWorkers=2)
    grid = (
        ParamGridBuilder()
        .addGrid(estimator.getParam("learningRate"), [0.01, 1e-5])
        .addGrid(estimator.getParam("options"), [{"window": 4}, {"window": 8}])
        .build()
    )
    tuning = TrainValidationSplit(
        estimator=estimator, estimatorParamMaps=grid, evaluator=AccuracyEvaluator(), trainRatio=0.75, seed=1
    )
    tuned = tuning.fit(digits_data.to_spark(spark))
    metrics = tuned.validationMetrics
    assert len(metrics) == 4
    best = grid[int(np.argmax(metrics))]
    assert best[estimator.getParam("learningRate")] == 0.01  # 1e-5 barely moves in 3 epochs
    assert min(metrics) < 0.5 < max(metrics), metrics
    assert isinstance(tuned.bestModel, KerasModel)
    assert AccuracyEvaluator().evaluate(tuned.bestModel.transform(digits_data.to_spark(spark, "test"))) > 0.8


@pytest.mark.slow
def test_a_saved_pipeline_model_predicts_the_same_in_a_fresh_process(
    spark: Any, digits_data: Any, tmp_path: Path
) -> None:
    import subprocess
    import sys

    from pyspark.ml import Pipeline

    fitted = Pipeline(
        stages=[
            Standardizer(outputCol="standard"),
            KerasEstimator(default_model(64, 10), featuresCol="standard", epochs=1),
        ]
    ).fit(digits_data.to_spark(spark))
    fitted.write().save((tmp_path / "fitted").as_uri())
    test_path = tmp_path / "test.parquet"
    digits_data.to_spark(spark, "test").write.parquet(str(test_path))
    want: Any = fitted.transform(spark.read.parquet(str(test_path))).select("probability").toPandas()
    script = f"""
from pyspark.ml import PipelineModel
from distkeras_plus.spark.session import local_session
spark = local_session(1)
loaded = PipelineModel.load({(tmp_path / "fitted").as_uri()!r})
scored = loaded.transform(spark.read.parquet({str(test_path)!r}))
scored.select("probability").write.parquet({str(tmp_path / "got")!r})
"""
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, timeout=240)
    got: Any = spark.read.parquet(str(tmp_path / "got")).toPandas()
    assert len(got) == len(want) == len(digits_data.x_test)
    np.testing.assert_array_equal(np.stack(got["probability"]), np.stack(want["probability"]))


def make_fixture(spark: Any, digits_data: Any) -> None:
    """Writes FIXTURE (run by hand, once per format change: `python -c` with a session)."""
    from pyspark.ml import Pipeline

    pipeline = Pipeline(
        stages=[
            Standardizer(outputCol="standard"),
            KerasEstimator(default_model(64, 10), featuresCol="standard", epochs=1),
        ]
    )
    fitted = pipeline.fit(digits_data.to_spark(spark))
    fitted.write().overwrite().save(str(FIXTURE / "model"))
    features = digits_data.x_test[:8].astype(np.float32)
    df = spark.createDataFrame([(row.tolist(),) for row in features], "features array<float>")
    got = fitted.transform(df).select("prediction", "probability").collect()
    expected = {
        "features": features.tolist(),
        "prediction": [r["prediction"] for r in got],
        "probability": [r["probability"] for r in got],
    }
    (FIXTURE / "expected.json").write_text(json.dumps(expected))
