"""`dk history plot`: learning curves from a `dk train --history-file` JSON, without Spark."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from matplotlib.image import imread

from distkeras_plus.cli import main
from distkeras_plus.cli.history import plot_history

EPOCHS, WORKERS, STEPS = 5, 3, 4  # rows per worker and epoch


def history() -> dict[str, Any]:
    """What `dk train --history-file` writes for 3 workers and 5 epochs with validation data."""
    rng = random.Random(0)
    rows, start = [], 1796168025.3
    for epoch in range(EPOCHS):
        for step in range(STEPS):
            for worker in range(WORKERS):
                loss = 1.2 * 0.7 ** (epoch + step / STEPS) + rng.uniform(0, 0.05)
                row = {
                    "time": start + 10 * epoch + 2.5 * step + 0.3 * worker,
                    "worker": worker,
                    "epoch": epoch,
                    "steps": 12 * (step + 1),
                    "samples": 384 * (step + 1),
                    "loss": loss,
                    "accuracy": 1 - loss / 2,
                    "clock": (epoch * STEPS + step) * WORKERS + worker,
                    "learning_rate": 0.01 * 0.5**epoch,
                    "compute_seconds": 2.0,
                    "comm_seconds": 0.1,
                }
                if step % 2:
                    row["staleness"] = rng.randint(0, 2)  # a commit row
                rows.append(row)
    rows.append({**rows[-1], "loss": None, "time": start + 60})  # a row without a loss is skipped
    return {
        "epoch": list(range(EPOCHS)),
        "history": {
            "loss": [0.9 * 0.7**e for e in range(EPOCHS)],
            "accuracy": [0.6 + 0.07 * e for e in range(EPOCHS)],
            "val_loss": [1.0 * 0.75**e for e in range(EPOCHS)],
            "val_accuracy": [0.55 + 0.07 * e for e in range(EPOCHS)],
            "learning_rate": [0.01 * 0.5**e for e in range(EPOCHS)],
        },
        "workers": rows,
    }


def summary(data: dict[str, Any] | list[Any]) -> list[tuple[str, str, list[str], str]]:
    """Each panel's (title, x label, line labels, y scale)."""
    figure = plot_history(data, 1200, 800)
    return [
        (a.get_title(), a.get_xlabel(), [str(line.get_label()) for line in a.get_lines()], a.get_yscale())
        for a in figure.axes
    ]


def test_plot_writes_a_png_of_the_asked_size(tmp_path: Path) -> None:
    source = tmp_path / "run.json"
    source.write_text(json.dumps(history()))
    out = tmp_path / "curves.png"
    result = CliRunner().invoke(main, ["history", "plot", str(source), "-o", str(out), "--width", "900"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [str(out)]
    assert imread(out).shape == (800, 900, 4)


def test_the_output_defaults_to_the_history_files_stem(tmp_path: Path) -> None:
    source = tmp_path / "run.json"
    source.write_text(json.dumps(history()))
    result = CliRunner().invoke(main, ["history", "plot", str(source), "--height", "600"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(tmp_path / "run.png")
    assert imread(tmp_path / "run.png").shape == (600, 1200, 4)


def test_panels_per_metric_then_per_worker() -> None:
    workers = [f"worker {w}" for w in range(WORKERS)]
    assert summary(history()) == [
        ("loss", "epoch", ["train", "validation"], "linear"),
        ("accuracy", "epoch", ["train", "validation"], "linear"),
        ("learning rate", "epoch", ["learning rate"], "log"),  # 16x from first to last
        ("loss per worker over time", "seconds since start", workers, "linear"),
    ]
    figure = plot_history(history(), 1200, 800)
    loss, *_, per_worker = figure.axes
    assert np.asarray(loss.get_lines()[0].get_xdata()).tolist() == [1, 2, 3, 4, 5]  # as Keras counts
    seconds = np.asarray(per_worker.get_lines()[0].get_xdata())
    assert seconds[0] == 0 and len(seconds) == EPOCHS * STEPS
    assert figure.get_suptitle() == "Training history: 5 epochs, 3 workers"


def test_without_validation_or_a_varying_learning_rate() -> None:
    data = history()
    data["history"] = {"loss": [1.0, 0.5], "mae": [2.0, 1.0], "learning_rate": [0.001, 0.001]}
    data["epoch"] = [0, 1]
    titles = [(t, lines, scale) for t, _, lines, scale in summary(data)]
    assert titles[:3] == [
        ("loss", ["train"], "linear"),
        ("mae", ["train"], "linear"),
        ("learning rate", ["learning rate"], "linear"),
    ]


def test_the_older_list_of_rows_draws_the_worker_panel_only() -> None:
    rows = history()["workers"]
    assert [(t, x) for t, x, _, _ in summary(rows)] == [("loss per worker over time", "seconds since start")]
    assert summary({"epoch": [], "history": {}, "workers": rows}) == summary(rows)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        ("{not json", "is not JSON"),
        ("42", "a history is a JSON object"),
        ('{"epoch": [], "history": {}, "workers": []}', "no epochs and no worker rows"),
        ("[]", "no epochs and no worker rows"),
        ('{"history": {"loss": "low"}}', "'loss' is not a list of numbers"),
        ('{"epoch": [0, 1], "history": {"loss": [1.0]}}', "1 values for 2 epochs"),
        ('{"workers": [1, 2]}', "not a list of worker rows"),
        ('[{"worker": [0], "time": 1.0, "loss": 1.0}]', "not a list of worker rows"),
        ('[{"worker": 0, "time": 1.0}]', "no worker row with a loss"),
    ],
)
def test_bad_history_files_are_one_line_with_status_2(
    tmp_path: Path, content: str | None, message: str
) -> None:
    source = tmp_path / "h.json"
    if content is not None:
        source.write_text(content)
    result = CliRunner().invoke(main, ["history", "plot", str(source)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output
    assert not (tmp_path / "h.png").exists()


def test_dk_imports_no_matplotlib(tmp_path: Path) -> None:
    code = "import sys, distkeras_plus.cli; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)  # the installed copy
