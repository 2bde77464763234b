"""Getting training data to workers: column checks and conversion on the driver (Spark SQL),
and Arrow record batches to NumPy arrays on the executor (no row-at-a-time Python)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from distkeras_plus.errors import DataError


@dataclass(frozen=True)
class Columns:
    """How the prepared DataFrame is laid out: `features` (array<float>) and `label`."""

    features: str
    label: str
    num_features: int
    one_hot: bool  # label is an array<float> (one-hot) rather than a class index


@dataclass(frozen=True)
class Prepared:
    """The training data as workers read it, and what one pass over it found."""

    df: Any  # two columns: `features` (array<float>) and `label`
    columns: Columns
    rows: int
    classes: int  # the one-hot width, or the largest class index + 1


def default_loss(one_hot: bool) -> str:
    """Cross-entropy for the label's form: one-hot arrays or class indices."""
    return "categorical_crossentropy" if one_hot else "sparse_categorical_crossentropy"


def read(spark: Any, path: str | Path, features: str, label: str | None, optional_label: bool = False) -> Any:
    """A Parquet or CSV file or folder as a DataFrame: a local path, or a URI of any file system
    the Spark session can read (`hdfs://`, `s3a://`, `file://`, ...). A CSV file has a header; when
    it has no `features` column, every column but the label is a feature, in order (with
    `optional_label`, a file without the label column is all features)."""
    text = str(path)
    if "://" in text and not text.startswith("file://"):
        if text.rstrip("/").lower().endswith(".csv"):
            return _features_from_csv(_spark_read(spark, "csv", text), features, label, text, optional_label)
        return _spark_read(spark, "parquet", text)
    path = Path(text.removeprefix("file://"))
    if not path.exists():
        raise DataError(f"no data at {path}")
    files = (
        [path] if path.is_file() else sorted(p for p in path.iterdir() if not p.name.startswith((".", "_")))
    )
    suffixes = {p.suffix.lower() for p in files}
    if suffixes <= {".parquet"} and files:
        return _spark_read(spark, "parquet", str(path))
    if suffixes <= {".csv"} and files:
        return _features_from_csv(
            _spark_read(spark, "csv", str(path)), features, label, str(path), optional_label
        )
    raise DataError(f"{path} is neither Parquet nor CSV (found {', '.join(sorted(suffixes)) or 'nothing'})")


def _spark_read(spark: Any, fmt: str, path: str) -> Any:
    from pyspark.errors import AnalysisException

    try:
        if fmt == "csv":
            return spark.read.csv(path, header=True, inferSchema=True)
        return spark.read.parquet(path)
    except AnalysisException as e:
        raise DataError(f"cannot read {path}: {str(e).splitlines()[0]}") from None


def _features_from_csv(df: Any, features: str, label: str | None, path: str, optional_label: bool) -> Any:
    from pyspark.sql import functions as F

    if features in df.columns:
        return df
    if label is not None and label not in df.columns and not optional_label:
        raise DataError(f"no label column {label!r} in {path}; its columns: {', '.join(df.columns)}")
    inputs = [c for c in df.columns if c != label]
    array = F.array(*[F.col(f"`{c}`").cast("float") for c in inputs]).alias(features)
    return df.select(array, label) if label in df.columns else df.select(array)


def features_expr(df: Any, features: str) -> Any:
    """The features column as an `array<float>` expression."""
    from pyspark.ml.functions import vector_to_array
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    fields = {f.name: f.dataType for f in df.schema.fields}
    if features not in fields:
        raise DataError(f"no features column {features!r}; the data has columns: {', '.join(fields)}")
    ftype = fields[features]
    if isinstance(ftype, VectorUDT):
        return vector_to_array(F.col(features), "float32")
    if isinstance(ftype, T.ArrayType) and isinstance(ftype.elementType, T.NumericType):
        return F.col(features).cast("array<float>")
    raise DataError(
        f"features column {features!r} must be an array of numbers or an ML vector, "
        f"not {ftype.simpleString()}"
    )


def check_features(df: Any, features: str) -> tuple[Any, int]:
    """The features column as an `array<float>` expression and the number of values per row,
    checked in one Spark aggregation (nulls, ragged rows, NaN or infinite values)."""
    fcol = features_expr(df, features)
    found = df.select(fcol.alias("f")).agg(*_feature_profile()).first()
    if found["rows"] == 0:
        raise DataError("the data is empty")
    _check_features(found, features)
    return fcol, int(found["f_max"])


