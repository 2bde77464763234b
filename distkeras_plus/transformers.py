"""Spark ML stages for Keras data: column-wise transformers (Spark SQL expressions, no Python per
row), a `ModelPredictor` (Arrow batches) and evaluators, all composable in a `pyspark.ml.Pipeline`
and saved and loaded as Spark ML saves its own (`stage.write().overwrite().save(path)`,
`Class.load(path)`, a whole `PipelineModel`).

    Pipeline(stages=[
        VectorToArrayTransformer(inputCol="raw", outputCol="x"),
        MinMaxTransformer(inputCol="x", outputCol="features", oMin=0.0, oMax=255.0),
        ModelPredictor(model, featuresCol="features"),
        LabelIndexTransformer(inputCol="probability", outputCol="predicted"),
    ]).fit(df).transform(df)
"""

from __future__ import annotations

import math
import os
from typing import Any

from pyspark.ml import Estimator, Transformer
from pyspark.ml.evaluation import Evaluator
from pyspark.ml.functions import vector_to_array
from pyspark.ml.linalg import VectorUDT
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasInputCol, HasLabelCol, HasOutputCol, HasPredictionCol
from pyspark.ml.util import (
    DefaultParamsReadable,
    DefaultParamsReader,
    DefaultParamsWritable,
    DefaultParamsWriter,
    MLReadable,
    MLReader,
    MLWritable,
    MLWriter,
)
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from distkeras_plus.errors import DataError, SettingError
from distkeras_plus.spark.predict import from_confusion, label_index, predict

#: The Keras model of a saved stage, beside Spark ML's metadata.
MODEL_FILE = "model.keras"


def _column(df: DataFrame, name: str) -> tuple[Column, T.DataType]:
    """A column by name, a clear error when it is missing; vectors become arrays."""
    fields = {f.name: f.dataType for f in df.schema.fields}
    if name not in fields:
        raise DataError(f"no column {name!r}; the data has columns: {', '.join(fields)}")
    dtype = fields[name]
    if isinstance(dtype, VectorUDT):
        return vector_to_array(F.col(name)), T.ArrayType(T.DoubleType())
    return F.col(name), dtype


class _Overwrites(MLWriter):
    """`write().overwrite()` under Spark Connect too: pyspark's own removes the old folder
    through the JVM, which a Connect client has not; there it is removed as the model file is
    written (pyarrow's file systems for a URI, this machine's for a path)."""

    def _handleOverwrite(self, path: str) -> None:
        from distkeras_plus.data.storage import remove_tree
        from distkeras_plus.spark.session import is_connect

        if is_connect(self.sparkSession):
            remove_tree(path)
        else:
            super()._handleOverwrite(path)


class _ParamsWriter(_Overwrites, DefaultParamsWriter):
    pass


class _Writable(DefaultParamsWritable):
    """Saved as Spark ML saves a stage of Params alone, and overwritten under Connect too."""

    def write(self) -> MLWriter:
        return _ParamsWriter(self)  # type: ignore[arg-type]


def _each(col: Column, dtype: T.DataType, fn: Any) -> Column:
    """`fn` applied to a number, or to every element of an array."""
    return F.transform(col, fn) if isinstance(dtype, T.ArrayType) else fn(col)


class _ColumnTransformer(
    Transformer, HasInputCol, HasOutputCol, DefaultParamsReadable["_ColumnTransformer"], _Writable
):
    """Adds `outputCol` computed from `inputCol` by one Spark SQL expression."""

    def _expr(self, col: Column, dtype: T.DataType) -> Column:
        raise NotImplementedError

    def _transform(self, dataset: DataFrame) -> DataFrame:
        col, dtype = _column(dataset, self.getInputCol())
        return dataset.withColumn(self.getOutputCol(), self._expr(col, dtype))


