"""What reaches stderr: our own lines only, unless the user asks for the rest (`dk -v`,
`DK_VERBOSE=1`). TensorFlow's C++ logging and the JVM write to file descriptor 2 itself, beneath
Python's `sys.stderr`, so they are quieted there: TensorFlow's start-up runs with descriptor 2
pointing at a log file (`log_path()`), and the JVM is started with that file as its stderr, which
it keeps for its life, as do the Python workers of a local Spark."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

VERBOSE_ENV = "DK_VERBOSE"


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def log_path() -> Path:
    """Where this process's quieted lines go."""
    return Path(tempfile.gettempdir()) / f"dk-{os.getpid()}.log"


@contextmanager
def native_stderr() -> Iterator[None]:
    """Descriptor 2 points at the log file for the block, and back after it (unless verbose)."""
    if verbose():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with log_path().open("ab") as log:
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def import_keras() -> ModuleType:
    """Keras, imported (and TensorFlow's devices looked for) without their start-up lines."""
    if "keras" in sys.modules:
        return sys.modules["keras"]
    if not verbose():
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with native_stderr():
        import keras

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            tf.config.list_physical_devices()  # the first look for a GPU logs, even without one
    return sys.modules["keras"]
