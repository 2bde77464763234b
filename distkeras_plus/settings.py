"""One declaration of a run's settings: each one's type, default, help and check, written once.

`RunConfig` is what `distkeras_plus.train` and the trainer classes take; `JobConfig` adds what
`dk train` needs to find its data and model and where to save the result. The `dk train`
options, the Python API's keywords, the punchcard job schema and what a checkpoint records are
all made from these two classes; adding a setting is adding a field here (and the code that
uses it).

A field's name is its name on the command line (`batch_size` is `--batch-size`, `DK_BATCH_SIZE`),
in settings files, job specs and checkpoints. `Setting.api` gives the Python keyword where the
API keeps the name the original dist-keras used (`num_workers`, `features_col`).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Self

from distkeras_plus._core import CODEC_SYNTAX, PULL_CODECS, Codec
from distkeras_plus.errors import SettingError

#: Names that become single argv items on a punchcard daemon's machine: a strict alphabet keeps
#: them from ever reading as options or paths.
NAME = r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$"
COLUMN = r"^[A-Za-z_][A-Za-z0-9_.]{0,127}$"
CODEC = r"^[a-z0-9]+(:[a-z0-9.]+)?$"

_SAME: Any = object()  # `cli_default` not given: the command line uses `default`


@dataclass(frozen=True)
class Setting:
    """What a field of `RunConfig` or `JobConfig` means and accepts (its type is the field's)."""

    help: str
    #: The Python API's keyword, where it differs from the field name.
    api: str | None = None
    #: The keyword of the original-style trainer classes, where it differs again (`num_epoch`).
    legacy: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    #: The bound itself is not allowed.
    above: bool = False
    below: bool = False
    #: A further check of a value of the right type (codec names are the core's to judge).
    check: Callable[[Any], None] | None = None
    #: Text form for values the API takes as Python objects too (a Keras loss, metrics).
    text: type | None = None
    #: `dk train`'s default where it differs on purpose from the API's, and why.
    cli_default: Any = _SAME
    cli_reason: str = ""
    metavar: str | None = None
    #: A punchcard user may set it in a job spec (checked against `pattern`, when given).
    remote: bool = False
    remote_required: bool = False
    pattern: str | None = None


def setting(default: Any, help: str, **meta: Any) -> Any:
    """A dataclass field with its `Setting`. A list or dict default is copied for each config."""
    s = Setting(help, **meta)
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"setting": s})
    return dataclasses.field(default=default, metadata={"setting": s})


def _codec(name: Any) -> None:
    Codec(name)  # its InvalidArgumentError names the codecs


def _pull_codec(name: Any) -> None:
    if not Codec(name).pull_capable:
        raise SettingError(f"pulls can use {', '.join(PULL_CODECS)}, not {name}")


def _master(url: Any) -> None:
    from distkeras_plus.spark.session import check_master_url

    check_master_url(url)


def _ps_location(where: Any) -> None:
    if where not in ("driver", "executor", "auto"):
        raise ValueError(f"takes driver, executor or auto, not {where!r}")  # parse names the setting


def _remote(url: Any) -> None:
    from distkeras_plus.spark.session import check_remote_url

    check_remote_url(url)