def prepare(df: Any, features: str, label: str) -> Prepared:
    """Selects and converts the two columns (vectors become arrays, numbers float32 or int) and
    checks them in one Spark aggregation, so that what would fail on the executors (a null,
    fractional or negative label, ragged or non-finite features) is one line before training."""
    from pyspark.ml.functions import vector_to_array
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    fields = {f.name: f.dataType for f in df.schema.fields}
    if label not in fields:
        raise DataError(f"no label column {label!r}; the data has columns: {', '.join(fields)}")
    fcol = features_expr(df, features)
    ltype = fields[label]
    if isinstance(ltype, T.NumericType):
        lcol, one_hot = F.col(label), False
    elif isinstance(ltype, VectorUDT):
        lcol, one_hot = vector_to_array(F.col(label), "float32"), True
    elif isinstance(ltype, T.ArrayType) and isinstance(ltype.elementType, T.NumericType):
        lcol, one_hot = F.col(label).cast("array<float>"), True
    else:
        raise DataError(
            f"label column {label!r} must be a class index or a one-hot array, not {ltype.simpleString()}"
        )
    floating = isinstance(ltype, T.FloatType | T.DoubleType | T.DecimalType)
    found = df.select(fcol.alias("f"), lcol.alias("l")).agg(*_profile(one_hot, floating)).first()
    columns = Columns("features", "label", int(found["f_max"] or 0), one_hot)
    classes = _check(found, features, label, one_hot)
    prepared = df.select(fcol.alias("features"), (lcol if one_hot else lcol.cast("int")).alias("label"))
    return Prepared(prepared, columns, int(found["rows"]), classes)


def _count(condition: Any) -> Any:
    from pyspark.sql import functions as F

    return F.sum(F.when(condition, 1).otherwise(0))


def _not_finite(x: Any) -> Any:
    from pyspark.sql import functions as F

    return x.isNull() | F.isnan(x) | (F.abs(x) == float("inf"))


def _feature_profile() -> list[Any]:
    """Aggregations over `f` (features): the rows, counts of what is wrong, and the row lengths."""
    from pyspark.sql import functions as F

    f = F.col("f")
    return [
        F.count(F.lit(1)).alias("rows"),
        _count(f.isNull()).alias("f_null"),
        F.min(F.when(f.isNotNull(), F.size(f))).alias("f_min"),
        F.max(F.when(f.isNotNull(), F.size(f))).alias("f_max"),
        _count(f.isNotNull() & _bad_values(f)).alias("f_bad"),
    ]


def _bad_values(f: Any) -> Any:
    """Whether an `array<float>` holds a null, NaN or infinite value, with built-in functions
    only (a lambda per element, `exists`, is slower). `array_max` skips nulls and ranks NaN above
    everything; `array_contains` of NaN is null where the array holds a null and no NaN."""
    from pyspark.sql import functions as F

    top, bottom = F.array_max(f), F.array_min(f)
    nan = F.array_contains(f, F.lit(float("nan")).cast("float"))
    return nan.isNull() | nan | F.isnan(top) | (top == float("inf")) | (bottom == float("-inf"))


def _profile(one_hot: bool, floating: bool) -> list[Any]:
    """`_feature_profile`, and over `l` (label): counts of what is wrong, and the range."""
    from pyspark.sql import functions as F

    lab = F.col("l")
    aggs = _feature_profile()
    if one_hot:
        return [
            *aggs,
            _count(lab.isNull() | _bad_values(lab)).alias("l_bad"),
            F.min(F.size(lab)).alias("l_min"),
            F.max(F.size(lab)).alias("l_max"),
        ]
    finite = ~_not_finite(lab) if floating else lab.isNotNull()
    fractional = finite & (lab != F.floor(lab)) if floating else F.lit(False)
    return [
        *aggs,
        _count(~finite).alias("l_bad"),
        F.min(F.when(finite, lab)).alias("l_min"),
        F.max(F.when(finite, lab)).alias("l_max"),
        F.first(F.when(fractional, lab), ignorenulls=True).alias("l_frac"),
    ]


