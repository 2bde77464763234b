"""`dk train`, `dk predict` and `dk evaluate`: settings sources, errors, and real runs on local Spark."""

from __future__ import annotations

import json
import os
import pty
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from distkeras_plus.cli import main
from distkeras_plus.data.datasets import default_model

DK = str(Path(sys.executable).parent / "dk")


# Keras' progress bar: "Epoch 3/20", then "41/41 ━━━━ 0s 6ms/step - accuracy: 0.7 - loss: 1.1 ...".
PROGRESS = re.compile(r"^(Epoch \d+/\d+|\d+/\d+ [━ ]+ .*)$")
ESCAPES = re.compile(r"\x1b\[[0-9;]*m|\x08")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """digits as train.parquet and test.parquet, and as one CSV file with named pixel columns."""
    from distkeras_plus.data.datasets import load

    folder = tmp_path_factory.mktemp("digits")
    data = load("digits")
    data.to_parquet(folder / "parquet")
    header = ",".join([f"p{i}" for i in range(64)] + ["label"])
    rows = [
        ",".join([*(f"{v:.4f}" for v in x), str(y)]) for x, y in zip(data.x_train, data.y_train, strict=True)
    ]
    (folder / "digits.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    return folder


@pytest.fixture(scope="module")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "mlp.keras"
    default_model(64, 10).save(path)
    return path


def run(args: list[str], env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(main, args, env=env)


def test_a_saved_compiled_model_trains_with_its_own_compile(
    spark: Any, digits_dir: Path, tmp_path: Path
) -> None:
    import keras

    model = default_model(64, 10)
    model.compile(optimizer=keras.optimizers.SGD(0.07, momentum=0.5), loss="sparse_categorical_crossentropy")
    model.save(tmp_path / "sgd.keras")
    history = tmp_path / "history.json"
    args = ["train", "--data", str(digits_dir / "parquet"), "--model", str(tmp_path / "sgd.keras"),
            "--epochs", "2", "--output", str(tmp_path / "out.keras"),
            "--history-file", str(history)]  # fmt: skip
    result = run(args)
    assert result.exit_code == 0, result.output
    rows = json.loads(history.read_text())["workers"]
    assert {round(r["learning_rate"], 7) for r in rows} == {0.07}
    trained = keras.saving.load_model(tmp_path / "out.keras")  # saved compiled as it trained
    assert trained.optimizer.get_config()["momentum"] == pytest.approx(0.5)
    result = run([*args, "--learning-rate", "0.01", "--overwrite"])  # the command line wins
    assert result.exit_code == 0, result.output
    assert {round(r["learning_rate"], 7) for r in json.loads(history.read_text())["workers"]} == {0.01}


def one_line_error(result: Any) -> str:
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    return str(lines[0])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "/nonexistent/data.parquet"], "no data at /nonexistent/data.parquet"),
        (["--plugin", "adagio"], "unknown optimizer 'adagio'"),
        (["--opt", "windoww=3"], "windoww"),
        (["--opt", "window=many"], "window"),
        (["--opt", "window"], "not of the form key=value"),
        (["--model", "/nonexistent/m.keras"], "no model file at /nonexistent/m.keras"),
        (["--dataset", "nope"], "unknown data set 'nope'"),
    ],
)
def test_train_errors_are_one_line_with_status_2(args: list[str], message: str) -> None:
    assert message in one_line_error(run(["train", *args]))


def test_unreachable_master_is_one_line() -> None:
    master = f"spark://127.0.0.1:{closed_port()}"
    line = one_line_error(run(["train", "--master", master]))
    assert f"cannot reach the Spark master {master}" in line and "refused" in line


def test_data_errors_on_spark(spark: Any, digits_dir: Path, small_model: Path, tmp_path: Path) -> None:
    parquet = str(digits_dir / "parquet" / "train.parquet")
    line = one_line_error(run(["train", "--data", parquet, "--features", "pixels"]))
    assert "no features column 'pixels'; the data has columns: features, label" in line
    line = one_line_error(run(["train", "--data", parquet, "--label", "digit"]))
    assert "no label column 'digit'" in line
    wrong = tmp_path / "wrong.keras"
    default_model(32, 10).save(wrong)
    line = one_line_error(run(["train", "--data", parquet, "--model", str(wrong)]))
    assert "features have 64 values per row but the model's input (32,) takes 32" in line
    line = one_line_error(run(["evaluate", "--data", parquet, "--model", str(wrong)]))
    assert "features have 64 values per row" in line
    (tmp_path / "notes.txt").write_text("x")
    assert "neither Parquet nor CSV" in one_line_error(
        run(["predict", "--data", str(tmp_path / "notes.txt"), "--model", str(small_model), "--output", "o"])
    )