@dataclass(frozen=True)
class RunConfig:
    """The settings of one training run (see `distkeras_plus.train`)."""

    plugin: str = setting("adag", "Distributed optimizer (see `dk plugins list`).", remote=True, pattern=NAME)
    options: dict[str, Any] = setting(
        {}, "Options of the optimizer, e.g. window=12 (see `dk plugins info NAME`).", remote=True
    )
    features: str = setting("features", "Features column.", api="features_col", remote=True, pattern=COLUMN)
    label: str = setting("label", "Label column.", api="label_col", remote=True, pattern=COLUMN)
    workers: int = setting(2, "Number of workers.", api="num_workers", minimum=1, maximum=1024, remote=True)
    epochs: int = setting(
        1,
        "Passes over the data.",
        legacy="num_epoch",
        minimum=1,
        maximum=10_000,
        cli_default=20,
        cli_reason="the built-in data set and model reach their target accuracy in 20 epochs; the "
        "API's 1 is Keras' own default for a model of the user's",
        remote=True,
    )
    batch_size: int = setting(32, "Mini-batch size.", minimum=1, maximum=1 << 20, remote=True)
    loss: Any = setting(
        None,
        "Keras loss (default: the model's if it is compiled, else (sparse) categorical "
        "cross-entropy, from the label).",
        text=str,
        remote=True,
        pattern=NAME,
    )
    metrics: Any = setting(
        None,
        "Keras metrics, comma-separated on the command line (default: the model's if it is "
        "compiled, else accuracy).",
        text=tuple,
    )
    worker_optimizer: Any = setting(
        None,
        "Keras optimizer of the workers: a name or a config (default: the model's if it is "
        "compiled, else the plugin's).",
        text=str,
        remote=True,
        pattern=NAME,
    )
    learning_rate: float | None = setting(
        None,
        "Learning rate of the workers' optimizer (default: the optimizer's own).",
        minimum=0,
        above=True,
        remote=True,
    )
    validation_split: float = setting(
        0.0,
        "Fraction of the training data held out to validate the model on at every epoch's end "
        "(val_loss, val_accuracy, ...).",
        minimum=0,
        maximum=1,
        below=True,
        remote=True,
    )
    validation_in_memory_mb: int = setting(
        256,
        "MiB of validation data the driver holds and evaluates itself; larger validation data is "
        "evaluated on Spark at every epoch's end, in a task slot the training leaves free.",
        minimum=0,
        maximum=1 << 30,
        metavar="MIB",
        remote=True,
    )
    early_stopping: int | None = setting(
        None,
        "Stop once --monitor has not improved for this many epochs, and keep the best epoch's weights.",
        minimum=1,
        metavar="PATIENCE",
        remote=True,
    )
    monitor: str | None = setting(
        None,
        "What --early-stopping watches (default: val_loss with validation data, else loss).",
        remote=True,
        pattern=NAME,
    )
    tensorboard: str | None = setting(
        None,
        "Write TensorBoard logs here: each epoch's scalars (train/, validation/) and the parameter "
        "server's (server/: commits per second, staleness, bytes, each worker's loss).",
        api="tensorboard_dir",
        metavar="DIR",
    )
    seed: int = setting(0, "Random seed.", minimum=0, maximum=2**32 - 1, remote=True)
    codec: str | None = setting(
        None,
        f"Commit codec: {CODEC_SYNTAX} (default: the plugin's).",
        check=_codec,
        remote=True,
        pattern=CODEC,
    )
    pull_codec: str = setting(
        "none", f"Pull codec: {', '.join(PULL_CODECS)}.", check=_pull_codec, remote=True, pattern=CODEC
    )
    ps_host: str | None = setting(
        None, "Address of this machine that executors can reach (default: found from Spark)."
    )
    ps_location: str = setting(
        "auto",
        "Where the parameter server runs: driver (this process), executor (a task of the training "
        "stage, for executors that cannot reach this machine), or auto: executor under Spark "
        "Connect when the executors are on other machines, else driver.",
        check=_ps_location,
        metavar="driver|executor|auto",
    )
    timeout: float = setting(
        600.0,
        "Seconds a worker may stay silent, and a synchronous round may wait, before it is dropped.",
        minimum=0,
        above=True,
    )
    in_memory_mb: int | None = setting(
        None,
        "MiB of its partition a worker holds in memory; a larger partition is spilled to the "
        "executor's local disk and streamed back every epoch (default: 1024, or less where "
        "spark.executor.pyspark.memory leaves less).",
        minimum=0,
        maximum=1 << 30,
        metavar="MIB",
        remote=True,
    )
    checkpoint_dir: str | None = setting(
        None, "Write checkpoints of the centre here (a local folder or a Hadoop URI).", metavar="DIR"
    )
    checkpoint_every: int | None = setting(None, "Checkpoint after every N commits.", minimum=1, metavar="N")
    checkpoint_seconds: float | None = setting(
        60.0, "Checkpoint at least this often while the centre changes.", minimum=0, above=True
    )

    def __post_init__(self) -> None:
        for name, s, hint in declared(type(self)):
            object.__setattr__(self, name, parse(name, s, hint, getattr(self, name)))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (what a checkpoint records)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise SettingError(f"unknown settings {', '.join(unknown)}")
        return cls(**data)


