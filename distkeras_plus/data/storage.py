"""Files on local disk or on any Hadoop-compatible file system the Spark session can reach
(`hdfs://`, `s3a://`, `file://`, ...): models are saved and loaded, checkpoints written, through
the session's own Hadoop configuration."""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

from distkeras_plus.errors import MissingFileError, ModelError, StorageError
from distkeras_plus.quiet import import_keras


def is_uri(path: str) -> bool:
    """A `scheme://` path: reached through Spark's Hadoop file systems (pyarrow's under Spark
    Connect) rather than Python's."""
    return "://" in path


def _files(spark: Any, uri: str) -> _Hadoop | _Arrow:
    """What reaches `uri`: the session's own Hadoop file systems (classic), or pyarrow's under
    Spark Connect, where this side has no JVM, and on an executor (no session: `spark` None)."""
    from distkeras_plus.spark.session import is_connect

    return _Arrow(uri) if spark is None or is_connect(spark) else _Hadoop(spark, uri)


class _Hadoop:
    """A file or folder at `uri`, through the session's JVM and its Hadoop configuration."""

    def __init__(self, spark: Any, uri: str) -> None:
        self.jvm, self.uri = spark.sparkContext._jvm, uri
        self.path = self.jvm.org.apache.hadoop.fs.Path(uri)
        self.fs = self.path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())

    def upload(self, local: Path) -> None:
        # Hadoop's rename does not replace, hence the delete.
        fs, dest = self.fs, self.path
        partial = self.jvm.org.apache.hadoop.fs.Path(dest.getParent(), f".{dest.getName()}.partial")
        fs.mkdirs(dest.getParent())
        fs.copyFromLocalFile(False, True, self.jvm.org.apache.hadoop.fs.Path(str(local.resolve())), partial)
        fs.delete(dest, False)
        if not fs.rename(partial, dest):
            raise StorageError(f"could not move {self.uri}.partial into place")

    def download(self, local: Path) -> None:
        if not self.fs.exists(self.path):
            raise MissingFileError(f"no file at {self.uri}")
        self.fs.copyToLocalFile(False, self.path, self.jvm.org.apache.hadoop.fs.Path(str(local)), True)

    def names(self) -> list[str]:
        if not self.fs.exists(self.path):
            return []
        return sorted(str(status.getPath().getName()) for status in self.fs.listStatus(self.path))

    def delete(self) -> None:
        self.fs.delete(self.path, False)


#: Hadoop's names for what pyarrow calls otherwise.
_ARROW_SCHEMES = {"s3a": "s3", "s3n": "s3"}


class _Arrow:
    """A file or folder at `uri`, through pyarrow's file systems (local, S3, GCS, HDFS with
    libhdfs, Azure), configured from the environment as pyarrow configures them."""

    def __init__(self, uri: str) -> None:
        import pyarrow.fs as pafs

        scheme, rest = uri.split("://", 1)
        self.uri = uri
        try:
            self.fs, self.path = pafs.FileSystem.from_uri(f"{_ARROW_SCHEMES.get(scheme, scheme)}://{rest}")
        except (ValueError, OSError) as e:  # pyarrow's ArrowInvalid is a ValueError
            raise StorageError(f"cannot reach {uri} under Spark Connect (through pyarrow): {e}") from None

    def upload(self, local: Path) -> None:
        import posixpath

        folder, name = posixpath.split(self.path)
        partial = posixpath.join(folder, f".{name}.partial")
        self.fs.create_dir(folder, recursive=True)
        with self.fs.open_output_stream(partial) as out, local.open("rb") as data:
            shutil.copyfileobj(data, out)
        self.fs.move(partial, self.path)

    def download(self, local: Path) -> None:
        import pyarrow.fs as pafs

        if self.fs.get_file_info(self.path).type != pafs.FileType.File:
            raise MissingFileError(f"no file at {self.uri}")
        with self.fs.open_input_stream(self.path) as data, local.open("wb") as out:
            shutil.copyfileobj(data, out)

    def names(self) -> list[str]:
        import pyarrow.fs as pafs

        found = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        return sorted(info.base_name for info in found)

    def delete(self) -> None:
        import pyarrow.fs as pafs

        if self.fs.get_file_info(self.path).type != pafs.FileType.NotFound:
            self.fs.delete_file(self.path)


def upload(spark: Any, local: Path, uri: str) -> None:
    """Copies a local file to `uri`, replacing it. It is written beside it and moved into place,
    so a reader never sees half a file."""
    _files(spark, uri).upload(local)


def download(spark: Any, uri: str, local: Path) -> None:
    """Copies the file at `uri` to a local path."""
    _files(spark, uri).download(local)