class MinMaxTransformer(_ColumnTransformer):
    """Rescales numbers (or arrays, vectors) from [oMin, oMax] to [nMin, nMax]."""

    oMin = Param(Params._dummy(), "oMin", "smallest value of the input", TypeConverters.toFloat)
    oMax = Param(Params._dummy(), "oMax", "largest value of the input", TypeConverters.toFloat)
    nMin = Param(Params._dummy(), "nMin", "smallest value of the output", TypeConverters.toFloat)
    nMax = Param(Params._dummy(), "nMax", "largest value of the output", TypeConverters.toFloat)

    def __init__(
        self,
        *,
        inputCol: str = "features",
        outputCol: str = "features_scaled",
        oMin: float = 0.0,
        oMax: float = 1.0,
        nMin: float = 0.0,
        nMax: float = 1.0,
    ) -> None:
        super().__init__()
        self._set(inputCol=inputCol, outputCol=outputCol, oMin=oMin, oMax=oMax, nMin=nMin, nMax=nMax)
        if self.getOrDefault(self.oMax) == self.getOrDefault(self.oMin):
            raise SettingError("oMin and oMax must differ")

    def _expr(self, col: Column, dtype: T.DataType) -> Column:
        o_min, o_max = self.getOrDefault(self.oMin), self.getOrDefault(self.oMax)
        n_min, n_max = self.getOrDefault(self.nMin), self.getOrDefault(self.nMax)
        scale = (n_max - n_min) / (o_max - o_min)
        return _each(col, dtype, lambda x: ((x - F.lit(o_min)) * F.lit(scale) + F.lit(n_min)).cast("float"))


class StandardTransformer(_ColumnTransformer):
    """(x - mean) / std, with one mean and std for every element, or one per element."""

    mean = Param(Params._dummy(), "mean", "means, one or one per element", TypeConverters.toListFloat)
    std = Param(Params._dummy(), "std", "standard deviations, like mean", TypeConverters.toListFloat)

    def __init__(
        self,
        *,
        inputCol: str = "features",
        outputCol: str = "features_standard",
        mean: list[float] | None = None,
        std: list[float] | None = None,
    ) -> None:
        super().__init__()
        self._set(inputCol=inputCol, outputCol=outputCol, mean=mean or [0.0], std=std or [1.0])
        mean, std = self.getOrDefault(self.mean), self.getOrDefault(self.std)
        if len(mean) != len(std):
            raise SettingError(f"mean has {len(mean)} values but std has {len(std)}")

    def _expr(self, col: Column, dtype: T.DataType) -> Column:
        mean, std = self.getOrDefault(self.mean), self.getOrDefault(self.std)
        inv = [1.0 / s if s > 0 else 1.0 for s in std]  # a constant element stays centred, not NaN
        if len(mean) == 1:
            return _each(col, dtype, lambda x: ((x - F.lit(mean[0])) * F.lit(inv[0])).cast("float"))
        if not isinstance(dtype, T.ArrayType):
            raise DataError(f"{len(mean)} means need an array or vector column, not {dtype.simpleString()}")
        means, invs = F.array(*map(F.lit, mean)), F.array(*map(F.lit, inv))
        checked = F.when(F.size(col) == len(mean), col).otherwise(
            F.raise_error(F.lit(f"every row of {self.getInputCol()} must have {len(mean)} values"))
        )
        centred = F.zip_with(checked, means, lambda x, m: x - m)
        return F.zip_with(centred, invs, lambda x, s: (x * s).cast("float"))


class Standardizer(
    Estimator["StandardTransformer"],
    HasInputCol,
    HasOutputCol,
    DefaultParamsReadable["Standardizer"],
    _Writable,
):
    """Learns each element's mean and standard deviation (Spark SQL aggregates) and gives the
    `StandardTransformer` that applies them."""

    def __init__(self, *, inputCol: str = "features", outputCol: str = "features_standard") -> None:
        super().__init__()
        self._set(inputCol=inputCol, outputCol=outputCol)

    def _fit(self, dataset: DataFrame) -> StandardTransformer:
        col, dtype = _column(dataset, self.getInputCol())
        if isinstance(dtype, T.ArrayType):
            stats = (
                dataset.select(F.posexplode(col).alias("i", "x"))
                .groupBy("i")
                .agg(F.mean("x").alias("m"), F.stddev_pop("x").alias("s"))
                .orderBy("i")
                .collect()
            )
        else:
            stats = dataset.select(F.mean(col).alias("m"), F.stddev_pop(col).alias("s")).collect()
        if not stats or stats[0]["m"] is None:
            raise DataError("cannot learn means and deviations from empty data")
        return StandardTransformer(
            inputCol=self.getInputCol(),
            outputCol=self.getOutputCol(),
            mean=[float(r["m"]) for r in stats],
            std=[float(r["s"] or 0.0) for r in stats],
        )


