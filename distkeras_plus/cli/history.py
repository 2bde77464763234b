"""`dk history`: training histories written by `dk train --history-file`."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from distkeras_plus.cli.common import DkGroup
from distkeras_plus.errors import DataError, MissingFileError, StorageError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 100
LEARNING_RATE = "learning_rate"


@click.group(cls=DkGroup)
def history() -> None:
    """Training histories written by `dk train --history-file`."""


@history.command("plot")
@click.argument("history_file", metavar="HISTORY.json", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="PNG file to write (default: HISTORY.json's path with .png).",
)
@click.option("--width", type=click.IntRange(300, 10000), default=1200, show_default=True, help="Pixels.")
@click.option("--height", type=click.IntRange(300, 10000), default=800, show_default=True, help="Pixels.")
def history_plot(history_file: Path, output: Path | None, width: int, height: int) -> None:
    """Draw the learning curves in HISTORY.json as a PNG: one panel per metric by epoch, and each
    worker's loss over time."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    try:
        text = history_file.read_text()
    except FileNotFoundError:
        raise MissingFileError(f"history file {history_file} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise StorageError(f"cannot read {history_file}: {e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{history_file} is not JSON: {e}") from None
    figure = plot_history(data, width, height)
    output = output if output is not None else history_file.with_suffix(".png")
    try:
        FigureCanvasAgg(figure)
        with warnings.catch_warnings():
            # Too small for every panel: matplotlib says so on stderr, which is for dk's own lines.
            warnings.simplefilter("ignore", UserWarning)
            figure.savefig(output, format="png", dpi=DPI)
    except OSError as e:
        raise StorageError(f"cannot write {output}: {str(e).splitlines()[0]}") from None
    click.echo(str(output))


def _numbers(name: str, values: Any) -> list[float]:
    """`values` as floats, null as NaN (a gap in the line)."""
    if not isinstance(values, list) or not all(_is_number(v) or v is None for v in values):
        raise DataError(f"history {name!r} is not a list of numbers")
    return [math.nan if v is None else float(v) for v in values]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _parse(data: Any) -> tuple[list[int], dict[str, list[float]], list[dict[str, Any]]]:
    """(epochs, per-epoch metrics, worker rows) from either form `dk train` has written: the
    object {"epoch", "history", "workers"}, or the older list of worker rows."""
    if isinstance(data, list):
        epoch_numbers: Any = []
        metrics: Any = {}
        rows: Any = data
    elif isinstance(data, dict):
        metrics = data.get("history", {})
        epoch_numbers = data.get("epoch")
        rows = data.get("workers", [])
    else:
        raise DataError("a history is a JSON object with 'epoch', 'history' and 'workers', or a list of rows")
    if not isinstance(metrics, dict):
        raise DataError("'history' is not an object of metric names to lists")
    curves = {str(k): _numbers(str(k), v) for k, v in metrics.items()}
    longest = max((len(v) for v in curves.values()), default=0)
    if epoch_numbers is None:
        epoch_numbers = list(range(longest))
    if not isinstance(epoch_numbers, list) or not all(_is_number(e) for e in epoch_numbers):
        raise DataError("'epoch' is not a list of epoch numbers")
    for name, values in curves.items():
        if len(values) != len(epoch_numbers):
            raise DataError(f"history {name!r} has {len(values)} values for {len(epoch_numbers)} epochs")
    if not isinstance(rows, list) or not all(
        isinstance(r, dict) and isinstance(r.get("worker"), int | str | None) for r in rows
    ):
        raise DataError("'workers' is not a list of worker rows")
    if not (curves and epoch_numbers) and not rows:
        raise DataError("the history has no epochs and no worker rows")
    return [int(e) for e in epoch_numbers], curves, rows


def _worker_losses(rows: list[dict[str, Any]]) -> dict[Any, tuple[list[float], list[float]]]:
    """Each worker's (seconds since the first row, loss), in time order; rows without both skipped."""
    times = [r["time"] for r in rows if _is_number(r.get("time"))]
    start = min(times, default=0.0)
    points: dict[Any, list[tuple[float, float]]] = {}
    for row in rows:
        if _is_number(row.get("time")) and _is_number(row.get("loss")):
            points.setdefault(row.get("worker"), []).append((row["time"] - start, float(row["loss"])))
    losses = {}
    for worker in sorted(points, key=lambda w: (0, w, "") if _is_number(w) else (1, 0, str(w))):
        ordered = sorted(points[worker])
        losses[worker] = ([t for t, _ in ordered], [v for _, v in ordered])
    return losses


def _panels(curves: dict[str, list[float]]) -> list[str]:
    """Metric base names: loss first, the others sorted, the learning rate last."""
    names = {k.removeprefix("val_") for k in curves}
    rest = sorted(names - {"loss", LEARNING_RATE})
    return [n for n in ["loss"] if n in names] + rest + [n for n in [LEARNING_RATE] if n in names]


def plot_history(data: dict[str, Any] | list[Any], width: int, height: int) -> Figure:
    """The figure `dk history plot` saves: a panel per metric by epoch (validation dashed in the
    same panel), the learning rate in its own, then one of each worker's loss over time."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs, curves, rows = _parse(data)
    panels = _panels(curves) if epochs else []
    losses = _worker_losses(rows)
    if not panels and not losses:
        raise DataError("the history has no metric by epoch and no worker row with a loss")

    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    # The epoch panels share rows of up to 3; the worker panel takes a whole row below them.
    epoch_rows = math.ceil(len(panels) / 3)
    columns = math.ceil(len(panels) / epoch_rows) if panels else 1
    grid = figure.add_gridspec(epoch_rows + bool(losses), columns)
    x = [e + 1 for e in epochs]  # as Keras prints them: "Epoch 1/5"
    for i, name in enumerate(panels):
        axes: Axes = figure.add_subplot(grid[i // columns, i % columns])
        if name == LEARNING_RATE:
            values = curves[name]
            # No legend: the title says what the one line is.
            axes.plot(x, values, marker="o", color="tab:green", label="learning rate")
            known = [v for v in values if not math.isnan(v)]
            if known and min(known) > 0 and max(known) > 10 * min(known):
                axes.set_yscale("log")
            axes.set_title("learning rate")
        else:
            if name in curves:
                axes.plot(x, curves[name], marker="o", label="train")
            if f"val_{name}" in curves:
                axes.plot(x, curves[f"val_{name}"], marker="o", linestyle="--", label="validation")
            axes.set_title(name)
            axes.legend(fontsize="small")
        axes.set_xlabel("epoch")
        axes.set_ylabel(name.replace("_", " "))
        if len(x) <= 12:
            axes.set_xticks(x)  # MaxNLocator finds no whole number around a single epoch
        else:
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(True, alpha=0.3)
    if losses:
        axes = figure.add_subplot(grid[-1, :])
        # The default cycle repeats after 10 colours: give more workers one colour each.
        colours = colormaps["tab20" if len(losses) <= 20 else "viridis"].resampled(max(len(losses), 2))
        for i, (worker, (seconds, loss)) in enumerate(losses.items()):
            colour = colours(i) if len(losses) > 10 else None
            axes.plot(
                seconds, loss, marker=".", markersize=4, linewidth=1, color=colour, label=f"worker {worker}"
            )
        axes.set_title("loss per worker over time")
        axes.set_xlabel("seconds since start")
        axes.set_ylabel("loss")
        # Many workers: more legend columns rather than a legend taller than the panel.
        axes.legend(fontsize="small", ncols=math.ceil(len(losses) / 6), loc="upper right")
        axes.grid(True, alpha=0.3)
    workers = len({r.get("worker") for r in rows})
    summary = [_count(len(epochs), "epoch") if panels else "", _count(workers, "worker") if rows else ""]
    figure.suptitle("Training history: " + ", ".join(s for s in summary if s))
    return figure


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")
