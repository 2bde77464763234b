"""The compiled parameter-server core (Rust). See docs/protocol.md for the wire format."""

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Final, Self, TypeAlias, final

import numpy as np
import numpy.typing as npt

_F32: TypeAlias = npt.NDArray[np.float32]

__all__ = [
    "CODECS",
    "CODEC_SYNTAX",
    "ELASTIC_CODECS",
    "MAX_LOGS",
    "MIN_SECRET_LEN",
    "PROTOCOL_VERSION",
    "PULL_CODECS",
    "RULES",
    "RULE_PARAMS",
    "RULE_SYNTAX",
    "STATS_FIELDS",
    "WORKER_STATS_FIELDS",
    "AuthenticationError",
    "Centre",
    "Client",
    "Codec",
    "CommitRejectedError",
    "DkError",
    "InvalidArgumentError",
    "Layout",
    "LayoutMismatchError",
    "ParameterServer",
    "ProtocolError",
    "ServerClosedError",
]

#: The update-rule names: add, dynsgd, adaptive, elastic, sync.
RULES: Final[tuple[str, ...]]
#: Each rule's parameter names, by rule name.
RULE_PARAMS: Final[dict[str, tuple[str, ...]]]
#: The rules with their parameters and defaults: "add(scale=1), dynsgd, ...".
RULE_SYNTAX: Final[str]
#: The codec families: none, fp16, bf16, int8, topk.
CODECS: Final[tuple[str, ...]]
#: How a codec is named: "none, fp16, bf16, int8, int8:stochastic, topk:RATIO (0 < RATIO <= 1)".
CODEC_SYNTAX: Final[str]
#: The families that may serve pulls.
PULL_CODECS: Final[tuple[str, ...]]
#: The families that may carry elastic commits (weights).
ELASTIC_CODECS: Final[tuple[str, ...]]
#: The shortest run secret a server accepts, in bytes.
MIN_SECRET_LEN: Final[int]
#: The server-level keys of `ParameterServer.stats()`, in order (it adds "workers" after them).
STATS_FIELDS: Final[tuple[str, ...]]
#: The keys of each worker's entry in `ParameterServer.stats()["workers"]`, in order.
WORKER_STATS_FIELDS: Final[tuple[str, ...]]
PROTOCOL_VERSION: Final[int]
#: The most logs values one commit may carry (`Client.set_progress`).
MAX_LOGS: Final[int]

class DkError(Exception):
    """The base class of every error a user can fix."""

class InvalidArgumentError(DkError, ValueError):
    """A caller passed something unusable (a bad rule name, a buffer of the wrong size, ...)."""

class AuthenticationError(DkError): ...
class LayoutMismatchError(DkError): ...
class ProtocolError(DkError): ...
class CommitRejectedError(DkError): ...
class ServerClosedError(DkError): ...

@final
class Layout:
    """The shapes of a model's weight tensors, laid end to end in one flat float32 vector."""

    def __new__(cls, shapes: Sequence[Sequence[int]]) -> Self: ...
    @staticmethod
    def flat(num_params: int) -> Layout: ...
    @property
    def num_params(self) -> int: ...
    @property
    def shapes(self) -> list[list[int]]: ...
    @property
    def offsets(self) -> list[int]: ...
    @property
    def hash(self) -> bytes: ...
    def flatten_into(self, arrays: Sequence[npt.NDArray[np.float32]], out: _F32) -> None: ...

@final
class Centre:
    """The centre variable and its update rule, shared by the server and the driver."""

    def __new__(
        cls,
        initial: _F32,
        rule: str = "add",
        params: Mapping[str, float] | None = None,
        round_timeout: float | None = None,
        clock: int = 0,
    ) -> Self: ...
    @property
    def num_params(self) -> int: ...
    @property
    def clock(self) -> int: ...
    @property
    def rule(self) -> str: ...
    @property
    def rule_params(self) -> dict[str, float]: ...
    def pull(self, out: _F32) -> int: ...
    def to_numpy(self) -> _F32: ...
    def commit(
        self,
        delta: _F32,
        last_pull_clock: int = 0,
        sent: _F32 | None = None,
        out: _F32 | None = None,
        worker: int = 0,
    ) -> tuple[int, int]: ...

