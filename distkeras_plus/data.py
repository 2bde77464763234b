"""Getting training data to workers: column checks and conversion on the driver (Spark SQL),
and Arrow record batches to NumPy arrays on the executor (no row-at-a-time Python)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt


class DataError(ValueError):
    """Input data that cannot be trained on: a missing column, a wrong type, a wrong shape."""


@dataclass(frozen=True)
class Columns:
    """How the prepared DataFrame is laid out: `features` (array<float>) and `label`."""

    features: str
    label: str
    num_features: int
    one_hot: bool  # label is an array<float> (one-hot) rather than a class index


def read(spark: Any, path: str | Path, features: str, label: str) -> Any:
    """A Parquet or CSV file or folder as a DataFrame. A CSV file has a header; when it has no
    `features` column, every column but the label is a feature, in order."""
    from pyspark.sql import functions as F

    path = Path(path)
    if not path.exists():
        raise DataError(f"no data at {path}")
    files = (
        [path] if path.is_file() else sorted(p for p in path.iterdir() if not p.name.startswith((".", "_")))
    )
    suffixes = {p.suffix.lower() for p in files}
    if suffixes <= {".parquet"} and files:
        return spark.read.parquet(str(path))
    if suffixes <= {".csv"} and files:
        df = spark.read.csv(str(path), header=True, inferSchema=True)
        if features not in df.columns:
            if label not in df.columns:
                raise DataError(f"no label column {label!r} in {path}; its columns: {', '.join(df.columns)}")
            inputs = [c for c in df.columns if c != label]
            df = df.select(F.array(*[F.col(f"`{c}`").cast("float") for c in inputs]).alias(features), label)
        return df
    raise DataError(f"{path} is neither Parquet nor CSV (found {', '.join(sorted(suffixes)) or 'nothing'})")


def prepare(df: Any, features: str, label: str) -> tuple[Any, Columns]:
    """Selects and converts the two columns: vectors become arrays, numbers become float32 or int."""
    from pyspark.ml.functions import vector_to_array
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    fields = {f.name: f.dataType for f in df.schema.fields}
    for name, role in ((features, "features"), (label, "label")):
        if name not in fields:
            raise DataError(f"no {role} column {name!r}; the data has columns: {', '.join(fields)}")
    ftype, ltype = fields[features], fields[label]
    if isinstance(ftype, VectorUDT):
        fcol = vector_to_array(F.col(features), "float32")
    elif isinstance(ftype, T.ArrayType) and isinstance(ftype.elementType, T.NumericType):
        fcol = F.col(features).cast("array<float>")
    else:
        raise DataError(
            f"features column {features!r} must be an array of numbers or an ML vector, "
            f"not {ftype.simpleString()}"
        )
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
    first = prepared.select(F.size("features").alias("n")).first()
    if first is None:
        raise DataError("the training data is empty")
    return prepared, Columns("features", "label", int(first["n"]), one_hot)


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
