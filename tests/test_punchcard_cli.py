"""`dk punchcard add-user|remove-user|list-users`, `dk submit` and `dk jobs` against a real daemon."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from punchcard_daemon import Daemon

from distkeras_plus.cli import main


def dk(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


@pytest.fixture(scope="module")
def env(daemon: Daemon) -> dict[str, str]:
    result = dk("punchcard", "add-user", "dana", f"--state-dir={daemon.state}")
    assert result.exit_code == 0
    return {"DK_SERVER": daemon.url, "DK_TOKEN": result.stdout.strip()}


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"name": "cli", "data": str(tmp_path), "epochs": 5, "options": {"window": 3}}))
    return path


def test_users(tmp_path: Path) -> None:
    state = tmp_path / "state"
    added = dk("punchcard", "add-user", "erin", f"--state-dir={state}")
    assert added.exit_code == 0
    token = added.stdout.strip()
    assert token.startswith("dkp_") and len(token) > 40 and "shown this once" in added.stderr
    # Only the hash is kept.
    with sqlite3.connect(state / "punchcard.db") as db:
        dump = "\n".join(db.iterdump())
    assert token not in dump and token[4:] not in dump
    assert (state / "punchcard.db").stat().st_mode & 0o777 == 0o600
    again = dk("punchcard", "add-user", "erin", f"--state-dir={state}")
    assert again.exit_code == 2 and "exists" in again.output
    bad = dk("punchcard", "add-user", "../root", f"--state-dir={state}")
    assert bad.exit_code == 2 and "user names are" in bad.output
    listed = dk("punchcard", "list-users", f"--state-dir={state}", "--output-format=json")
    assert [u["user"] for u in json.loads(listed.stdout)] == ["erin"]
    assert dk("punchcard", "remove-user", "erin", f"--state-dir={state}").exit_code == 0
    gone = dk("punchcard", "remove-user", "erin", f"--state-dir={state}")
    assert gone.exit_code == 2 and gone.output.strip() == "Error: no user 'erin'"


def test_a_removed_user_is_locked_out_at_once(daemon: Daemon) -> None:
    result = dk("punchcard", "add-user", "frank", f"--state-dir={daemon.state}", "--output-format=json")
    token = json.loads(result.stdout)["token"]
    with daemon.client(token) as c:
        assert c.get("/jobs").status_code == 200
        dk("punchcard", "remove-user", "frank", f"--state-dir={daemon.state}")
        assert c.get("/jobs").status_code == 401


def test_submit_follow_status_result(
    env: dict[str, str], spec_file: Path, model_file: Path, tmp_path: Path
) -> None:
    submitted = dk("submit", str(spec_file), f"--model={model_file}", "--follow", env=env)
    assert submitted.exit_code == 0, submitted.output
    first, *log, last = submitted.stdout.splitlines()
    job_id = first.split()[1]
    assert first.startswith(f"job {job_id} queued") and f"dk jobs logs {job_id} --follow" in first
    assert "stub: training" in log and "stub: done" in log
    assert last == f"job {job_id} succeeded: test accuracy 0.7500 in 0.5 s"

    listed = dk("jobs", "list", env=env)
    assert any(line.startswith(job_id[:12]) and "succeeded" in line for line in listed.stdout.splitlines())
    status = dk("jobs", "status", job_id[:12], "--output-format=json", env=env)
    job = json.loads(status.stdout)
    assert job["id"] == job_id and job["spec"]["options"] == {"window": 3}
    logs = dk("jobs", "logs", job_id, env=env)
    assert "stub: done" in logs.stdout

    out = tmp_path / "out" / "trained.keras"
    result = dk("jobs", "result", job_id, f"--output={out}", f"--history={tmp_path / 'h.json'}", env=env)
    assert result.exit_code == 0 and out.read_bytes() == model_file.read_bytes()
    assert len(json.loads((tmp_path / "h.json").read_text())) == 5
    history = dk("jobs", "history", job_id, env=env)
    assert json.loads(history.stdout)[0] == {"worker": 0, "epoch": 0, "loss": 1.0}


def test_follow_a_failing_job_exits_1(env: dict[str, str], tmp_path: Path, model_file: Path) -> None:
    spec = tmp_path / "fail.json"
    spec.write_text(json.dumps({"data": str(tmp_path), "seed": 1}))
    result = dk("submit", str(spec), f"--model={model_file}", "--follow", env=env)
    assert result.exit_code == 1
    assert result.stdout.splitlines()[-1].endswith(
        "failed: training exited with status 3: Error: the stub was asked to fail"
    )


def test_cancel_waits_until_it_has_stopped(env: dict[str, str], tmp_path: Path, model_file: Path) -> None:
    spec = tmp_path / "forever.json"
    spec.write_text(json.dumps({"data": str(tmp_path), "seed": 2}))
    job = json.loads(dk("submit", str(spec), f"--model={model_file}", "--output-format=json", env=env).stdout)
    cancelled = dk("jobs", "cancel", job["id"], env=env)
    assert cancelled.exit_code == 0
    assert cancelled.stdout.strip().startswith(f"job {job['id']} cancelled: cancelled")
    again = dk("jobs", "cancel", job["id"], env=env)
    assert (
        again.exit_code == 2
        and again.output.strip() == "Error: the job has already been cancelled (HTTP 409)"
    )


@pytest.mark.parametrize(
    ("args", "env_changes", "message"),
    [
        (["jobs", "list"], {"DK_TOKEN": ""}, "no token: pass --token or set DK_TOKEN"),
        (["jobs", "list"], {"DK_TOKEN": "dkp_wrong"}, "the token is not valid"),
        (["jobs", "list"], {"DK_SERVER": "http://127.0.0.1:9"}, "cannot reach the punchcard daemon at"),
        (["jobs", "list"], {"DK_SERVER": "ftp://x"}, "--server must be an http:// or https:// URL"),
        (["jobs", "status", "0" * 32], {}, "no such job (HTTP 404)"),
        (["jobs", "status", "../../health"], {}, "(HTTP 404)"),
        (["jobs", "status", "ffff"], {}, "no job starts with ffff"),
        (["jobs", "result", "0" * 32], {}, "no such job (HTTP 404)"),
        (["submit", "{spec}", "--model={model}"], {}, "not a JSON job spec"),
        (["submit", "{model}", "--model={model}"], {}, "not a JSON job spec"),
    ],
)
def test_client_errors_are_one_line_with_status_2(
    env: dict[str, str],
    model_file: Path,
    tmp_path: Path,
    args: list[str],
    env_changes: dict[str, str],
    message: str,
) -> None:
    (tmp_path / "bad.json").write_text("{nope")
    args = [a.format(spec=tmp_path / "bad.json", model=model_file) for a in args]
    result = dk(*args, env={**env, **env_changes})
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.output


def test_server_and_token_options_win_over_the_environment(daemon: Daemon, env: dict[str, str]) -> None:
    result = dk(
        "jobs",
        "list",
        f"--server={daemon.url}",
        f"--token={env['DK_TOKEN']}",
        "--output-format=json",
        env={"DK_SERVER": "http://127.0.0.1:9", "DK_TOKEN": "dkp_wrong"},
    )
    assert result.exit_code == 0 and isinstance(json.loads(result.stdout), list)


def test_submit_needs_the_model(env: dict[str, str], spec_file: Path) -> None:
    result = dk("submit", str(spec_file), env=env)
    assert result.exit_code == 2 and "--model" in result.output