class OneHotTransformer(_ColumnTransformer):
    """A class index as a one-hot array of `outputDim` floats (an index out of range gives zeros)."""

    outputDim = Param(Params._dummy(), "outputDim", "number of classes", TypeConverters.toInt)

    def __init__(
        self, *, outputDim: int = 2, inputCol: str = "label", outputCol: str = "label_one_hot"
    ) -> None:
        super().__init__()
        self._set(outputDim=outputDim, inputCol=inputCol, outputCol=outputCol)
        if self.getOrDefault(self.outputDim) < 1:
            raise SettingError("outputDim must be at least 1")

    def _expr(self, col: Column, dtype: T.DataType) -> Column:
        n = self.getOrDefault(self.outputDim)
        return F.transform(
            F.sequence(F.lit(0), F.lit(n - 1)), lambda i: F.when(i == col.cast("int"), 1.0).otherwise(0.0)
        ).cast("array<float>")


class LabelIndexTransformer(_ColumnTransformer):
    """The index of the largest value of an array (probabilities, one-hot), or `defaultIndex` when
    that value is below `activationThreshold`."""

    activationThreshold = Param(
        Params._dummy(), "activationThreshold", "smallest winning value", TypeConverters.toFloat
    )
    defaultIndex = Param(Params._dummy(), "defaultIndex", "index below the threshold", TypeConverters.toInt)

    def __init__(
        self,
        *,
        inputCol: str = "probability",
        outputCol: str = "prediction_index",
        activationThreshold: float = -math.inf,
        defaultIndex: int = -1,
    ) -> None:
        super().__init__()
        self._set(
            inputCol=inputCol,
            outputCol=outputCol,
            activationThreshold=activationThreshold,
            defaultIndex=defaultIndex,
        )

    def _expr(self, col: Column, dtype: T.DataType) -> Column:
        if not isinstance(dtype, T.ArrayType):
            raise DataError(f"{self.getInputCol()} must be an array or vector, not {dtype.simpleString()}")
        best = F.array_max(col)
        index = (F.array_position(col, best) - 1).cast("int")
        threshold = self.getOrDefault(self.activationThreshold)
        return F.when(best >= F.lit(threshold), index).otherwise(F.lit(self.getOrDefault(self.defaultIndex)))


class ReshapeTransformer(_ColumnTransformer):
    """A flat array as nested arrays of `shape` (e.g. [28, 28]); a row of another size is an error."""

    shape = Param(Params._dummy(), "shape", "the output shape", TypeConverters.toListInt)

    def __init__(
        self,
        *,
        shape: list[int] | None = None,
        inputCol: str = "features",
        outputCol: str = "features_shaped",
    ) -> None:
        super().__init__()
        self._set(inputCol=inputCol, outputCol=outputCol)
        if shape is not None:  # Spark ML loads a saved stage without, and sets it after
            if not shape or any(d < 1 for d in shape):
                raise SettingError(f"shape must be positive sizes, got {shape}")
            self._set(shape=shape)

    def _expr(self, col: Column, dtype: T.DataType) -> Column:
        if not self.isDefined(self.shape):
            raise SettingError("ReshapeTransformer needs a shape")
        shape = self.getOrDefault(self.shape)
        size = math.prod(shape)
        nested = F.when(F.size(col) == size, col).otherwise(
            F.raise_error(F.lit(f"every row of {self.getInputCol()} must have {size} values to make {shape}"))
        )
        for i in range(len(shape) - 1, 0, -1):
            width = shape[i]
            count = math.prod(shape[:i])
            outer = nested
            nested = F.transform(
                F.sequence(F.lit(0), F.lit(count - 1)),
                _slicer(outer, width),
            )
        return nested


