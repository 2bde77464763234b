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
from distkeras_plus.optimizers import Option, OptimizerSpec, OptionError, RuleChoice
from distkeras_plus.weights import FlatWeights

__version__ = "0.1.0"

__all__ = [
    "ADAG",
    "AEASGD",
    "DOWNPOUR",
    "EAMSGD",
    "EASGD",
    "AveragingTrainer",
    "DynSGD",
    "EnsembleTrainer",
    "Experimental",
    "Option",
    "OptimizerSpec",
    "OptionError",
    "RuleChoice",
    "SingleTrainer",
    "TrainResult",
    "Trainer",
    "TrainingError",
    "hookimpl",
    "train",
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