@final
class ParameterServer:
    """A running parameter server. It serves until `stop()` (or the end of a `with` block)."""

    def __new__(
        cls,
        centre: Centre,
        layout: Layout,
        secret: bytes,
        host: str = "127.0.0.1",
        port: int = 0,
        handshake_timeout: float = 10.0,
        max_connections: int = 1024,
        codecs: Sequence[str] | None = None,
        idle_timeout: float | None = None,
        max_unauthenticated: int = 64,
    ) -> Self: ...
    @property
    def address(self) -> tuple[str, int]: ...
    @property
    def port(self) -> int: ...
    @property
    def running(self) -> bool: ...
    @property
    def centre(self) -> Centre: ...
    def stop(self) -> None: ...
    def stats(self) -> dict[str, Any]: ...
    def failure(self) -> str | None:
        """The first failure a worker reported (`Client.fail`), or None; the server then asks
        every worker to stop, as `set_control(stop=True)` does."""

    def set_control(self, stop: bool = False, learning_rate: float | None = None) -> None:
        """What every commit reply carries from now on, to every worker: `stop` asks them to end
        their loop at that exchange; `learning_rate` (None: none set) is the rate their optimizers
        use from their next window. Sets both. The server only relays them."""

    def track_epochs(self, workers: int) -> None:
        """From now on the run has `workers` workers (ids 0..workers-1): epoch e ends when the
        last of them has an applied commit in a later epoch, and the server keeps a copy of the
        centre taken right after that commit (consistent: never half of a commit) for
        `take_epoch_centre(e)`. Epochs the workers are already past end at once. The last
        epoch ends only if the workers commit a later one. 0 raises ValueError."""

    @property
    def epochs_ended(self) -> int:
        """How many epochs have ended (0 until `track_epochs`): epochs 0..epochs_ended-1."""

    def take_epoch_centre(self, epoch: int) -> _F32 | None:
        """The centre as `epoch` ended, a new 1-D float32 array, handed over once: the server
        keeps it until taken. None if that epoch has not ended or its centre was taken."""

    def epochs(self) -> dict[int, dict[str, Any]]:
        """Each epoch's logs over every worker, by epoch: `{"samples": int, "means": list[float]}`.
        `samples` counts the samples of the epoch's applied commits' windows; `means[k]` is the mean
        of logs value k weighted by those samples, over the samples for which it was finite (NaN
        where it never was)."""

    def __enter__(self) -> ParameterServer: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool: ...

@final
class Client:
    """A worker's connection to the parameter server. Use one per thread."""

    def __new__(
        cls,
        address: str,
        secret: bytes,
        layout: Layout,
        worker_id: int,
        attempt: int = 0,
        connect_timeout: float = 30.0,
        timeout: float | None = None,
        codec: str = "none",
        pull_codec: str = "none",
    ) -> Self: ...
    @property
    def num_params(self) -> int: ...
    @property
    def worker_id(self) -> int: ...
    @property
    def resume_samples(self) -> int: ...
    @property
    def last_pull_clock(self) -> int: ...
    @property
    def replies_with_vector(self) -> bool: ...
    @property
    def bytes_in(self) -> int: ...
    @property
    def bytes_out(self) -> int: ...
    def pull(self, out: _F32) -> int: ...
    def commit(self, delta: _F32, out: _F32 | None = None) -> tuple[int, int]: ...
    def set_progress(self, samples: int, epoch: int = 0, logs: Sequence[float] = ()) -> None:
        """What the next commits tell the server of this worker's training: samples so far, the
        epoch, and the window's logs (mean loss first, then each metric's mean). More than
        `MAX_LOGS` logs values raise ValueError."""

    @property
    def stop_requested(self) -> bool:
        """Whether the latest commit reply asked this worker to stop (False before any)."""

    @property
    def learning_rate(self) -> float | None:
        """The learning rate the latest commit reply carried (None before any, or if none is set)."""
    def flush(self) -> tuple[int, int] | None: ...
    def stats(self) -> dict[str, int]: ...
    def fail(self, message: str) -> None:
        """Tells the server that this worker's own code failed, with `message` (one line), and
        closes the connection."""

    def close(self) -> None: ...
    def __enter__(self) -> Client: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool: ...

@final
class Codec:
    """A wire codec: none, fp16, bf16, int8, int8:stochastic, topk:RATIO."""

    def __new__(cls, name: str) -> Self: ...
    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def lossy(self) -> bool: ...
    @property
    def pull_capable(self) -> bool: ...
    @property
    def elastic_capable(self) -> bool: ...
    def max_encoded_len(self, num_values: int) -> int: ...
    def encode(self, values: _F32, seed: int = 0) -> bytes: ...
    def decode(self, data: bytes, out: _F32) -> None: ...
