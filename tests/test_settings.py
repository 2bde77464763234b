"""One declaration of a run's settings: the command line, the Python API (function and trainer
classes) and the punchcard job schema each expose every setting, with the same default and the
same checks."""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

import distkeras_plus
from distkeras_plus import ADAG, RunConfig, SettingError
from distkeras_plus.cli import main
from distkeras_plus.cli.train import train_command
from distkeras_plus.errors import SpecError
from distkeras_plus.punchcard.spec import JobSpec, parse, train_args
from distkeras_plus.settings import (
    JobConfig,
    Setting,
    api_names,
    base_type,
    cli_default,
    declared,
    default_of,
    remote_settings,
)

#: Values that a setting's own check (not its bounds) refuses.
REFUSED_BY_CHECK = {
    "codec": "gzip",
    "pull_codec": "int8",
    "master": "local[abc]",
    "remote": "http://host",
    "ps_location": "cluster",
}


def bad_values(name: str, s: Setting, hint: Any) -> Iterator[Any]:
    """Values of the right type that the setting refuses."""
    kind = base_type(hint)[0]
    step = 1 if kind is int else 0.5
    if s.minimum is not None:
        yield kind(s.minimum if s.above else s.minimum - step)
    if s.maximum is not None:
        yield kind(s.maximum if s.below else s.maximum + step)
    if s.check is not None:
        yield REFUSED_BY_CHECK[name]


def checked() -> list[tuple[str, Any]]:
    return [(name, bad) for name, s, hint in declared(JobConfig) for bad in bad_values(name, s, hint)]


def test_every_checked_setting_has_a_refused_value() -> None:
    for name, s, _ in declared(JobConfig):
        assert s.check is None or name in REFUSED_BY_CHECK, f"add a value {name} refuses to REFUSED_BY_CHECK"


def test_the_command_line_has_every_setting_with_its_default() -> None:
    params = {p.name: p for p in train_command.params}
    ctx = click.Context(train_command)
    for name, s, _ in declared(JobConfig):
        param = params["opts" if name == "options" else name]
        default = cli_default(JobConfig, name)
        given = param.get_default(ctx)
        if name == "options":
            assert param.multiple and default == {}
            continue
        assert (None if given is None else param.type.convert(given, param, ctx)) == default, name
        if default != default_of(JobConfig, name):
            assert s.cli_reason, f"{name}: a command-line default that differs from the API's says why"


def test_the_api_has_every_setting_with_its_default() -> None:
    names = {n for n, _, _ in declared(RunConfig)} - {"options"}
    for function, legacy in ((distkeras_plus.train, False), (ADAG.__init__, True)):
        params = inspect.signature(function).parameters
        assert inspect.Parameter.VAR_KEYWORD in {p.kind for p in params.values()}  # the optimizer's options
        for name, s, _ in declared(RunConfig):
            if name == "options" or (legacy and name == "plugin"):  # a trainer class is its plugin
                continue
            key = (s.legacy if legacy else None) or s.api or name
            assert params[key].default == default_of(RunConfig, name), (function, key)
            names.discard(name)
    assert not names
    assert set(api_names().values()) == {n for n, _, _ in declared(RunConfig)} - {"options"}


def test_the_job_schema_has_every_remote_setting_with_its_default() -> None:
    fields = JobSpec.model_fields
    for name, s, _ in remote_settings():
        if s.remote_required:
            assert fields[name].is_required()
        else:
            assert fields[name].get_default(call_default_factory=True) == cli_default(JobConfig, name), name
    assert set(fields) - {"name"} == {n for n, _, _ in remote_settings()}


@pytest.mark.parametrize(("name", "bad"), checked())
def test_every_surface_refuses_the_same_values(name: str, bad: Any) -> None:
    s = dict((n, s) for n, s, _ in declared(JobConfig))[name]
    flag = f"--{name.replace('_', '-')}"
    result = CliRunner().invoke(main, ["train", f"{flag}={bad}"])
    assert result.exit_code == 2 and name in result.output, result.output
    if name in api_names().values():
        key = s.api or name
        with pytest.raises(SettingError, match=name):
            distkeras_plus.train(None, None, **{key: bad})
        with pytest.raises(SettingError, match=name):
            ADAG(None, **{s.legacy or key: bad})
        with pytest.raises(SettingError, match=name):
            RunConfig(**{name: bad})
    if s.remote:
        with pytest.raises(SpecError, match=name):
            parse(json.dumps({"data": "/", name: bad}))


def test_text_is_converted_on_the_command_line_only() -> None:
    assert JobConfig(workers=4).workers == 4
    with pytest.raises(SettingError, match="workers takes an integer"):
        RunConfig(workers="4")  # type: ignore[arg-type]
    result = CliRunner().invoke(main, ["train", "--workers=four"])
    assert result.exit_code == 2 and "workers takes an integer, got 'four'" in result.output
    with pytest.raises(SpecError, match="workers"):
        parse(json.dumps({"data": "/", "workers": "4"}))
    with pytest.raises(SettingError, match="finite"):
        RunConfig(timeout=float("nan"))


def test_the_job_schema_keeps_names_to_a_safe_alphabet() -> None:
    assert RunConfig(loss="my loss").loss == "my loss"  # the API passes it to Keras as it is
    with pytest.raises(SpecError, match="loss"):
        parse(json.dumps({"data": "/", "loss": "--help"}))


def test_a_job_spec_runs_dk_train_with_every_setting() -> None:
    spec = parse(json.dumps({"data": "/", "epochs": 3, "options": {"window": 4}, "loss": "mse"}))
    args = train_args(spec, Path("/job"), Path("/m.keras"), None, "py")
    assert "--epochs=3" in args and "--opt=window=4" in args and "--loss=mse" in args
    assert "--test-split=0.2" in args and "--data=/" in args
    flags = {a.split("=")[0] for a in args if a.startswith("--")}
    for name, _, _ in remote_settings():
        value = getattr(spec.config(), name)
        if name != "options" and value is not None:
            assert f"--{name.replace('_', '-')}" in flags, name
    cluster = train_args(spec, Path("/job"), Path("/m.keras"), None, "py", remote="sc://spark:15002")
    assert "--remote=sc://spark:15002" in cluster and not any(a.startswith("--master") for a in cluster)


def test_a_checkpoint_records_the_settings_whole() -> None:
    job = JobConfig(epochs=3, options={"window": 4}, metrics=["accuracy", "mse"])
    assert job.metrics == ("accuracy", "mse")
    recorded = json.loads(json.dumps(job.to_dict()))
    assert JobConfig.from_dict(recorded) == job
    with pytest.raises(SettingError, match="unknown settings epoch"):
        JobConfig.from_dict({**recorded, "epoch": 3})


def test_keywords_that_are_not_settings_are_the_optimizers_options() -> None:
    trainer = ADAG(None, num_epoch=3, num_workers=4, window=7)
    assert trainer.config.epochs == 3 and trainer.config.workers == 4
    assert trainer.config.options == {"window": 7} and trainer.config.plugin == "adag"
    with pytest.raises(SettingError, match="ADAG trains with adag"):
        ADAG(None, plugin="easgd")
    base = RunConfig(epochs=5, options={"window": 2})
    assert ADAG(None, config=base, batch_size=8).config == RunConfig(
        plugin="adag", epochs=5, batch_size=8, options={"window": 2}
    )
