"""Getting training data to workers: column checks and conversion on the driver (Spark SQL),
and Arrow record batches to NumPy arrays on the executor (no row-at-a-time Python)."""

from __future__ import annotations

from collections.abc import Iterable
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


def features_array(df: Any, features: str) -> tuple[Any, int]:
    """The features column as an `array<float>` expression, and the number of values per row."""
    from pyspark.ml.functions import vector_to_array
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    fields = {f.name: f.dataType for f in df.schema.fields}
    if features not in fields:
        raise DataError(f"no features column {features!r}; the data has columns: {', '.join(fields)}")
    ftype = fields[features]
    if isinstance(ftype, VectorUDT):
        fcol = vector_to_array(F.col(features), "float32")
    elif isinstance(ftype, T.ArrayType) and isinstance(ftype.elementType, T.NumericType):
        fcol = F.col(features).cast("array<float>")
    else:
        raise DataError(
            f"features column {features!r} must be an array of numbers or an ML vector, "
            f"not {ftype.simpleString()}"
        )
    first = df.select(F.size(fcol).alias("n")).where(F.col("n") >= 0).first()
    if first is None:
        raise DataError("the data is empty")
    return fcol, int(first["n"])


def prepare(df: Any, features: str, label: str) -> tuple[Any, Columns]:
    """Selects and converts the two columns: vectors become arrays, numbers become float32 or int."""
    from pyspark.ml.functions import vector_to_array
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    fields = {f.name: f.dataType for f in df.schema.fields}
    if label not in fields:
        raise DataError(f"no label column {label!r}; the data has columns: {', '.join(fields)}")
    fcol, num_features = features_array(df, features)
    ltype = fields[label]
    if isinstance(ltype, T.NumericType):
        lcol, one_hot = F.col(label).cast("int"), False
    elif isinstance(ltype, VectorUDT):
        lcol, one_hot = vector_to_array(F.col(label), "float32"), True
    elif isinstance(ltype, T.ArrayType) and isinstance(ltype.elementType, T.NumericType):
        lcol, one_hot = F.col(label).cast("array<float>"), True
    else:
        raise DataError(
            f"label column {label!r} must be a class index or a one-hot array, not {ltype.simpleString()}"
        )
    prepared = df.select(fcol.alias("features"), lcol.alias("label")).na.drop()
    return prepared, Columns("features", "label", num_features, one_hot)


def num_classes(prepared: Any, columns: Columns) -> int:
    """How many classes the prepared data's labels name: the one-hot width, or the largest index + 1."""
    from pyspark.sql import functions as F

    if columns.one_hot:
        row = prepared.select(F.max(F.size(columns.label)).alias("n")).first()
    else:
        row = prepared.select((F.max(columns.label) + 1).alias("n")).first()
    if row is None or row["n"] is None:
        raise DataError("the training data is empty")
    return max(2, int(row["n"]))


def to_numpy(
    batches: Iterable[Any], num_features: int, one_hot: bool
) -> tuple[npt.NDArray[np.float32], npt.NDArray[Any]]:
    """Arrow record batches of (features, label) to `x` of shape (n, num_features) and `y`."""
    xs, ys = [], []
    for batch in batches:
        if batch.num_rows == 0:
            continue
        feats = batch.column(0)
        values = feats.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        if len(values) != batch.num_rows * num_features:
            raise DataError(f"every features row must have {num_features} values")
        xs.append(values.reshape(batch.num_rows, num_features))
        labels = batch.column(1)
        if one_hot:
            ys.append(
                labels.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(batch.num_rows, -1)
            )
        else:
            ys.append(labels.to_numpy(zero_copy_only=False).astype(np.int32))
    if not xs:
        shape: tuple[int, ...] = (0, num_features)
        return np.zeros(shape, np.float32), np.zeros((0,), np.int32)
    return np.concatenate(xs), np.concatenate(ys)
