"""`dk datasets`: the built-in data sets."""

from __future__ import annotations

import json
from pathlib import Path

import click

from distkeras_plus.cli.common import OUTPUT_FORMAT, DkGroup


@click.group(cls=DkGroup)
def datasets() -> None:
    """Built-in data sets."""


@datasets.command("list")
@OUTPUT_FORMAT
def datasets_list(output_format: str) -> None:
    """List the built-in data sets."""
    from distkeras_plus.data.datasets import DATASETS, FASHION_MNIST_DIRS, fashion_mnist_folder

    folder = fashion_mnist_folder()
    where = {
        "fashion-mnist": f"found in {folder}"
        if folder
        else f"not on this machine: set DK_DATA_DIR or install Debian's dataset-fashion-mnist "
        f"({FASHION_MNIST_DIRS[0]}); Keras downloads it where there is a network"
    }
    if output_format == "json":
        listed = [{"name": n, "summary": s, "local": where.get(n)} for n, (s, _) in DATASETS.items()]
        click.echo(json.dumps(listed))
        return
    for name, (summary, _) in DATASETS.items():
        click.echo(f"{name:<14} {summary}" + (f" ({where[name]})" if name in where else ""))


@datasets.command("export")
@click.argument("name")
@click.argument("path", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", default=0, show_default=True, type=int)
def datasets_export(name: str, path: Path, seed: int) -> None:
    """Write a data set as PATH/train.parquet and PATH/test.parquet (features, label)."""
    from distkeras_plus.data.datasets import load

    for p in load(name, seed=seed).to_parquet(path):
        click.echo(str(p))
