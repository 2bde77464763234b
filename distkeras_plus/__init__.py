"""distkeras-plus: data-parallel training of Keras 3 models on Apache Spark."""

from distkeras_plus._core import Centre, Client, Codec, Layout, ParameterServer
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
from distkeras_plus.errors import (
    AuthenticationError,
    CommitRejectedError,
    DataError,
    DkError,
    InvalidArgumentError,
    LayoutMismatchError,
    OptionError,
    ProtocolError,
    ServerClosedError,
    SettingError,
    TrainingError,
)
from distkeras_plus.plugins.hookspecs import hookimpl
from distkeras_plus.plugins.spec import OptimizerSpec, Option, RuleChoice
from distkeras_plus.ps.weights import FlatWeights
from distkeras_plus.settings import RunConfig
from distkeras_plus.spark.driver import TrainResult

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
    "DataError",
    "DkError",
    "DynSGD",
    "EnsembleTrainer",
    "Experimental",
    "FlatWeights",
    "InvalidArgumentError",
    "Layout",
    "LayoutMismatchError",
    "OptimizerSpec",
    "Option",
    "OptionError",
    "ParameterServer",
    "ProtocolError",
    "RuleChoice",
    "RunConfig",
    "ServerClosedError",
    "SettingError",
    "SingleTrainer",
    "TrainResult",
    "Trainer",
    "TrainingError",
    "__version__",
    "hookimpl",
    "train",
]
