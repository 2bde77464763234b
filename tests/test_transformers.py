"""Spark ML stages: each transformer against NumPy, a whole Pipeline, saving and loading, errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from distkeras_plus.data.datasets import default_model
from distkeras_plus.errors import DataError
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


@pytest.fixture(scope="module")
def frame(spark: Any) -> Any:
    from pyspark.ml.linalg import Vectors

    rows = [
        (Vectors.dense([0.0, 128.0, 255.0, 64.0]), [0.1, 0.7, 0.2], 2, 7.0),
        (Vectors.sparse(4, {1: 255.0}), [0.5, 0.2, 0.3], 0, 1.0),
        (Vectors.dense([255.0, 0.0, 0.0, 32.0]), [0.2, 0.2, 0.6], 1, 4.0),
    ]
    return spark.createDataFrame(rows, ["raw", "probs", "label", "value"])


def column(df: Any, name: str) -> list[Any]:
    return [r[name] for r in df.orderBy("value").collect()]


def test_vector_to_array_and_min_max(frame: Any) -> None:
    arrays = VectorToArrayTransformer(inputCol="raw", outputCol="x").transform(frame)
    assert column(arrays, "x") == [[0.0, 255.0, 0.0, 0.0], [255.0, 0.0, 0.0, 32.0], [0.0, 128.0, 255.0, 64.0]]
    scaled = MinMaxTransformer(inputCol="x", outputCol="s", oMin=0.0, oMax=255.0, nMin=-1.0, nMax=1.0)
    got = np.array(column(scaled.transform(arrays), "s"), np.float32)
    np.testing.assert_allclose(got, np.array(column(arrays, "x")) / 255 * 2 - 1, atol=1e-6)
    # Works on a plain number and straight on a vector too.
    one = MinMaxTransformer(inputCol="value", outputCol="v", oMin=1.0, oMax=7.0).transform(frame)
    np.testing.assert_allclose(column(one, "v"), [0.0, 0.5, 1.0])
    direct = MinMaxTransformer(inputCol="raw", outputCol="s", oMin=0.0, oMax=255.0).transform(frame)
    assert column(direct, "s")[0] == [0.0, 1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="oMin and oMax must differ"):
        MinMaxTransformer(oMin=1.0, oMax=1.0)


def test_standardizer_learns_per_element_statistics(frame: Any) -> None:
    arrays = VectorToArrayTransformer(inputCol="raw", outputCol="x").transform(frame)
    model = Standardizer(inputCol="x", outputCol="z").fit(arrays)
    x = np.array(column(arrays, "x"))
    np.testing.assert_allclose(model.getOrDefault(model.mean), x.mean(axis=0))
    np.testing.assert_allclose(model.getOrDefault(model.std), x.std(axis=0))
    z = np.array(column(model.transform(arrays), "z"))
    np.testing.assert_allclose(z, (x - x.mean(0)) / x.std(0), atol=1e-5)
    scalar = StandardTransformer(inputCol="value", outputCol="z", mean=[4.0], std=[3.0]).transform(frame)
    np.testing.assert_allclose(column(scalar, "z"), [-1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="mean has 2 values but std has 1"):
        StandardTransformer(mean=[0.0, 1.0], std=[1.0])


def test_one_hot_and_label_index(frame: Any) -> None:
    hot = OneHotTransformer(outputDim=3, inputCol="label", outputCol="y").transform(frame)
    assert column(hot, "y") == [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    back = LabelIndexTransformer(inputCol="y", outputCol="i").transform(hot)
    assert column(back, "i") == column(frame, "label")
    picky = LabelIndexTransformer(inputCol="probs", outputCol="i", activationThreshold=0.55, defaultIndex=-1)
    assert column(picky.transform(frame), "i") == [-1, 2, 1]


def test_reshape_and_its_size_check(spark: Any) -> None:
    df = spark.createDataFrame([(list(range(12)),)], ["x"])
    shaped = ReshapeTransformer(shape=[2, 3, 2], inputCol="x", outputCol="t").transform(df).collect()[0]["t"]
    assert shaped == np.arange(12).reshape(2, 3, 2).tolist()
    with pytest.raises(Exception, match="must have 10 values"):
        ReshapeTransformer(shape=[2, 5], inputCol="x", outputCol="t").transform(df).collect()
    with pytest.raises(DataError, match="no column 'y'"):
        ReshapeTransformer(shape=[12], inputCol="y", outputCol="t").transform(df)


def test_pipeline_with_predictor_and_evaluators(spark: Any, digits_data: Any, tmp_path: Path) -> None:
    import keras
    from pyspark.ml import Pipeline, PipelineModel

    x, y = digits_data.x_test, digits_data.y_test
    raw = spark.createDataFrame(
        [([float(v) for v in x[i] * 16], int(y[i])) for i in range(len(x))], ["pixels", "digit"]
    )
    model = default_model(64, 10)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(digits_data.x_train, digits_data.y_train, epochs=20, verbose=0)
    stages: list[Any] = [
        MinMaxTransformer(inputCol="pixels", outputCol="features", oMin=0.0, oMax=16.0),
        OneHotTransformer(outputDim=10, inputCol="digit", outputCol="one_hot"),
    ]
    prepared = Pipeline(stages=stages).fit(raw)
    prepared.write().overwrite().save(str(tmp_path / "prep"))
    reloaded = PipelineModel.load(str(tmp_path / "prep"))
    features = reloaded.transform(raw)
    predictor = ModelPredictor(
        model, featuresCol="features", labelCol="one_hot", loss="categorical_crossentropy"
    )
    scored = predictor.transform(features)
    accuracy = AccuracyEvaluator(predictionCol="prediction", labelCol="digit").evaluate(scored)
    one_hot_accuracy = AccuracyEvaluator(predictionCol="prediction", labelCol="one_hot").evaluate(scored)
    expected = float((model.predict(x, verbose=0).argmax(1) == y).mean())
    assert accuracy == pytest.approx(expected) == pytest.approx(one_hot_accuracy)
    loss = LossEvaluator(lossCol="loss").evaluate(scored)
    keras_loss = float(keras.losses.SparseCategoricalCrossentropy()(y, model.predict(x, verbose=0)))
    assert loss == pytest.approx(keras_loss, rel=1e-4)
    from sklearn.metrics import f1_score

    predicted = [r["prediction"] for r in scored.select("prediction").collect()]
    truth = [r["digit"] for r in scored.select("digit").collect()]
    assert F1Evaluator(labelCol="digit").evaluate(scored) == pytest.approx(
        f1_score(truth, predicted, average="macro")
    )
    assert not LossEvaluator().isLargerBetter() and AccuracyEvaluator().isLargerBetter()
    with pytest.raises(DataError, match="give ModelPredictor a labelCol"):
        LossEvaluator(lossCol="loss").evaluate(features)
