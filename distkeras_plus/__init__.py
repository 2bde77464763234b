"""distkeras-plus: data-parallel training of Keras 3 models on Apache Spark."""

from distkeras_plus._core import (
    AuthenticationError,
    Centre,
    Client,
    Codec,
    CommitRejectedError,
    DkError,
    Layout,
    LayoutMismatchError,
    ParameterServer,
    ProtocolError,
    ServerClosedError,
)
from distkeras_plus.api import (
    ADAG,
    AEASGD,
    DOWNPOUR,
    EAMSGD,
    EASGD,
    AveragingTrainer,
    DynSGD,
    EnsembleTrainer,
    Experimental,
    SingleTrainer,
    Trainer,
    train,
)
from distkeras_plus.engine import TrainingError, TrainResult
from distkeras_plus.hookspecs import hookimpl
from distkeras_plus.optimizers import OptimizerSpec, Option, OptionError, RuleChoice
from distkeras_plus.weights import FlatWeights

__version__ = "0.1.0"

__all__ = [
    "ADAG",
    "AEASGD",
    "DOWNPOUR",
    "EAMSGD",
    "EASGD",
    "AuthenticationError",
    "AveragingTrainer",
    "Centre",
    "Client",
    "Codec",
    "CommitRejectedError",
    "DkError",
    "DynSGD",
    "EnsembleTrainer",
    "Experimental",
    "FlatWeights",
    "Layout",
    "LayoutMismatchError",
    "OptimizerSpec",
    "Option",
    "OptionError",
    "ParameterServer",
    "ProtocolError",
    "RuleChoice",
    "ServerClosedError",
    "SingleTrainer",
    "TrainResult",
    "Trainer",
    "TrainingError",
    "__version__",
    "hookimpl",
    "train",
]
