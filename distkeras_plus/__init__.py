"""distkeras-plus: data-parallel training of Keras 3 models on Apache Spark."""

from distkeras_plus._core import (
    AuthenticationError,
    Centre,
    Client,
    CommitRejectedError,
    DkError,
    Layout,
    LayoutMismatchError,
    ParameterServer,
    ProtocolError,
    ServerClosedError,
)
from distkeras_plus.weights import FlatWeights

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "Centre",
    "Client",
    "CommitRejectedError",
    "DkError",
    "FlatWeights",
    "Layout",
    "LayoutMismatchError",
    "ParameterServer",
    "ProtocolError",
    "ServerClosedError",
    "__version__",
]