@dataclass(frozen=True)
class JobConfig(RunConfig):
    """A `dk train` run: a `RunConfig` plus where its data and model come from and go."""

    dataset: str = setting("digits", "Built-in data set (see `dk datasets list`).")
    data: str | None = setting(
        None,
        "Train on this Parquet or CSV file or folder (or hdfs://, s3a://, file:// URI) instead.",
        metavar="PATH",
        remote=True,
        remote_required=True,
    )
    test_data: str | None = setting(
        None, "Test set for --data (default: --test-split of it).", metavar="PATH", remote=True
    )
    validation_data: str | None = setting(
        None,
        "Validate on this Parquet or CSV file or folder at every epoch's end (instead of "
        "--validation-split).",
        metavar="PATH",
        remote=True,
    )
    model: str | None = setting(
        None, "Model to train (default: a small MLP that fits the data).", metavar="FILE.keras"
    )
    master: str | None = setting(None, "Spark master URL (default: local[WORKERS]).", check=_master)
    remote: str | None = setting(
        None,
        "Spark Connect URL to train through instead of a master: sc://HOST:PORT, or local[N] for a "
        "Connect server started here (also SPARK_REMOTE).",
        check=_remote,
        metavar="URL",
    )
    test_split: float = setting(
        0.2,
        "Fraction of --data held out as the test set, apart from any validation data (0: none).",
        minimum=0,
        maximum=1,
        below=True,
        remote=True,
    )
    output: str | None = setting(
        None,
        "Where to save the trained model, a local path or a URI (default: ./dk-model-PLUGIN.keras).",
        metavar="PATH.keras",
    )
    overwrite: bool = setting(False, "Replace the file at --output if there is one (default: refuse).")

    @property
    def output_path(self) -> str:
        return self.output or f"dk-model-{self.plugin}.keras"

    def run_config(self) -> RunConfig:
        """The settings `distkeras_plus.train` takes."""
        names = {f.name for f in dataclasses.fields(RunConfig)}
        return RunConfig(**{k: v for k, v in dataclasses.asdict(self).items() if k in names})


_declared: dict[type[RunConfig], tuple[tuple[str, Setting, Any], ...]] = {}


def declared(cls: type[RunConfig]) -> tuple[tuple[str, Setting, Any], ...]:
    """(name, setting, type) of every field of `cls`, in declaration order."""
    if cls not in _declared:
        hints = typing.get_type_hints(cls)
        _declared[cls] = tuple(
            (f.name, f.metadata["setting"], hints[f.name]) for f in dataclasses.fields(cls)
        )
    return _declared[cls]


def default_of(cls: type[RunConfig], name: str) -> Any:
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def cli_default(cls: type[RunConfig], name: str) -> Any:
    """`dk train`'s default: the setting's, or its declared `cli_default`."""
    s = next(s for n, s, _ in declared(cls) if n == name)
    return default_of(cls, name) if s.cli_default is _SAME else s.cli_default


def base_type(hint: Any) -> tuple[Any, bool]:
    """The type a field takes and whether it may be None (`str | None` -> `(str, True)`)."""
    args = typing.get_args(hint)
    if type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        return inner, True
    return hint, False


def parse(name: str, s: Setting, hint: Any, value: Any, from_text: bool = False) -> Any:
    """`value` checked (and, `from_text`, converted from command-line or environment text)."""
    kind, optional = base_type(hint)
    if value is None:
        if optional or kind is Any:
            return None
        raise SettingError(f"{name} needs a value")
    kind = s.text if kind is Any and (from_text or s.text is tuple) else kind
    value = _typed(name, kind, value, from_text)
    if isinstance(value, int | float) and not isinstance(value, bool):
        _bounds(name, s, value)
    if s.check is not None:
        try:
            s.check(value)
        except ValueError as e:  # the core's InvalidArgumentError is one
            raise SettingError(f"{name}: {e}") from None
    return value


def parse_value(name: str, value: Any) -> Any:
    """`parse` for the setting `name` of `JobConfig`, of a value already of its type (a job spec's)."""
    ((s, hint),) = [(s, h) for n, s, h in declared(JobConfig) if n == name]
    return parse(name, s, hint, value)


