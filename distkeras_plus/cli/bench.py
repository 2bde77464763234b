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
    module = _benchmarks(suite, "ps")
    results: dict[str, Any] = module.run(size_list, client_list, quick=quick)
    _show(module, results, output_format)


@bench.command("train")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--dataset", "datasets", multiple=True, help="Only these data sets (digits, fashion-mnist).")
@SUITE
@OUTPUT_FORMAT
def bench_train(batch_size: int, datasets: tuple[str, ...], suite: Path | None, output_format: str) -> None:
    """Training: plain Keras vs each optimizer with 2 workers on local Spark."""
    module = _benchmarks(suite, "train")
    results: dict[str, Any] = module.run(batch_size, list(datasets) or None)
    _show(module, results, output_format)


@bench.command("steps")
@click.option("--window", default=12, show_default=True, type=click.IntRange(min=1))
@SUITE
@OUTPUT_FORMAT
def bench_steps(window: int, suite: Path | None, output_format: str) -> None:
    """A worker's window loop vs Keras' own model.fit(steps_per_execution=window)."""
    module = _benchmarks(suite, "steps")
    results: dict[str, Any] = module.run(window)
    _show(module, results, output_format)


@bench.command("run")
@click.option("--epochs", default=3, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@SUITE
@OUTPUT_FORMAT
def bench_run(epochs: int, batch_size: int, suite: Path | None, output_format: str) -> None:
    """A whole dk train process on Fashion-MNIST vs a plain Keras script: wall time and memory."""
    module = _benchmarks(suite, "run")
    results: dict[str, Any] = module.run(epochs, batch_size)
    _show(module, results, output_format)


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
    module = _benchmarks(suite, "codecs")
    results: dict[str, Any] = module.run(size_list, quick=quick)
    _show(module, results, output_format)


@bench.command("checks")
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(min=1))
@SUITE
@OUTPUT_FORMAT
def bench_checks(repeats: int, suite: Path | None, output_format: str) -> None:
    """The data check before training vs a one-epoch run on Fashion-MNIST-sized data."""
    module = _benchmarks(suite, "checks")
    results: dict[str, Any] = module.run(repeats)
    _show(module, results, output_format)


@bench.command("memory")
@click.option("--rows-per-worker", default=100_000, show_default=True, type=click.IntRange(min=1000))
@SUITE
@OUTPUT_FORMAT
def bench_memory(rows_per_worker: int, suite: Path | None, output_format: str) -> None:
    """A worker's peak memory with its partition held or spilled, at 1x and 4x the size."""
    module = _benchmarks(suite, "memory")
    results: dict[str, Any] = module.run(rows_per_worker)
    _show(module, results, output_format)


def _show(module: Any, results: dict[str, Any], output_format: str) -> None:
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