def _slicer(outer: Column, width: int) -> Any:
    return lambda k: F.slice(outer, k * width + 1, width)


class VectorToArrayTransformer(_ColumnTransformer):
    """An ML vector (dense or sparse) as an array of floats, which Keras workers read directly."""

    def __init__(self, *, inputCol: str = "features", outputCol: str = "features_array") -> None:
        super().__init__()
        self._set(inputCol=inputCol, outputCol=outputCol)

    def _expr(self, col: Column, dtype: T.DataType) -> Column:
        if not isinstance(dtype, T.ArrayType):
            raise DataError(f"{self.getInputCol()} is not a vector: {dtype.simpleString()}")
        return col.cast("array<float>")


class KerasStage(Params, MLWritable, MLReadable[Any]):
    """A stage that holds a Keras model: saved as Spark ML saves any stage (its Params in
    `PATH/metadata`) with the model beside them as `PATH/model.keras`, on a local path or any
    URI Spark reaches. Its class takes the model as its first argument."""

    model: Any

    def write(self) -> MLWriter:
        return _KerasWriter(self)

    @classmethod
    def read(cls) -> MLReader[Any]:
        return _KerasReader(cls)

    def _extra_metadata(self) -> dict[str, Any]:
        """What else the stage saves in its metadata (plain JSON data)."""
        return {}

    def _restore(self, metadata: dict[str, Any]) -> None:
        """Takes back what `_extra_metadata` saved."""


class _KerasWriter(_Overwrites):
    def __init__(self, instance: KerasStage) -> None:
        super().__init__()
        self.instance = instance

    def saveImpl(self, path: str) -> None:
        from distkeras_plus.data.storage import save_model_file

        try:
            DefaultParamsWriter.saveMetadata(
                self.instance, path, self.sparkSession, extraMetadata=self.instance._extra_metadata()
            )
        except TypeError as e:  # a Param holding a Python object (a Keras loss given as one)
            raise SettingError(
                f"cannot save {type(self.instance).__name__}: {e}; give names or configs, or compile "
                "the model with the objects (its compile() is saved with it)"
            ) from None
        save_model_file(self.instance.model, os.path.join(path, MODEL_FILE), self.sparkSession)


class _KerasReader(MLReader[Any]):
    def __init__(self, cls: type[KerasStage]) -> None:
        super().__init__()
        self.cls = cls

    def load(self, path: str) -> Any:
        from distkeras_plus.data.storage import load_model_file

        expected = f"{self.cls.__module__}.{self.cls.__name__}"
        metadata = DefaultParamsReader.loadMetadata(path, self.sparkSession)
        if metadata["class"] != expected:
            raise DataError(f"{path} holds a {metadata['class']}, not a {expected}")
        model = load_model_file(os.path.join(path, MODEL_FILE), self.sparkSession, compiled=True)
        instance = self.cls(model)  # type: ignore[call-arg]
        instance._resetUid(metadata["uid"])
        DefaultParamsReader.getAndSetParams(instance, metadata)
        instance._restore(metadata)
        return instance


def _param(name: str, doc: str, converter: Any = TypeConverters.identity) -> Param[Any]:
    return Param(Params._dummy(), name, doc, converter)