def _check(found: Any, features: str, label: str, one_hot: bool) -> int:
    """Raises the first problem `_profile` found, in one line; returns the number of classes."""
    if found["rows"] == 0:
        raise DataError("the training data is empty")
    _check_features(found, features)
    of = f"of {found['rows']:,} rows"
    if found["l_bad"]:
        what = "null, or holds NaN or infinity" if one_hot else "null, NaN or infinite"
        raise DataError(
            f"label column {label!r} is {what} in {found['l_bad']:,} {of}; drop or fill those rows"
        )
    if one_hot:
        if found["l_min"] != found["l_max"]:
            raise DataError(
                f"label column {label!r} has one-hot rows of {found['l_min']} and of {found['l_max']} "
                "values; every row must have one per class"
            )
        return int(found["l_max"])
    if found["l_frac"] is not None:
        raise DataError(
            f"label column {label!r} holds {found['l_frac']:g}, but labels are class indices 0, 1, 2, ...: "
            "round or map them to whole numbers"
        )
    if found["l_min"] < 0:
        raise DataError(f"label column {label!r} holds {found['l_min']:g}, but class indices start at 0")
    return int(found["l_max"]) + 1


def _check_features(found: Any, features: str) -> None:
    of = f"of {found['rows']:,} rows"
    if found["f_null"]:
        raise DataError(f"features column {features!r} is null in {found['f_null']:,} {of}; drop those rows")
    if found["f_min"] != found["f_max"]:
        raise DataError(
            f"features column {features!r} has rows of {found['f_min']} and of {found['f_max']} values; "
            "every row must have the same number"
        )
    if found["f_bad"]:
        raise DataError(
            f"features column {features!r} has NaN, infinite or null values in {found['f_bad']:,} {of}; "
            "drop or fill those rows"
        )


def check_inputs(model: Any, num_features: int) -> None:
    """The model's input shape against the number of feature values per row."""
    expected = int(np.prod(model.input_shape[1:]))
    if num_features != expected:
        raise DataError(
            f"features have {num_features} values per row but the model's input "
            f"{tuple(model.input_shape[1:])} takes {expected}"
        )


def check_model(model: Any, data: Prepared, label: str) -> None:
    """The model's input and output shapes against what the data holds."""
    check_inputs(model, data.columns.num_features)
    classes, one_hot = data.classes, data.columns.one_hot
    units = int(np.prod(model.output_shape[1:]))
    if one_hot and classes != units:
        raise DataError(
            f"label column {label!r} is one-hot over {classes} classes but the model has {units} "
            f"output units; give its last layer {classes} units"
        )
    if not one_hot and units > 1 and classes > units:
        raise DataError(
            f"label column {label!r} holds class {classes - 1} but the model has {units} output units "
            f"(classes 0 to {units - 1}); give its last layer {classes} units or fix the labels"
        )
    if not one_hot and units == 1 and classes > 2:
        raise DataError(
            f"label column {label!r} holds class {classes - 1} but the model has one output unit "
            f"(classes 0 and 1); give its last layer {classes} units"
        )


def arrays(batch: Any, num_features: int, one_hot: bool) -> tuple[npt.NDArray[np.float32], npt.NDArray[Any]]:
    """An Arrow record batch of (features, label) as `x` of shape (rows, num_features) and `y`."""
    return feature_values(batch.column(0), num_features), label_values(batch.column(1), one_hot)


def feature_values(column: Any, num_features: int) -> npt.NDArray[np.float32]:
    """An Arrow column of feature arrays as float32 of shape (rows, num_features)."""
    flat = column.flatten().to_numpy(zero_copy_only=False)
    values: npt.NDArray[np.float32] = flat.astype(np.float32, copy=False)
    if len(values) != len(column) * num_features:
        raise DataError(f"every features row must have {num_features} values")
    return values.reshape(len(column), num_features)


def label_values(column: Any, one_hot: bool) -> npt.NDArray[Any]:
    """An Arrow label column as Keras takes it: int32 class indices, or float32 one-hot rows."""
    if one_hot:
        rows: npt.NDArray[Any] = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
        return rows.reshape(len(column), -1)
    indices: npt.NDArray[Any] = column.to_numpy(zero_copy_only=False).astype(np.int32)
    return indices
