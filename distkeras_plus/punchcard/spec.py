"""The job spec: what a user may ask for, checked before anything is stored or run."""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    create_model,
)

from distkeras_plus.errors import DkError, SpecError
from distkeras_plus.settings import JobConfig, Setting, base_type, cli_default, parse_value, remote_settings

OptionKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
REMOTE_SCHEMES = frozenset({"hdfs", "s3a", "s3", "gs", "abfs", "abfss", "wasbs"})


SETTINGS = "settings.toml"  # the job's (empty) `dk train --config` file


class _Spec(BaseModel):
    """A training run: the settings of `dk train` that a remote user may set (`Setting.remote`).

    The Spark master is not here: the operator picks it (`--spark-master`)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: str = Field("", max_length=100, description="A label for listings; never used as a path.")

    def config(self) -> JobConfig:
        """The spec as the run's settings."""
        return JobConfig(**{n: getattr(self, n) for n, _, _ in remote_settings()})


#: The settings that name data on the daemon's machine: checked against its data roots.
PATHS = ("data", "test_data", "validation_data")


def _field(name: str, s: Setting, hint: Any) -> tuple[Any, Any]:
    """A job-spec field with the setting's type, default, help and checks (and, for names that
    end up on the daemon's command line, its stricter alphabet)."""
    kind, optional = base_type(hint)
    kind = s.text or kind
    if name == "options":
        kind = dict[OptionKey, str | bool | int | float]
    elif name in PATHS:
        kind = Annotated[str, StringConstraints(min_length=1, max_length=4096)]
    elif kind is str and s.pattern:
        kind = Annotated[str, StringConstraints(pattern=s.pattern, max_length=128)]
    annotation: Any = Annotated[kind, AfterValidator(functools.partial(parse_value, name))]
    if optional or cli_default(JobConfig, name) is None:
        annotation = annotation | None
    if s.remote_required:
        return annotation, Field(description=s.help)
    # The bounds are checked by the setting itself; here they document the schema.
    named = (
        ("exclusiveMinimum" if s.above else "minimum", s.minimum),
        ("exclusiveMaximum" if s.below else "maximum", s.maximum),
    )
    bounds: dict[str, Any] = {k: v for k, v in named if v is not None}
    default = cli_default(JobConfig, name)
    if isinstance(default, dict):
        return annotation, Field(default_factory=dict, description=s.help)
    return annotation, Field(default, description=s.help, json_schema_extra=bounds or None)


JobSpec = create_model(
    "JobSpec",
    __base__=_Spec,
    **{n: _field(n, s, h) for n, s, h in remote_settings()},  # type: ignore[call-overload]
)


def parse(raw: str | bytes, data_roots: Sequence[Path] = ()) -> _Spec:
    """A spec from JSON text, checked against the schema, the installed optimizers and the data roots."""
    _check_finite(raw)
    try:
        spec: _Spec = JobSpec.model_validate_json(raw)
    except ValidationError as e:
        raise SpecError(_first_error(e)) from None
    check(spec, data_roots)
    return spec


def _check_finite(raw: str | bytes) -> None:
    """JSON has no NaN or infinity, yet parsers read `NaN`, `Infinity` and `1e999` (as inf):
    any of them, anywhere in the spec, is refused naming where it is. Text that does not parse
    is left to the schema, which says what is wrong with it."""
    try:
        value = json.loads(raw, parse_constant=float)
    except (ValueError, RecursionError):
        return
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:  # not recursive: the nesting is not bounded yet
        where, v = stack.pop()
        if isinstance(v, float) and not math.isfinite(v):
            raise SpecError(f"{where or 'the spec'}: must be a finite number, got {v}")
        if isinstance(v, dict):
            stack += [(f"{where}.{k}" if where else str(k), x) for k, x in reversed(v.items())]
        elif isinstance(v, list):
            stack += [(f"{where}.{i}" if where else str(i), x) for i, x in reversed(list(enumerate(v)))]


def check(spec: _Spec, data_roots: Sequence[Path] = ()) -> None:
    """What the schema cannot say: the optimizer and its options exist, the data is there."""
    from distkeras_plus.plugins import registry

    config = spec.config()
    try:
        optimizer = registry.get(config.plugin).spec
        optimizer.rule_for(optimizer.parse_options(config.options), config.workers)
    except DkError as e:
        raise SpecError(str(e)) from None
    for name in PATHS:
        if (path := getattr(config, name)) is not None or name == "data":
            _check_data(name, path or "", data_roots)


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
    if err["type"] == "value_error":  # a setting's own check: its message names it
        return str(err["ctx"]["error"])
    return f"{where}: {err['msg']}" if where else str(err["msg"])


def train_args(
    spec: _Spec, job_dir: Path, model: Path, master: str | None, python: str, remote: str | None = None
) -> list[str]:
    """The argument list of the child that runs the job: `dk train`, no shell in between.

    Every value goes as `--option=value`, so none can be read as another option (`--overwrite`,
    a flag, takes none)."""
    config = spec.config()
    args = [
        python,
        "-P",  # never the current folder's distkeras_plus (a source checkout has no compiled core)
        "-m",
        "distkeras_plus",
        "train",
        f"--config={job_dir / SETTINGS}",
        f"--model={model}",
        f"--output={job_dir / 'output.keras'}",
        "--overwrite",  # the job's own file: a job started again replaces what an earlier attempt left
        "--output-format=json",
        f"--progress-file={job_dir / 'progress.jsonl'}",
        f"--history-file={job_dir / 'history.json'}",
    ]
    if master is not None:
        args.append(f"--master={master}")
    if remote is not None:
        args.append(f"--remote={remote}")
    for name, _, _ in remote_settings():
        value = getattr(config, name)
        if name == "options":
            args += [f"--opt={k}={option_text(v)}" for k, v in sorted(value.items())]
        elif value is not None:
            args.append(f"--{name.replace('_', '-')}={option_text(value)}")
    return args


def option_text(value: Any) -> str:
    """A value as `dk train` reads it back."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return ",".join(map(str, value))
    return repr(value) if isinstance(value, float) else str(value)