def test_debug_shows_the_traceback() -> None:
    result = run(["--debug", "train", "--plugin", "adagio"])
    assert result.exit_code != 0 and result.exception is not None
    assert "adagio" in str(result.exception)


def test_settings_from_pyproject_env_and_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An unknown plugin fails before Spark starts, naming the value that won.
    (tmp_path / "sub").mkdir()
    (tmp_path / "pyproject.toml").write_text('[tool.distkeras_plus]\nplugin = "from-pyproject"\nepochs = 3\n')
    monkeypatch.chdir(tmp_path / "sub")  # the nearest pyproject.toml above counts
    assert "'from-pyproject'" in one_line_error(run(["train"]))
    assert "'from-env'" in one_line_error(run(["train"], env={"DK_PLUGIN": "from-env"}))
    assert "'from-cli'" in one_line_error(
        run(["train", "--plugin", "from-cli"], env={"DK_PLUGIN": "from-env"})
    )
    config = tmp_path / "run.toml"
    config.write_text('plugin = "from-config"\n[opt]\nwindow = 4\n')
    assert "'from-config'" in one_line_error(run(["train", "--config", str(config)]))
    config.write_text('plugin = "adag"\nwindoe = 4\n')
    line = one_line_error(run(["train", "--config", str(config)]))
    assert f"unknown setting 'windoe' in {config}" in line and "batch-size" in line
    config.write_text("plugin = [\n")
    assert "is not valid TOML" in one_line_error(run(["train", "--config", str(config)]))
    config.write_text("epochs = 0\n")
    result = run(["train", "--config", str(config)])
    assert result.exit_code == 2 and "epochs" in result.output


