"""The `dk` command line: one module per command group, errors reported in one place
(`common.DkGroup`)."""

from __future__ import annotations

import click

from distkeras_plus import __version__
from distkeras_plus.cli.bench import bench
from distkeras_plus.cli.common import DkGroup
from distkeras_plus.cli.datasets import datasets
from distkeras_plus.cli.history import history
from distkeras_plus.cli.models import evaluate_command, predict_command
from distkeras_plus.cli.plugins import plugins
from distkeras_plus.cli.ps import ps
from distkeras_plus.cli.train import train_command
from distkeras_plus.punchcard.cli import jobs, punchcard, submit


@click.group(
    cls=DkGroup, context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "DK"}
)
@click.version_option(__version__, prog_name="dk")
def main() -> None:
    """distkeras-plus: data-parallel Keras training on Spark."""


for command in (
    train_command,
    predict_command,
    evaluate_command,
    plugins,
    datasets,
    ps,
    bench,
    history,
    punchcard,
    submit,
    jobs,
):
    main.add_command(command)
