"""The Python API: `train(df, model, plugin=...)` and one trainer class per built-in optimizer."""

from __future__ import annotations

from typing import Any, ClassVar

from distkeras_plus.checkpoint import Checkpoint, Folder, Policy
from distkeras_plus.engine import TrainResult
from distkeras_plus.engine import train as _train


def train(
    df: Any,
    model: Any,
    plugin: str = "adag",
    *,
    features_col: str = "features",
    label_col: str = "label",
    num_workers: int = 2,
    epochs: int = 1,
    batch_size: int = 32,
    loss: Any = None,
    metrics: list[Any] | None = None,
    worker_optimizer: Any = None,
    seed: int = 0,
    ps_host: str | None = None,
    codec: str | None = None,
    pull_codec: str = "none",
    timeout: float = 600.0,
    checkpoint_dir: str | None = None,
    checkpoint_every: int | None = None,
    checkpoint_seconds: float | None = 60.0,
    resume: Checkpoint | str | None = None,
    **options: Any,
) -> TrainResult:
    """Trains a Keras model data-parallel on a Spark DataFrame.

    `df` has a features column (array of numbers or ML vector) and a label column (class index or
    one-hot); it may also be the path of a Parquet or CSV file or folder (see `data.read`).
    `plugin` names a distributed optimizer (`dk plugins list`); `options` are its own
    (e.g. `window=12`). `loss` defaults to sparse or plain categorical cross-entropy, depending on
    the label; `worker_optimizer` is any Keras optimizer name or config. `codec` compresses commits
    (`none`, `fp16`, `bf16`, `int8`, `int8:stochastic`, `topk:RATIO`; default: the optimizer's),
    `pull_codec` pulls (`none`, `fp16`, `bf16`). `timeout` (seconds) drops a worker that stays
    silent that long and abandons a synchronous round that waits that long for a worker.

    `checkpoint_dir` (a local folder or a Hadoop URI) receives the centre, its clock and the run's
    configuration every `checkpoint_every` commits and/or `checkpoint_seconds` seconds, and at the
    end. `resume` (a `Checkpoint`, or a checkpoint folder: its newest valid checkpoint) starts from
    that centre and clock and skips the epochs it had done; the model must have the same weights'
    shapes. Returns the trained model with each worker's history and the parameter server's
    statistics.
    """
    if isinstance(resume, str):
        resume = Folder(resume, getattr(df, "sparkSession", None)).latest()
    return _train(
        df,
        model,
        plugin,
        options,
        features_col=features_col,
        label_col=label_col,
        num_workers=num_workers,
        epochs=epochs,
        batch_size=batch_size,
        loss=loss,
        metrics=metrics,
        worker_optimizer=worker_optimizer,
        seed=seed,
        ps_host=ps_host,
        codec=codec,
        pull_codec=pull_codec,
        timeout=timeout,
        checkpoint_dir=checkpoint_dir,
        checkpoint_policy=Policy(checkpoint_every, checkpoint_seconds),
        resume=resume,
    )


class Trainer:
    """`Trainer(model, loss=..., worker_optimizer=..., num_workers=2, ...).train(df)` returns the
    trained Keras model; `history` and `ps_stats` hold the run's record afterwards."""

    plugin: ClassVar[str]

    def __init__(
        self,
        model: Any,
        *,
        loss: Any = None,
        worker_optimizer: Any = None,
        metrics: list[Any] | None = None,
        num_workers: int = 2,
        batch_size: int = 32,
        num_epoch: int = 1,
        features_col: str = "features",
        label_col: str = "label",
        seed: int = 0,
        codec: str | None = None,
        pull_codec: str = "none",
        **options: Any,
    ) -> None:
        self.model = model
        self.settings: dict[str, Any] = {
            "loss": loss,
            "worker_optimizer": worker_optimizer,
            "metrics": metrics,
            "num_workers": num_workers,
            "batch_size": batch_size,
            "epochs": num_epoch,
            "features_col": features_col,
            "label_col": label_col,
            "seed": seed,
            "codec": codec,
            "pull_codec": pull_codec,
        }
        self.options = options
        self.result: TrainResult | None = None

    def train(self, df: Any) -> Any:
        self.result = train(df, self.model, self.plugin, **self.settings, **self.options)
        return self.result.model

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.result.history if self.result else []

    @property
    def ps_stats(self) -> dict[str, Any]:
        return self.result.ps_stats if self.result else {}


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
