"""`dk bench`: the benchmarks of a source checkout, each against its baseline in the same run."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

import click

from distkeras_plus.cli.common import OUTPUT_FORMAT, DkGroup, UserError

SUITE = click.option(
    "--suite",
    type=click.Path(file_okay=False, path_type=Path),
    help="The benchmarks/ folder of a source checkout (default: found from here).",
)


@click.group(cls=DkGroup)
def bench() -> None:
    """Benchmarks, each measured against its baseline in the same run."""


@bench.command("ps")
@click.option(
    "--sizes",
    default="1000000,10000000",
    show_default=True,
    help="Comma-separated parameter counts.",
)
@click.option(
    "--clients", default="1,8", show_default=True, help="Comma-separated numbers of concurrent clients."
)
@click.option("--quick", is_flag=True, help="Fewer repetitions: a smoke run, not figures to record.")
@SUITE
@OUTPUT_FORMAT
def bench_ps(sizes: str, clients: str, quick: bool, suite: Path | None, output_format: str) -> None:
    """Parameter server: apply, round trips and the original-style baseline."""
    try:
        size_list = [int(float(s)) for s in sizes.split(",") if s.strip()]
        client_list = [int(c) for c in clients.split(",") if c.strip()]
    except ValueError as e:
        raise UserError(f"--sizes and --clients take comma-separated numbers: {e}") from e
    _bench(suite, "ps", output_format, size_list, client_list, quick=quick)


@bench.command("train")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--dataset", "datasets", multiple=True, help="Only these data sets (digits, fashion-mnist).")
@SUITE
@OUTPUT_FORMAT
def bench_train(batch_size: int, datasets: tuple[str, ...], suite: Path | None, output_format: str) -> None:
    """Training: plain Keras vs each optimizer with 2 workers on local Spark."""
    _bench(suite, "train", output_format, batch_size, list(datasets) or None)


@bench.command("steps")
@click.option("--window", default=12, show_default=True, type=click.IntRange(min=1))
@SUITE
@OUTPUT_FORMAT
def bench_steps(window: int, suite: Path | None, output_format: str) -> None:
    """A worker's window loop vs Keras' own model.fit(steps_per_execution=window)."""
    _bench(suite, "steps", output_format, window)


@bench.command("run")
@click.option("--epochs", default=3, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@SUITE
@OUTPUT_FORMAT
def bench_run(epochs: int, batch_size: int, suite: Path | None, output_format: str) -> None:
    """A whole dk train process on Fashion-MNIST vs a plain Keras script: wall time and memory."""
    _bench(suite, "run", output_format, epochs, batch_size)


@bench.command("codecs")
@click.option(
    "--sizes", default="1000000,10000000", show_default=True, help="Comma-separated parameter counts."
)
@click.option("--quick", is_flag=True, help="Fewer repetitions, digits only: a smoke run.")
@SUITE
@OUTPUT_FORMAT
def bench_codecs(sizes: str, quick: bool, suite: Path | None, output_format: str) -> None:
    """Codecs: ratio and speed, and training with each codec vs none."""
    try:
        size_list = [int(float(s)) for s in sizes.split(",") if s.strip()]
    except ValueError as e:
        raise UserError(f"--sizes takes comma-separated numbers: {e}") from e
    _bench(suite, "codecs", output_format, size_list, quick=quick)


@bench.command("checks")
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(min=1))
@SUITE
@OUTPUT_FORMAT
def bench_checks(repeats: int, suite: Path | None, output_format: str) -> None:
    """The data check before training vs a one-epoch run on Fashion-MNIST-sized data."""
    _bench(suite, "checks", output_format, repeats)


@bench.command("memory")
@click.option("--rows-per-worker", default=100_000, show_default=True, type=click.IntRange(min=1000))
@SUITE
@OUTPUT_FORMAT
def bench_memory(rows_per_worker: int, suite: Path | None, output_format: str) -> None:
    """A worker's peak memory with its partition held or spilled, at 1x and 4x the size."""
    _bench(suite, "memory", output_format, rows_per_worker)


def _bench(suite: Path | None, name: str, output_format: str, *args: Any, **kwargs: Any) -> None:
    """Runs `benchmarks.<name>` and prints its results, as JSON or as its own text."""
    module = _benchmarks(suite, name)
    results: dict[str, Any] = module.run(*args, **kwargs)
    click.echo(json.dumps(results, indent=2) if output_format == "json" else module.render(results))


def _benchmarks(suite: Path | None, name: str) -> Any:
    """Imports `benchmarks.<name>` from a source checkout: benchmarks ship with the source, not the wheel."""
    candidates = (
        [suite] if suite else [Path.cwd() / "benchmarks", Path(__file__).resolve().parents[2] / "benchmarks"]
    )
    for folder in candidates:
        if folder is not None and (folder / "__init__.py").is_file():
            root = str(folder.resolve().parent)
            if root not in sys.path:
                sys.path.append(root)  # last, so the installed distkeras_plus wins over the checkout
            return importlib.import_module(f"benchmarks.{name}")
    raise UserError(
        "benchmarks live in the source checkout: run dk bench from it, or pass --suite PATH/benchmarks"
    )