class ModelPredictor(Transformer, KerasStage):
    """Adds a Keras model's predictions: `predictionCol` (class index, or the value of a model with
    one output) and `probabilityCol` (its outputs); with `labelCol` also `lossCol`, each row's loss."""

    featuresCol = _param("featuresCol", "features column", TypeConverters.toString)
    predictionCol = _param("predictionCol", "predicted class (or value) column", TypeConverters.toString)
    probabilityCol = _param("probabilityCol", "the model's outputs column (none: not added)")
    labelCol = _param("labelCol", "label column, to add each row's loss (none: no loss)")
    loss = _param("loss", "Keras loss of lossCol", TypeConverters.toString)
    lossCol = _param("lossCol", "each row's loss column", TypeConverters.toString)
    batchSize = _param("batchSize", "rows the model predicts at once", TypeConverters.toInt)

    def __init__(
        self,
        model: Any,
        *,
        featuresCol: str = "features",
        predictionCol: str = "prediction",
        probabilityCol: str | None = "probability",
        labelCol: str | None = None,
        loss: str = "sparse_categorical_crossentropy",
        lossCol: str = "loss",
        batchSize: int = 256,
    ) -> None:
        super().__init__()
        self.model = model
        self._set(
            featuresCol=featuresCol,
            predictionCol=predictionCol,
            probabilityCol=probabilityCol,
            labelCol=labelCol,
            loss=loss,
            lossCol=lossCol,
            batchSize=batchSize,
        )

    def _transform(self, dataset: DataFrame) -> DataFrame:
        get = self.getOrDefault
        label = get(self.labelCol)
        predicted: DataFrame = predict(
            dataset,
            self.model,
            features_col=get(self.featuresCol),
            prediction_col=get(self.predictionCol),
            probability_col=get(self.probabilityCol),
            label_col=label,
            loss=get(self.loss) if label else None,
            loss_col=get(self.lossCol),
            batch_size=get(self.batchSize),
        )
        return predicted


class _LabelledEvaluator(Evaluator, HasPredictionCol, HasLabelCol, DefaultParamsReadable[Any], _Writable):
    def __init__(self, *, predictionCol: str = "prediction", labelCol: str = "label") -> None:
        super().__init__()
        self._set(predictionCol=predictionCol, labelCol=labelCol)

    def _pairs(self, dataset: DataFrame) -> DataFrame:
        prediction, label = self.getPredictionCol(), self.getLabelCol()
        fields = {f.name: f.dataType for f in dataset.schema.fields}
        for name in (prediction, label):
            if name not in fields:
                raise DataError(f"no column {name!r}; the data has columns: {', '.join(fields)}")
        truth = label_index(label, fields[label])
        return dataset.select(truth.alias("t"), F.col(prediction).cast("int").alias("p"))

    def isLargerBetter(self) -> bool:
        return True


class AccuracyEvaluator(_LabelledEvaluator):
    """The fraction of rows whose predicted class is the label's (index or one-hot)."""

    def _evaluate(self, dataset: DataFrame) -> float:
        row = self._pairs(dataset).agg(F.avg((F.col("t") == F.col("p")).cast("double")).alias("a")).first()
        if row is None or row["a"] is None:
            raise DataError("cannot evaluate empty data")
        return float(row["a"])


class F1Evaluator(_LabelledEvaluator):
    """Macro-averaged F1 over the classes that occur as labels or predictions."""

    def _evaluate(self, dataset: DataFrame) -> float:
        cells = self._pairs(dataset).groupBy("t", "p").count().collect()
        return from_confusion([(r["t"], r["p"], r["count"], 0.0) for r in cells]).macro_f1


class LossEvaluator(Evaluator, DefaultParamsReadable["LossEvaluator"], _Writable):
    """The mean of a per-row loss column, as `ModelPredictor(labelCol=...)` writes it."""

    lossCol = _param("lossCol", "each row's loss column", TypeConverters.toString)

    def __init__(self, *, lossCol: str = "loss") -> None:
        super().__init__()
        self._set(lossCol=lossCol)

    def _evaluate(self, dataset: DataFrame) -> float:
        column = self.getOrDefault(self.lossCol)
        if column not in dataset.columns:
            raise DataError(f"no column {column!r}: give ModelPredictor a labelCol to write each row's loss")
        row = dataset.agg(F.avg(column).alias("l")).first()
        if row is None or row["l"] is None:
            raise DataError("cannot evaluate empty data")
        return float(row["l"])

    def isLargerBetter(self) -> bool:
        return False