def test_train_on_csv_then_evaluate_and_predict(spark: Any, digits_dir: Path, tmp_path: Path) -> None:
    model_path = tmp_path / "out" / "model.keras"
    history = tmp_path / "history.json"
    progress = tmp_path / "progress.jsonl"
    result = run(
        ["train", "--data", str(digits_dir / "digits.csv"), "--plugin", "dynsgd", "--epochs", "6",
         "--test-split", "0.25", "--output", str(model_path), "--output-format", "json",
         "--history-file", str(history), "--progress-file", str(progress), "--metrics", "accuracy",
         "--validation-split", "0.2", "--early-stopping", "2"]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["data"] == str(digits_dir / "digits.csv") and report["plugin"] == "dynsgd"
    assert report["model_path"] == str(model_path.resolve()) and model_path.is_file()
    assert 300 < report["test_samples"] < 420  # a quarter of the 1437 rows
    epochs = report["epochs"]  # early stopping may end the run before the 6th
    assert 2 <= epochs <= 6 and len(report["history"]["val_loss"]) == epochs
    trained = 0.8 * (1437 - report["test_samples"])  # validation data is held out apart from the test set
    # Workers go on until the stop reaches them: at least the epochs done, at most the 6 asked for.
    assert 0.9 * trained * epochs <= report["samples"] <= 1.1 * trained * 6
    assert report["test_accuracy"] > 0.8
    written = json.loads(history.read_text())
    assert written["epoch"] == list(range(epochs)) and written["history"] == report["history"]
    rows = written["workers"]
    assert {r["worker"] for r in rows} == {0, 1} and rows[-1]["samples"] > 0
    updates = [json.loads(line) for line in progress.read_text().splitlines()]
    assert updates and all({"seconds", "commits", "samples", "loss"} <= u.keys() for u in updates)

    # Evaluated on Spark: the same figures as the report's, for the same split.
    csv = str(digits_dir / "digits.csv")
    evaluated = run(["evaluate", "--model", str(model_path), "--data", csv, "--output-format", "json"])
    assert evaluated.exit_code == 0, evaluated.output
    scores = json.loads(evaluated.output)
    assert scores["samples"] == 1437 and scores["accuracy"] > 0.8
    assert [c["class"] for c in scores["classes"]] == list(range(10))
    assert sum(c["support"] for c in scores["classes"]) == 1437
    assert scores["macro_f1"] == pytest.approx(sum(c["f1"] for c in scores["classes"]) / 10)

    out = tmp_path / "predictions"
    predicted = run(["predict", "--model", str(model_path), "--data", csv, "--output", str(out),
                     "--output-format", "json"])  # fmt: skip
    assert predicted.exit_code == 0, predicted.output
    assert json.loads(predicted.output)["rows"] == 1437
    rows_out = spark.read.parquet(str(out)).toPandas()
    assert list(rows_out.columns) == ["features", "label", "prediction", "probability"]
    accuracy = float((rows_out["prediction"] == rows_out["label"]).mean())
    assert accuracy == pytest.approx(scores["accuracy"])
    assert all(abs(sum(p) - 1) < 1e-4 for p in rows_out["probability"])


def test_models_on_a_hadoop_uri(spark: Any, small_model: Path, digits_dir: Path, tmp_path: Path) -> None:
    from distkeras_plus.data.storage import load_model_file, save_model_file

    model = load_model_file(str(small_model))
    uri = (tmp_path / "remote" / "m.keras").as_uri()  # file://, through Hadoop's file system API
    assert save_model_file(model, uri, spark) == uri
    assert (tmp_path / "remote" / "m.keras").is_file()
    assert not list((tmp_path / "remote").glob(".*partial*"))
    loaded = load_model_file(uri, spark)
    assert all((a == b).all() for a, b in zip(model.get_weights(), loaded.get_weights(), strict=True))
    with pytest.raises(FileNotFoundError, match="no file at"):
        load_model_file((tmp_path / "missing.keras").as_uri(), spark)
    test = str(digits_dir / "parquet" / "test.parquet")
    result = run(["evaluate", "--model", uri, "--data", Path(test).as_uri(), "--output-format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["samples"] == 360


def test_dk_train_json_as_a_subprocess_with_progress_on_a_terminal(tmp_path: Path) -> None:
    """The installed script, the README's main job: JSON alone on stdout, progress on the terminal."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [DK, "train", "--plugin", "adag", "--output-format", "json", "--output", str(tmp_path / "m.keras")],
        stdout=subprocess.PIPE,
        stderr=follower,
        cwd=tmp_path,
        env={**os.environ, "DK_WORKERS": "2"},
    )
    os.close(follower)
    terminal = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        terminal += chunk
    assert proc.stdout is not None
    stdout = proc.stdout.read()
    assert proc.wait(timeout=600) == 0, terminal.decode(errors="replace")[-2000:]
    report = json.loads(stdout)  # stdout holds the JSON object and nothing else
    for key in ("plugin", "options", "workers", "epochs", "samples", "seconds", "test_accuracy", "test_loss",
                "commits", "bytes_sent", "bytes_received", "model_path"):  # fmt: skip
        assert key in report
    assert report["epochs"] == 20 and report["workers"] == 2 and report["options"] == {"window": 12}
    assert report["test_accuracy"] >= 0.95  # the target with the defaults
    assert report["commits"] > 0 and report["bytes_received"] > 0 and report["bytes_sent"] > 0
    text = ESCAPES.sub("", terminal.decode(errors="replace"))
    assert "Epoch 20/20" in text and "val_" not in text and b"\r" in terminal
    # Nothing but the progress bar on the terminal: no JVM, Spark or TensorFlow lines.
    shown = [t.strip() for t in text.replace("\n", "\r").split("\r")]
    foreign = [t for t in shown if t and not PROGRESS.match(t)]
    assert not foreign, foreign[:5]


@pytest.mark.slow
def test_dk_train_with_stderr_a_pipe_prints_nothing_there(tmp_path: Path) -> None:
    done = subprocess.run(
        [DK, "train", "--plugin", "adag", "--epochs", "1", "--output", str(tmp_path / "m.keras")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout.startswith("adag: test accuracy") and len(done.stdout.splitlines()) == 1
