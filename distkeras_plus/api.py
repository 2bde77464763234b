"""The Python API: `train(df, model, plugin=...)` and one trainer class per built-in optimizer.

Their keywords are the run's settings (`distkeras_plus.settings.RunConfig`); any other keyword
is an option of the optimizer (`window=12`)."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, ClassVar

from distkeras_plus.errors import SettingError
from distkeras_plus.ps.checkpoint import Checkpoint, Folder
from distkeras_plus.settings import RunConfig, from_keywords, keywords_doc, signature
from distkeras_plus.spark import driver
from distkeras_plus.spark.driver import TrainResult


def train(
    df: Any,
    model: Any,
    plugin: str | None = None,
    *,
    config: RunConfig | None = None,
    resume: Checkpoint | str | None = None,
    callbacks: Sequence[Any] = (),
    validation_data: Any = None,
    verbose: int | str = "auto",
    **settings: Any,
) -> TrainResult:
    """Trains a Keras model data-parallel on a Spark DataFrame.

        `df` has a features column (array of numbers or ML vector) and a label column (class index or
        one-hot); it may also be the path of a Parquet or CSV file or folder (see `data.tables.read`).
        `plugin` names a distributed optimizer (`dk plugins list`). The settings come as keywords, or
        whole as `config` (a `RunConfig`; keywords given too replace its values). A keyword that is
        not a setting is an option of the optimizer (e.g. `window=12`, see `dk plugins info NAME`).

        `resume` (a `Checkpoint`, or a checkpoint folder: its newest valid checkpoint) starts from
        that centre and clock and skips the epochs it had done; the model must have the same weights'
        shapes.

        As with `model.fit`: a compiled model trains with its own optimizer, loss and metrics
        (unless the settings name others); `callbacks` (Keras callbacks) see every epoch of the
        cluster, with `logs` holding the epoch's mean loss and metrics over all workers and the
        `val_*` scores on `validation_data` (a DataFrame or a path) or on a `validation_split`;
        a callback that sets `model.stop_training` stops every worker; `verbose` is Keras' progress
        on stdout ("auto" or 1: a bar per epoch, 2: a line per epoch, 0: none). Returns the trained model,
        compiled, with its per-epoch `history` (a Keras History), each worker's history and the
        parameter server's statistics.

        Settings:
    {settings}
    """
    if plugin is not None:
        settings["plugin"] = plugin
    run = from_keywords(settings, config)  # a bad setting fails here, before Spark is touched
    if isinstance(resume, str):
        resume = Folder(resume, getattr(df, "sparkSession", None)).latest()
    return driver.train(
        df,
        model,
        run,
        resume=resume,
        callbacks=callbacks,
        validation=validation_data,
        verbose=_level(verbose),
    )


def _level(verbose: int | str) -> int:
    """Keras' `verbose`: "auto" is 1, as in `model.fit`."""
    if verbose == "auto":
        return 1
    if verbose not in (0, 1, 2):
        raise SettingError(f'verbose takes "auto", 0, 1 or 2, not {verbose!r}')
    return int(verbose)


train.__doc__ = (train.__doc__ or "").replace("{settings}", keywords_doc())
_HEAD = [
    inspect.Parameter("df", inspect.Parameter.POSITIONAL_OR_KEYWORD),
    inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD),
    inspect.Parameter("plugin", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None),
    inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None),
    inspect.Parameter("resume", inspect.Parameter.KEYWORD_ONLY, default=None),
    inspect.Parameter("callbacks", inspect.Parameter.KEYWORD_ONLY, default=()),
    inspect.Parameter("validation_data", inspect.Parameter.KEYWORD_ONLY, default=None),
    inspect.Parameter("verbose", inspect.Parameter.KEYWORD_ONLY, default="auto"),
]
train.__signature__ = signature(_HEAD)  # type: ignore[attr-defined]


class Trainer:
    """`Trainer(model, loss=..., worker_optimizer=..., num_workers=2, ...).train(df)` returns the
    trained Keras model; `history` and `ps_stats` hold the run's record afterwards. The keywords
    are `train`'s, with the original's `num_epoch` for `epochs`."""

    plugin: ClassVar[str]

    def __init__(self, model: Any, *, config: RunConfig | None = None, **settings: Any) -> None:
        if "plugin" in settings:
            raise SettingError(
                f"{type(self).__name__} trains with {self.plugin}; "
                "use distkeras_plus.train(plugin=...) for another"
            )
        self.model = model
        self.config = from_keywords({**settings, "plugin": self.plugin}, config, legacy=True)
        self.result: TrainResult | None = None

    def train(
        self, df: Any, callbacks: Sequence[Any] = (), validation_data: Any = None, verbose: int | str = "auto"
    ) -> Any:
        self.result = driver.train(
            df,
            self.model,
            self.config,
            callbacks=callbacks,
            validation=validation_data,
            verbose=_level(verbose),
        )
        return self.result.model

    @property
    def history(self) -> list[dict[str, Any]]:
        """Each worker's history rows, as the original's trainers kept them (the per-epoch
        History is `result.history`)."""
        return self.result.worker_history if self.result else []

    @property
    def ps_stats(self) -> dict[str, Any]:
        return self.result.ps_stats if self.result else {}


Trainer.__init__.__signature__ = signature(  # type: ignore[attr-defined]
    [
        inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None),
    ],
    legacy=True,
)


class DOWNPOUR(Trainer):
    plugin = "downpour"


class ADAG(Trainer):
    plugin = "adag"


class DynSGD(Trainer):
    plugin = "dynsgd"


class Experimental(Trainer):
    """ADAG with per-weight staleness (`adag-adaptive`)."""

    plugin = "adag-adaptive"


class AEASGD(Trainer):
    plugin = "aeasgd"


class EAMSGD(Trainer):
    plugin = "eamsgd"


class EASGD(Trainer):
    plugin = "easgd"


class AveragingTrainer(Trainer):
    plugin = "averaging"


class EnsembleTrainer(Trainer):
    plugin = "ensemble"


class SingleTrainer(Trainer):
    plugin = "single"
