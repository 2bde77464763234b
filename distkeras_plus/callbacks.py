"""Keras callbacks that know the cluster's file systems.

Keras' own `ModelCheckpoint` writes local paths (and what TensorFlow's file layer knows). This one
writes to any Hadoop-compatible URI that the Spark session reaches as well (`hdfs://`, `s3a://`,
`file://`, ...): Keras saves into a local folder, and each file it writes there is copied to the
URI's folder with Spark's Hadoop configuration, replacing the one before. A local path is
Keras' own behaviour, unchanged."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from distkeras_plus.data.storage import is_uri, upload
from distkeras_plus.quiet import import_keras

keras = import_keras()


class ModelCheckpoint(keras.callbacks.ModelCheckpoint):  # type: ignore[misc,name-defined]
    """`keras.callbacks.ModelCheckpoint(filepath, ...)` with the same arguments, `filepath` a local
    path or a Hadoop-compatible URI (its file name may hold Keras' `{epoch}` and `{loss}` fields)."""

    def __init__(self, filepath: str | Path, **kwargs: Any) -> None:
        target = str(filepath)
        self.folder_uri: str | None = None
        self.staging: Path | None = None
        if is_uri(target):
            self.folder_uri, name = target.rsplit("/", 1)
            self.staging = Path(tempfile.mkdtemp(prefix="dk-checkpoint-"))
            target = str(self.staging / name)
        super().__init__(target, **kwargs)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        super().on_epoch_end(epoch, logs)
        self._upload()

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        super().on_train_end(logs)
        self._upload()
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)

    def _upload(self) -> None:
        """Every file Keras wrote since the last look goes to the URI's folder."""
        if self.staging is None or not self.staging.exists():
            return
        from pyspark.sql import SparkSession

        spark = SparkSession.getActiveSession() or SparkSession.builder.getOrCreate()
        for written in sorted(self.staging.iterdir()):
            if written.is_file():
                upload(spark, written, f"{self.folder_uri}/{written.name}")
                written.unlink()
