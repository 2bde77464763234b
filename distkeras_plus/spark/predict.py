"""Batched inference and evaluation on Spark: the model travels to each task as a `.keras` archive,
rows arrive as Arrow record batches and leave with their predictions (never one row at a time);
metrics are Spark SQL aggregates over the predicted columns."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from distkeras_plus.data.tables import (
    check_features,
    check_inputs,
    check_model,
    default_loss,
    feature_values,
    features_expr,
    label_values,
    prepare,
)
from distkeras_plus.errors import DataError

_X = "__dk_features"


@dataclass(frozen=True)
class PredictConfig:
    """What every prediction task gets (plain data: it travels inside the Spark task)."""

    model: bytes
    num_features: int
    batch_size: int
    prediction_col: str
    probability_col: str | None
    label_col: str | None
    loss: str | None
    loss_col: str
    classify: bool


def predict(
    df: Any,
    model: Any,
    *,
    features_col: str = "features",
    prediction_col: str = "prediction",
    probability_col: str | None = "probability",
    label_col: str | None = None,
    loss: str | None = None,
    loss_col: str = "loss",
    batch_size: int = 256,
    checked: bool = False,
) -> Any:
    """`df` with the model's predictions added: `prediction_col` (the class index, or the value for a
    model with one output), `probability_col` (the model's outputs, for classifiers) and, when
    `label_col` and `loss` are given, `loss_col` (each row's loss, Keras' own loss function).
    The features are checked first (one Spark aggregation), unless they are `checked` already."""
    from pyspark.sql import types as T

    from distkeras_plus.data.storage import model_bytes

    fields = {f.name: f.dataType for f in df.schema.fields}
    if label_col is not None and label_col not in fields:
        raise DataError(f"no label column {label_col!r}; the data has columns: {', '.join(fields)}")
    for col in (prediction_col, probability_col, loss_col if loss else None):
        if col is not None and col in fields:
            raise DataError(f"the data already has a column {col!r}; choose another output column name")
    if checked:
        features, num_features = features_expr(df, features_col), int(np.prod(model.input_shape[1:]))
    else:
        features, num_features = check_features(df, features_col)
        check_inputs(model, num_features)
    outputs = int(np.prod(model.output_shape[1:]))
    classify = outputs > 1
    cfg = PredictConfig(
        model=model_bytes(model),
        num_features=num_features,
        batch_size=batch_size,
        prediction_col=prediction_col,
        probability_col=probability_col if classify else None,
        label_col=label_col,
        loss=loss if label_col is not None else None,
        loss_col=loss_col,
        classify=classify,
    )
    schema = T.StructType(
        [
            *df.schema.fields,
            T.StructField(prediction_col, T.IntegerType() if classify else T.DoubleType()),
            *(
                [T.StructField(cfg.probability_col, T.ArrayType(T.FloatType()))]
                if cfg.probability_col
                else []
            ),
            *([T.StructField(loss_col, T.DoubleType())] if cfg.loss else []),
        ]
    )
    with_x = df.withColumn(_X, features)

    def task(batches: Iterator[Any]) -> Iterator[Any]:
        return _predict_task(cfg, batches)

    return with_x.mapInArrow(task, schema)


def _predict_task(cfg: PredictConfig, batches: Iterator[Any]) -> Iterator[Any]:
    """Runs on an executor: predicts each Arrow batch whole."""
    import pyarrow as pa

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    from distkeras_plus.data.storage import model_from_bytes

    model = model_from_bytes(cfg.model)
    loss_fn = keras.losses.get(cfg.loss) if cfg.loss else None
    for batch in batches:
        if batch.num_rows == 0:
            continue
        index = batch.schema.get_field_index(_X)
        x = feature_values(batch.column(index), cfg.num_features)
        x = x.reshape((batch.num_rows, *model.input_shape[1:]))
        out = np.asarray(model.predict(x, batch_size=cfg.batch_size, verbose=0), np.float32)
        out = out.reshape(batch.num_rows, -1)
        rest = batch.remove_column(index)
        if cfg.classify:
            rest = rest.append_column(cfg.prediction_col, pa.array(out.argmax(axis=1).astype(np.int32)))
        else:
            rest = rest.append_column(cfg.prediction_col, pa.array(out[:, 0].astype(np.float64)))
        if cfg.probability_col:
            flat = pa.array(out.ravel(), pa.float32())
            probs = pa.FixedSizeListArray.from_arrays(flat, out.shape[1]).cast(pa.list_(pa.float32()))
            rest = rest.append_column(cfg.probability_col, probs)
        if loss_fn is not None and cfg.label_col is not None:
            labels = batch.column(batch.schema.get_field_index(cfg.label_col))
            one_hot = pa.types.is_list(labels.type) or pa.types.is_fixed_size_list(labels.type)
            y = label_values(labels, one_hot)
            per_row = keras.ops.convert_to_numpy(loss_fn(y, out)).astype(np.float64).reshape(-1)
            rest = rest.append_column(cfg.loss_col, pa.array(per_row))
        yield rest


@dataclass(frozen=True)
class Evaluation:
    """Loss, accuracy and per-class precision, recall and F1 of a classifier on a data set."""

    samples: int
    loss: float | None
    accuracy: float
    classes: list[dict[str, Any]]

    @property
    def macro_f1(self) -> float:
        return float(np.mean([c["f1"] for c in self.classes])) if self.classes else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "loss": self.loss,
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "classes": self.classes,
        }


def evaluate(
    df: Any,
    model: Any,
    *,
    features_col: str = "features",
    label_col: str = "label",
    loss: str | None = None,
    batch_size: int = 256,
    checked: bool = False,
) -> Evaluation:
    """Predicts `df` on Spark and aggregates the metrics there; `loss` defaults to sparse or plain
    categorical cross-entropy, depending on the label. The data is checked first, as for training
    (one Spark aggregation), unless it is `checked` already."""
    from pyspark.sql import functions as F

    if not checked:
        check_model(model, prepare(df, features_col, label_col), label_col)
    fields = {f.name: f.dataType for f in df.schema.fields}
    one_hot = fields[label_col].typeName() in ("array", "vector")
    if loss is None:
        loss = default_loss(one_hot)
    predicted = predict(
        df.select(features_col, label_col),
        model,
        features_col=features_col,
        prediction_col="__dk_prediction",
        probability_col=None,
        label_col=label_col,
        loss=loss,
        loss_col="__dk_loss",
        batch_size=batch_size,
        checked=True,
    )
    truth = label_index(label_col, fields[label_col])
    counts = (
        predicted.select(truth.alias("t"), F.col("__dk_prediction").alias("p"), F.col("__dk_loss").alias("l"))
        .groupBy("t", "p")
        .agg(F.count(F.lit(1)).alias("n"), F.sum("l").alias("l"))
        .collect()
    )
    return from_confusion([(int(r["t"]), int(r["p"]), int(r["n"]), float(r["l"])) for r in counts])


def label_index(label_col: str, dtype: Any) -> Any:
    """The true class as an index, whether the label is an index, a one-hot array or a vector."""
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F

    if dtype.typeName() == "vector":
        arr = vector_to_array(F.col(label_col))
    elif dtype.typeName() == "array":
        arr = F.col(label_col)
    else:
        return F.col(label_col).cast("int")
    return (F.array_position(arr, F.array_max(arr)) - 1).cast("int")


def from_confusion(cells: list[tuple[int, int, int, float]]) -> Evaluation:
    """Metrics from (true, predicted, count, loss sum) cells of the confusion matrix."""
    samples = sum(n for _, _, n, _ in cells)
    if samples == 0:
        raise DataError("cannot evaluate empty data")
    correct = sum(n for t, p, n, _ in cells if t == p)
    loss = sum(cell[3] for cell in cells) / samples
    labels = sorted({t for t, *_ in cells} | {p for _, p, *_ in cells})
    classes = []
    for c in labels:
        tp = sum(n for t, p, n, _ in cells if t == c and p == c)
        predicted = sum(n for _, p, n, _ in cells if p == c)
        actual = sum(n for t, _, n, _ in cells if t == c)
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        classes.append({"class": c, "support": actual, "precision": precision, "recall": recall, "f1": f1})
    return Evaluation(samples=samples, loss=loss, accuracy=correct / samples, classes=classes)
