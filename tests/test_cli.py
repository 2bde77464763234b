"""`dk ps serve` and friends, through Click's runner and as the installed `dk` script."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from distkeras_plus import AuthenticationError, Client, Layout, ServerClosedError
from distkeras_plus.cli import main
from distkeras_plus.ps.serve import read_secret

DK = str(Path(sys.executable).parent / "dk")


def serve(*args: str) -> tuple[subprocess.Popen[str], dict[str, object]]:
    proc = subprocess.Popen(
        [DK, "ps", "serve", "--output-format", "json", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, proc.stderr.read() if proc.stderr else ""
    info = json.loads(line)
    assert info["event"] == "listening"
    return proc, info


def stop(proc: subprocess.Popen[str]) -> dict[str, object]:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    stopped = json.loads(out.strip().splitlines()[-1])
    assert stopped["event"] == "stopped"
    return stopped  # type: ignore[no-any-return]


def test_serve_drops_a_silent_worker(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    proc, info = serve("--params", "10", "--secret-file", str(secret_file), "--idle-timeout", "1")
    try:
        with Client(f"127.0.0.1:{info['port']}", read_secret(secret_file), Layout.flat(10), 0) as c:
            time.sleep(2.5)  # silent for longer than the idle timeout
            with pytest.raises(ServerClosedError):
                c.pull(np.zeros(10, np.float32))
    finally:
        stats = stop(proc)
    assert stats["timeouts"] == 1


def test_serve_params_until_sigterm(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    proc, info = serve("--params", "1000", "--secret-file", str(secret_file))
    try:
        assert info["num_params"] == 1000 and info["host"] == "127.0.0.1"
        assert secret_file.stat().st_mode & 0o777 == 0o600
        secret = read_secret(secret_file)
        with Client(f"127.0.0.1:{info['port']}", secret, Layout.flat(1000), 0) as c:
            c.commit(np.ones(1000, np.float32))
            out = np.zeros(1000, np.float32)
            assert c.pull(out) == 1 and np.all(out == 1.0)
        with pytest.raises(AuthenticationError):
            Client(f"127.0.0.1:{info['port']}", b"z" * 32, Layout.flat(1000), 1)
    finally:
        stats = stop(proc)
    assert stats["commits"] == 1 and stats["auth_failures"] == 1


def test_serve_reuses_an_existing_secret_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("ab" * 32 + "\n")
    proc, info = serve("--params", "10", "--secret-file", str(secret_file), "--rule", "dynsgd")
    try:
        with Client(f"127.0.0.1:{info['port']}", bytes.fromhex("ab" * 32), Layout.flat(10), 0) as c:
            assert c.commit(np.ones(10, np.float32)) == (1, 0)
    finally:
        stop(proc)


def test_serve_a_keras_model(tmp_path: Path) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4), keras.layers.Dense(2)])
    path = tmp_path / "m.keras"
    model.save(path)
    proc, info = serve("--model", str(path), "--secret-file", str(tmp_path / "s"))
    try:
        assert info["num_params"] == model.count_params() and info["tensors"] == 4
        layout = Layout([list(w.shape) for w in model.get_weights()])
        with Client(f"127.0.0.1:{info['port']}", read_secret(tmp_path / "s"), layout, 0) as c:
            out = np.zeros(layout.num_params, np.float32)
            c.pull(out)
            np.testing.assert_array_equal(out, np.concatenate([w.ravel() for w in model.get_weights()]))
    finally:
        stop(proc)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "exactly one of --params"),
        (["--params", "5", "--model", "m.keras"], "exactly one of --params"),
        (["--model", "missing.keras"], "does not exist"),
        (["--params", "5", "--rule", "elastic"], "alpha"),
        (["--params", "5", "--rule", "nope"], "valid rules"),
        (["--params", "5", "--rule-param", "scale"], "key=value"),
        (["--params", "5", "--host", "256.0.0.1"], "cannot listen"),
    ],
)
def test_serve_errors_are_one_line_with_status_2(args: list[str], message: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["ps", "serve", *args, "--secret-file", str(tmp_path / "s")])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output


def test_bad_secret_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "secret"
    bad.write_text("not hex")
    result = CliRunner().invoke(main, ["ps", "serve", "--params", "5", "--secret-file", str(bad)])
    assert result.exit_code == 2 and "hex secret" in result.output


def test_version_and_help() -> None:
    result = subprocess.run([DK, "--version"], capture_output=True, text=True, check=True)
    assert result.stdout.startswith("dk, version")
    assert "serve" in subprocess.run([DK, "ps", "-h"], capture_output=True, text=True, check=True).stdout