def list_names(spark: Any, uri: str) -> list[str]:
    """The names of the files in the folder at `uri` (none if it does not exist)."""
    return _files(spark, uri).names()


def read_bytes(spark: Any, uri: str) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        local = Path(d) / "file"
        download(spark, uri, local)
        return local.read_bytes()


def write_bytes(spark: Any, uri: str, data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        local = Path(d) / "file"
        local.write_bytes(data)
        upload(spark, local, uri)


def delete(spark: Any, uri: str) -> None:
    _files(spark, uri).delete()


def remove_tree(path: str) -> None:
    """Removes the folder at `path` (a URI, through pyarrow's file systems; or a local path)
    with all it holds, if it is there."""
    if not is_uri(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    import pyarrow.fs as pafs

    files = _Arrow(path)
    if files.fs.get_file_info(files.path).type != pafs.FileType.NotFound:
        files.fs.delete_dir(files.path)


def _check_suffix(path: str) -> None:
    if not path.endswith(".keras"):
        raise ModelError(
            f"models are saved in Keras' .keras format: give a path ending in .keras, not {path}"
        )


def refuse_existing(path: str, overwrite: bool) -> None:
    """An earlier run's output at a local `path` is kept unless the user says `overwrite` (a URI
    is refused when it is written)."""
    if not overwrite and not is_uri(path) and Path(path).exists():
        raise StorageError(
            f"{path} exists already; pass --overwrite to replace it, or choose another --output"
        )


def check_writable(path: str, overwrite: bool = False) -> None:
    """Fails now, in one line, where a model could not be saved at `path` after training, or would
    replace a file there without `overwrite`: a local folder is made and a file tried in it (a URI
    is checked when it is written)."""
    _check_suffix(path)
    if is_uri(path):
        return
    target = Path(path)
    if not target.is_dir():  # a folder is refused below, as one
        refuse_existing(path, overwrite)
    try:
        if target.is_dir():
            raise IsADirectoryError(21, "it is a folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.probe"):
            pass
    except OSError as e:
        raise StorageError(f"cannot save the model to {path}: {e.strerror or e}") from None


def save_model_file(model: Any, path: str, spark: Any | None = None) -> str:
    """Saves a Keras model as a `.keras` file at a local path or a Hadoop URI; returns where."""
    _check_suffix(path)
    if not is_uri(path):
        target = Path(path)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.partial.keras")
            model.save(partial)
            os.replace(partial, target)  # a crash while saving leaves the previous model whole
        except OSError as e:
            raise StorageError(f"cannot save the model to {path}: {e.strerror or e}") from e
        return str(target.resolve())
    if spark is None:
        raise StorageError(f"saving to {path} needs a Spark session")
    with tempfile.TemporaryDirectory() as d:
        local = Path(d) / "model.keras"
        model.save(local)
        upload(spark, local, path)
    return path


def load_model_file(path: str, spark: Any | None = None, compiled: bool = False) -> Any:
    """Loads a `.keras` model from a local path or a Hadoop URI, in Keras' safe mode (no code);
    `compiled`: compiled as it was saved, where Keras can (a model to train keeps its compile())."""
    keras = import_keras()

    if not is_uri(path):
        if not Path(path).is_file():
            raise MissingFileError(f"no model file at {path}")
        return _load(keras, Path(path), compiled)
    if spark is None:
        raise StorageError(f"loading from {path} needs a Spark session")
    with tempfile.TemporaryDirectory() as d:
        local = Path(d) / "model.keras"
        download(spark, path, local)
        return _load(keras, local, compiled)


def _load(keras: Any, path: Path, compiled: bool) -> Any:
    try:
        with warnings.catch_warnings():
            # A compile config Keras cannot rebuild leaves the model uncompiled, with a warning:
            # it then trains with the run's defaults, as a model saved uncompiled does.
            warnings.simplefilter("ignore")
            return keras.saving.load_model(path, compile=compiled, safe_mode=True)
    except Exception as e:
        raise ModelError(
            f"{path} is not a Keras model file: {str(e).splitlines()[0] if str(e) else e!r}"
        ) from e


def model_bytes(model: Any) -> bytes:
    """The model in Keras' own `.keras` format (never pickle): how it travels to executors."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.keras"
        model.save(path)
        return path.read_bytes()


def copy_model(model: Any) -> Any:
    """A copy of `model` with its own weights, compiled as it is (through the `.keras` format)."""
    keras = import_keras()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.keras"
        model.save(path)
        return _load(keras, path, compiled=True)


def model_from_bytes(data: bytes) -> Any:
    """The model `model_bytes` made, loaded in Keras' safe mode."""
    import keras

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.keras"
        path.write_bytes(data)
        return keras.saving.load_model(path, compile=False, safe_mode=True)
