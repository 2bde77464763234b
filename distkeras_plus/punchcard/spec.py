"""The job spec: what a user may ask for, checked before anything is stored or run."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

# Names end up as single argv items (never in a shell), but a strict alphabet keeps them from
# ever reading as options or paths.
Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")]
Column = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_.]{0,127}$")]
OptionKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]
CodecName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]+(:[a-z0-9.]+)?$", max_length=32)]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
REMOTE_SCHEMES = frozenset({"hdfs", "s3a", "s3", "gs", "abfs", "abfss", "wasbs"})


SETTINGS = "settings.toml"  # the job's (empty) `dk train --config` file


class SpecError(ValueError):
    """A job spec that cannot run: one line saying why."""


class JobSpec(BaseModel):
    """A training run: the options of `dk train` that a remote user may set.

    The Spark master is not here: the operator picks it (`--spark-master`)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: str = Field("", max_length=100, description="A label for listings; never used as a path.")
    plugin: Name = "adag"
    options: dict[OptionKey, str | bool | int | float] = Field(default_factory=dict)
    data: str = Field(min_length=1, max_length=4096, description="Parquet or CSV file or folder, or a URI.")
    test_data: str | None = Field(None, min_length=1, max_length=4096, description="A test set, like data.")
    features: Column = "features"
    label: Column = "label"
    epochs: int = Field(20, ge=1, le=10_000)
    workers: int = Field(2, ge=1, le=1024)
    batch_size: int = Field(32, ge=1, le=1 << 20)
    codec: CodecName | None = None
    pull_codec: CodecName | None = None
    worker_optimizer: Name | None = None
    loss: Name | None = None
    seed: int = Field(0, ge=0, le=2**32 - 1)
    validation_split: float | None = Field(None, ge=0.0, lt=1.0)


def parse(raw: str | bytes, data_roots: Sequence[Path] = ()) -> JobSpec:
    """A spec from JSON text, checked against the schema, the installed optimizers and the data roots."""
    try:
        spec = JobSpec.model_validate_json(raw)
    except ValidationError as e:
        raise SpecError(_first_error(e)) from None
    check(spec, data_roots)
    return spec


def check(spec: JobSpec, data_roots: Sequence[Path] = ()) -> None:
    """What the schema cannot say: the optimizer and its options exist, codecs parse, the data is there."""
    from distkeras_plus import registry
    from distkeras_plus._core import Codec, DkError
    from distkeras_plus.optimizers import OptionError

    try:
        registry.get(spec.plugin).spec.parse_options(spec.options)
    except (registry.PluginError, OptionError) as e:
        raise SpecError(str(e)) from None
    for field, codec in (("codec", spec.codec), ("pull_codec", spec.pull_codec)):
        if codec is not None:
            try:
                Codec(codec)
            except (DkError, ValueError) as e:
                raise SpecError(f"{field}: {e}") from None
    _check_data("data", spec.data, data_roots)
    if spec.test_data is not None:
        _check_data("test_data", spec.test_data, data_roots)


def _check_data(field: str, data: str, roots: Sequence[Path]) -> None:
    if data.startswith("-") or any(c in data for c in "\0\n\r"):
        raise SpecError(f"{field}: not a path or URI")
    match = _SCHEME.match(data)
    if match and match.group(1).lower() != "file":
        if match.group(1).lower() not in REMOTE_SCHEMES:
            raise SpecError(
                f"{field}: scheme {match.group(1)!r} is not served; use a local path or one of "
                f"{', '.join(sorted(REMOTE_SCHEMES))}"
            )
        return
    local = Path(data[len("file://") :] if match else data)
    if not local.is_absolute():
        raise SpecError(f"{field}: a local path must be absolute (it is a path on the daemon's machine)")
    resolved = local.resolve()
    if roots and not any(resolved.is_relative_to(r.resolve()) for r in roots):
        # Said the same way whether or not the path exists, so it reveals nothing outside the roots.
        raise SpecError(f"{field}: the path is outside the folders this daemon serves data from")
    if not resolved.exists():
        raise SpecError(f"{field}: {data} does not exist on the daemon's machine")


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        return f"{where}: unknown field (fields: {', '.join(JobSpec.model_fields)})"
    if err["type"] == "json_invalid":
        return "the spec is not valid JSON"
    return f"{where}: {err['msg']}" if where else str(err["msg"])


def option_text(value: Any) -> str:
    """An option's value as `dk train --opt` reads it back."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def train_args(spec: JobSpec, job_dir: Path, model: Path, master: str | None, python: str) -> list[str]:
    """The argument list of the child that runs the job: `dk train`, no shell in between.

    Every value goes as `--option=value`, so none can be read as another option."""
    args = [
        python,
        "-P",  # never the current folder's distkeras_plus (a source checkout has no compiled core)
        "-m",
        "distkeras_plus",
        "train",
        f"--config={job_dir / SETTINGS}",
        f"--data={spec.data}",
        f"--features={spec.features}",
        f"--label={spec.label}",
        f"--model={model}",
        f"--plugin={spec.plugin}",
        *(f"--opt={k}={option_text(v)}" for k, v in sorted(spec.options.items())),
        f"--epochs={spec.epochs}",
        f"--workers={spec.workers}",
        f"--batch-size={spec.batch_size}",
        f"--seed={spec.seed}",
        f"--output={job_dir / 'output.keras'}",
        "--output-format=json",
        f"--progress-file={job_dir / 'progress.jsonl'}",
        f"--history-file={job_dir / 'history.json'}",
    ]
    optional = {
        "--master": master,
        "--test-data": spec.test_data,
        "--codec": spec.codec,
        "--pull-codec": spec.pull_codec,
        "--worker-optimizer": spec.worker_optimizer,
        "--loss": spec.loss,
        "--validation-split": None if spec.validation_split is None else repr(spec.validation_split),
    }
    args += [f"{flag}={value}" for flag, value in optional.items() if value is not None]
    return args
