"""`dk train`: its options are the run's settings (`distkeras_plus.settings.JobConfig`), each one
from the command line, a `DK_<OPTION>` variable, a `--config` file or the nearest pyproject.toml."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from distkeras_plus.cli.common import OUTPUT_FORMAT, DkCommand
from distkeras_plus.errors import SettingError
from distkeras_plus.settings import (
    JobConfig,
    Setting,
    base_type,
    cli_default,
    declared,
    describe_bounds,
    parse,
)

F = TypeVar("F", bound=Callable[..., Any])


class SettingType(click.ParamType):  # type: ignore[type-arg]
    """A setting's own parsing and checks, for Click (the same the API and job specs use)."""

    def __init__(self, name: str, setting: Setting, hint: Any) -> None:
        self.setting_name, self.setting, self.hint = name, setting, hint
        kind = setting.text or base_type(hint)[0]
        self.name = {int: "integer", float: "float", tuple: "list"}.get(kind, "text")

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return parse(self.setting_name, self.setting, self.hint, value, from_text=isinstance(value, str))
        except SettingError as e:
            self.fail(str(e), param, ctx)


def setting_options(f: F) -> F:
    """Adds one option per setting of `JobConfig`, in declaration order."""
    for name, s, hint in reversed(declared(JobConfig)):
        if name == "options":
            f = click.option(
                "--opt",
                "opts",
                multiple=True,
                metavar="KEY=VALUE",
                help=s.help.replace("e.g. ", "e.g. --opt "),
            )(f)
            continue
        default = cli_default(JobConfig, name)
        if base_type(hint)[0] is bool:
            f = click.option(f"--{name.replace('_', '-')}", name, is_flag=True, default=default, help=s.help)(
                f
            )
            continue
        bounds = describe_bounds(s)
        f = click.option(
            f"--{name.replace('_', '-')}",
            name,
            type=SettingType(name, s, hint),
            default=",".join(default) if isinstance(default, tuple) else default,
            show_default=default is not None,
            metavar=s.metavar,
            help=f"{s.help} {bounds}".strip(),
        )(f)
    return f


def _load_config(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """Eager: turns a settings file into Click defaults before the other options are read."""
    from distkeras_plus.cli.config_files import find_pyproject, read_settings

    path = value if value is not None else find_pyproject(Path.cwd())
    if path is None:
        return None
    names = [p.name for p in ctx.command.params if p.name and p.name != "config"]
    ctx.default_map = {**(ctx.default_map or {}), **read_settings(path, names)}
    return path


# DK_PLUGIN, DK_WORKERS, ...: `dk train` reads every option from DK_<OPTION> as well.
@click.command("train", cls=DkCommand, context_settings={"auto_envvar_prefix": "DK"})
@click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path, exists=True),
    is_eager=True,
    expose_value=False,
    callback=_load_config,
    help="A TOML file of settings (default: [tool.distkeras_plus] in the nearest pyproject.toml).",
)
@setting_options
@click.option(
    "--resume",
    default=None,
    metavar="DIR",
    help="Continue the run whose checkpoints are in DIR, with its recorded settings.",
)
@click.option(
    "--progress-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Append the run's progress to this file as JSON lines, about once a second.",
)
@click.option(
    "--history-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the run's history to this file as JSON: per epoch, and each worker's rows "
    "(`dk history plot` draws it).",
)
@OUTPUT_FORMAT
def train_command(
    opts: tuple[str, ...],
    resume: str | None,
    progress_file: Path | None,
    history_file: Path | None,
    output_format: str,
    **settings: Any,
) -> None:
    """Train a model on Spark with a distributed optimizer and report its test accuracy.

    Every option can also come from a DK_<OPTION> environment variable (DK_WORKERS=4), a
    --config file or the [tool.distkeras_plus] table of the nearest pyproject.toml.
    """
    from distkeras_plus.ps.serve import key_values
    from distkeras_plus.spark.job import resumed, run_training

    job = JobConfig(**settings, options=dict(key_values(opts)))
    record = progress_file.open("a") if progress_file is not None else None

    def progress(update: dict[str, Any]) -> None:
        if record is not None:
            record.write(json.dumps(update) + "\n")
            record.flush()

    try:
        checkpoint = None
        if resume is not None:
            recorded, checkpoint = resumed(resume, job.master, job.workers)
            job = _check_resume(click.get_current_context(), resume, job, recorded)
        # On a terminal, Keras' own progress bar per epoch; on stderr, so that stdout holds the
        # result alone.
        verbose = 1 if sys.stderr.isatty() else 0
        with contextlib.redirect_stdout(sys.stderr):
            report, history = run_training(job, progress if record else None, checkpoint, verbose)
    finally:
        if record is not None:
            record.close()
    if history_file is not None:
        history_file.write_text(json.dumps(history))
    if output_format == "json":
        click.echo(json.dumps(report))
        return
    accuracy = (
        f"test accuracy {report['test_accuracy']:.4f} (loss {report['test_loss']:.4f}, "
        f"{report['test_samples']} samples)"
        if report["test_accuracy"] is not None
        else "no test set"
    )
    if report["resumed_from_clock"] is not None:
        click.echo(f"resumed from the checkpoint at clock {report['resumed_from_clock']}")
    click.echo(
        f"{report['plugin']}: {accuracy} after {report['epochs']} epochs on {report['workers']} workers, "
        f"{report['samples']} samples in {report['seconds']:.1f} s; {report['commits']} commits "
        f"({report['codec']}), {report['bytes_received'] / 1e6:.2f} MB committed, "
        f"{report['bytes_sent'] / 1e6:.2f} MB pulled; model saved to {report['model_path']}"
    )


def _check_resume(ctx: click.Context, folder: str, given: JobConfig, recorded: JobConfig) -> JobConfig:
    """--resume goes on with the recorded run: a setting given now that differs from it is refused,
    not dropped. Only where the run goes on (--master), where its model goes (--output,
    --overwrite) and how much of its partition a worker holds (--in-memory-mb) may change."""
    explicit = (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT)
    for name, _, _ in declared(JobConfig):
        source = ctx.get_parameter_source("opts" if name == "options" else name)
        if source not in explicit or name in ("master", "checkpoint_dir"):
            continue
        if name in ("output", "overwrite", "in_memory_mb"):
            recorded = dataclasses.replace(recorded, **{name: getattr(given, name)})
            continue
        now, then = getattr(given, name), getattr(recorded, name)
        if name == "options":  # as the optimizer reads them: "3" on the command line is 3
            from distkeras_plus.plugins import registry

            spec = registry.get(recorded.plugin).spec
            now, then = spec.parse_options(now), spec.parse_options(then)
        if now != then:
            flag = "--opt" if name == "options" else f"--{name.replace('_', '-')}"
            raise SettingError(
                f"--resume goes on with the run recorded in {folder}, whose {flag} is {then!r}, "
                f"not {now!r}; leave {flag} out, or start a new run"
            )
    return recorded
