"""Every error a user can fix derives from `DkError` (defined by the core, so the parameter
server's own errors are among them). `dk` reports exactly these in one line with exit status 2;
anything else is an internal error (exit status 1, traceback with `--debug`).

Each class also derives from the built-in exception it refines, so `except ValueError` and
`except OSError` keep catching what they caught before.
"""

from __future__ import annotations

import re

from distkeras_plus._core import (
    AuthenticationError,
    CommitRejectedError,
    DkError,
    InvalidArgumentError,
    LayoutMismatchError,
    ProtocolError,
    ServerClosedError,
)

__all__ = [
    "AuthenticationError",
    "CheckpointError",
    "ClientError",
    "CommitRejectedError",
    "ConfigError",
    "DataError",
    "DkError",
    "InvalidArgumentError",
    "LayoutMismatchError",
    "MissingFileError",
    "ModelError",
    "OptionError",
    "PluginError",
    "ProtocolError",
    "ServerClosedError",
    "SettingError",
    "SpecError",
    "StorageError",
    "TrainingError",
    "UserExistsError",
]


class SettingError(DkError, ValueError):
    """A run setting of the wrong type or out of range (`distkeras_plus.settings`)."""


class ConfigError(DkError, ValueError):
    """A settings file that cannot be used."""


class OptionError(DkError, ValueError):
    """An unknown optimizer option, or a value of the wrong type or out of range."""


class PluginError(DkError, RuntimeError):
    """An optimizer that is not installed, or a plugin that failed to load."""


class DataError(DkError, ValueError):
    """Data that cannot be trained on: a missing column, a wrong type, no rows."""


class ModelError(DkError, ValueError):
    """A model that cannot be used: not a Keras archive, or one that does not fit the data."""


class StorageError(DkError, OSError):
    """A file or URI that cannot be read or written."""


class MissingFileError(StorageError, FileNotFoundError):
    """A file or URI that does not exist."""


class CheckpointError(DkError, ValueError):
    """A checkpoint that cannot be used: corrupt, truncated, or for another model."""


class SpecError(DkError, ValueError):
    """A punchcard job spec that cannot run."""


class ClientError(DkError):
    """A punchcard request that failed, in one line: the daemon's own message when it sent one."""


class UserExistsError(DkError, ValueError):
    """`dk punchcard add-user` with a name that is taken, or not a valid name."""


class TrainingError(DkError, RuntimeError):
    """A training run failed; the message is the failing worker's own error."""

    #: Where the run's parameter server listened (it is stopped when this is raised).
    ps_address: str | None = None


_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt))(?:: ?(.*))?$")
_BARE = {
    "MemoryError": "MemoryError: a worker ran out of memory (lower --in-memory-mb, or give Python "
    "workers more: spark.executor.pyspark.memory)",
}


def exception_line(text: str) -> str:
    """The Python error in `text` (a traceback, or Spark's report of one) in one line."""
    lines = text.splitlines()
    for line in lines:
        match = _EXCEPTION_LINE.match(line)
        if match is None or line.startswith(("org.", "java.", "scala.", "py4j.")):
            continue
        name = match.group(1).rsplit(".", 1)[-1]
        if match.group(2) is None:  # raised without a message
            return _BARE.get(name, name)
        message = match.group(2).strip()
        if not message or message.endswith(":"):
            # TensorFlow puts the useful part ("Received a label value of ...") last.
            detail = next((x.strip() for x in reversed(lines) if x.strip() and not x[0].isspace()), "")
            message = f"{message} {detail}".strip()
        return f"{name}: {message}"[:500]
    return next((x.strip() for x in lines if x.strip()), text)