def _typed(name: str, kind: Any, value: Any, from_text: bool) -> Any:
    origin = typing.get_origin(kind) or kind
    if kind is Any:
        return value
    if origin is tuple:  # metrics: a sequence, or comma-separated text
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            raise SettingError(f"{name} takes a list, got {value!r}")
        return tuple(i.strip() if isinstance(i, str) else i for i in items if i != "")
    if origin is dict:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise SettingError(f"{name} takes a mapping of names to values, got {value!r}")
        return dict(value)
    if from_text and isinstance(value, str) and kind in (int, float):
        try:
            value = kind(value)
        except ValueError:
            raise SettingError(f"{name} takes {_article(kind)}, got {value!r}") from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise SettingError(f"{name} takes {_article(kind)}, got {value!r}")
    if kind is float and not math.isfinite(value):
        raise SettingError(f"{name} must be a finite number, got {value!r}")
    return value


def _article(kind: type) -> str:
    return {int: "an integer", float: "a number", str: "text", bool: "true or false"}.get(kind, kind.__name__)


def _bounds(name: str, s: Setting, value: float) -> None:
    low, high = s.minimum, s.maximum
    if low is not None and (value < low or (s.above and value == low)):
        raise SettingError(f"{name} must be {'above' if s.above else 'at least'} {_num(low)}, got {value!r}")
    if high is not None and (value > high or (s.below and value == high)):
        raise SettingError(f"{name} must be {'below' if s.below else 'at most'} {_num(high)}, got {value!r}")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def describe_bounds(s: Setting) -> str:
    """`[1 <= x <= 1024]`-style text for help."""
    low = f"{_num(s.minimum)} {'<' if s.above else '<='} " if s.minimum is not None else ""
    high = f" {'<' if s.below else '<='} {_num(s.maximum)}" if s.maximum is not None else ""
    return f"[{low}x{high}]" if low or high else ""


# ---- the Python API's keywords ----


def api_names(cls: type[RunConfig] = RunConfig) -> dict[str, str]:
    """Python keyword -> field name, for every setting of `cls` but the optimizer's options
    (which the API takes as further keywords)."""
    return {(s.api or name): name for name, s, _ in declared(cls) if name != "options"}


def from_keywords(given: Mapping[str, Any], base: RunConfig | None = None, legacy: bool = False) -> RunConfig:
    """A `RunConfig` from the API's keywords: settings by their keyword, everything else an
    option of the optimizer (checked against the plugin's declared options when the run starts)."""
    names = api_names()
    if legacy:
        names.update({s.legacy: name for name, s, _ in declared(RunConfig) if s.legacy})
    changes: dict[str, Any] = {}
    options = dict(base.options) if base is not None else {}
    for key, value in given.items():
        if key in names:
            changes[names[key]] = value
        elif key == "options":
            options.update(value or {})
        else:
            options[key] = value
    changes["options"] = options
    return dataclasses.replace(base, **changes) if base is not None else RunConfig(**changes)


def signature(head: list[inspect.Parameter], legacy: bool = False) -> inspect.Signature:
    """The signature the API shows (`help()`, notebooks): `head`, then every setting by keyword.
    A setting in `head` (`plugin`) shows its setting's default."""
    params = []
    for p in head:
        if p.name in api_names():
            p = p.replace(default=default_of(RunConfig, api_names()[p.name]))
        params.append(p)
    for name, s, _ in declared(RunConfig):
        key = (s.legacy if legacy and s.legacy else None) or s.api or name
        if name == "options" or key in {p.name for p in head} or (legacy and name == "plugin"):
            continue  # a trainer class is its plugin
        params.append(
            inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, default=default_of(RunConfig, name))
        )
    params.append(inspect.Parameter("options", inspect.Parameter.VAR_KEYWORD))
    return inspect.Signature(params)


def keywords_doc(legacy: bool = False) -> str:
    """One line per keyword: the settings part of the API's docstrings."""
    lines = []
    for name, s, _ in declared(RunConfig):
        key = (
            "**options" if name == "options" else (s.legacy if legacy and s.legacy else None) or s.api or name
        )
        lines.append(f"    {key}: {s.help}")
    return "\n".join(lines)


def remote_settings() -> Iterator[tuple[str, Setting, Any]]:
    return ((n, s, h) for n, s, h in declared(JobConfig) if s.remote)
