"""Punchcard's API against a real daemon on loopback: tokens, ownership, specs, uploads, logs,
results and cancelling. Jobs run the stub trainer (`punchcard_stub.py`); the real training
is in test_punchcard_slow.py."""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from punchcard_daemon import FINAL, stub_daemon, submit, wait_for

from distkeras_plus.punchcard import procs


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One daemon for the module: users alice and bob, a data folder inside its data root."""
    root = tmp_path_factory.mktemp("punchcard")
    data = root / "data"
    data.mkdir()
    (data / "train.parquet").write_bytes(b"not read by the stub")
    daemon = stub_daemon(
        root,
        f"--data-root={data}",
        "--max-upload-mb=0.25",
        "--max-concurrent-jobs=2",
        "--kill-grace=2",
        "--max-failed-logins=1000",  # the token tests below fail hundreds of logins on purpose
        env={"DK_EPOCHS": "99", "DK_DATA_DIR": "/nowhere"},
    )
    world = {
        "daemon": daemon,
        "data": data,
        "alice": daemon.add_user("alice"),
        "bob": daemon.add_user("bob"),
    }
    yield world
    daemon.stop()


def spec(world: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {"plugin": "adag", "data": str(world["data"] / "train.parquet"), "epochs": 3, **changes}


@pytest.fixture(scope="module")
def alice_job(world: dict[str, Any], model_file: Path) -> dict[str, Any]:
    """A job of alice's that has succeeded."""
    with world["daemon"].client(world["alice"]) as c:
        r = submit(c, spec(world, name="first", options={"window": 5}), model_file)
        assert r.status_code == 201, r.text
        return wait_for(c, r.json()["id"])  # type: ignore[no-any-return]


# Tokens and ownership

ENDPOINTS = [
    ("GET", "/jobs"),
    ("POST", "/jobs"),
    ("GET", "/jobs/{id}"),
    ("GET", "/jobs/{id}/logs"),
    ("POST", "/jobs/{id}/cancel"),
    ("GET", "/jobs/{id}/result"),
    ("GET", "/jobs/{id}/history"),
]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer dkp_not-a-token", "Token dkp_x", "Basic YWxpY2U6eA==", "bearer", "Bearer {alice}x"],
)
def test_every_endpoint_needs_a_valid_token(
    world: dict[str, Any], alice_job: dict[str, Any], method: str, path: str, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization.format(alice=world["alice"])}
    with world["daemon"].client() as c:
        r = c.request(method, path.format(id=alice_job["id"]), headers=headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert set(r.json()) == {"error"} and "token" in r.json()["error"].lower()


@pytest.mark.parametrize(("method", "path"), [e for e in ENDPOINTS if "{id}" in e[1]])
def test_another_users_job_is_not_found(
    world: dict[str, Any], alice_job: dict[str, Any], method: str, path: str
) -> None:
    with world["daemon"].client(world["bob"]) as bob:
        theirs = bob.request(method, path.format(id=alice_job["id"]))
        missing = bob.request(method, path.format(id="0" * 32))
        assert not any(j["id"] == alice_job["id"] for j in bob.get("/jobs").json()["jobs"])
    # Exactly as if it did not exist: ids reveal nothing.
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json() == missing.json() == {"error": "no such job"}
    with world["daemon"].client(world["alice"]) as alice:
        assert alice.get(f"/jobs/{alice_job['id']}").json()["state"] == "succeeded"


def test_health_and_page_need_no_token_and_show_nothing(
    world: dict[str, Any], alice_job: dict[str, Any]
) -> None:
    with world["daemon"].client() as c:
        health = c.get("/health")
        page = c.get("/")
        script = c.get("/app.js")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert script.status_code == 200 and "sessionStorage" in script.text
    for r in (health, page, script):
        assert alice_job["id"] not in r.text and "alice" not in r.text
        assert r.headers["x-content-type-options"] == "nosniff"
    assert "script-src 'self'" in page.headers["content-security-policy"]


def test_no_api_docs_with_or_without_a_token(world: dict[str, Any]) -> None:
    with world["daemon"].client() as anyone, world["daemon"].client(world["alice"]) as alice:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert anyone.get(path).status_code == 401  # no route is shown to someone without a token
            r = alice.get(path)
            assert r.status_code == 404 and r.json() == {"error": "Not Found"}


# A job from submission to result


def test_a_job_runs_and_reports(world: dict[str, Any], alice_job: dict[str, Any], model_file: Path) -> None:
    job = alice_job
    assert job["state"] == "succeeded" and job["exit_code"] == 0 and job["reason"] is None
    assert job["name"] == "first" and job["owner"] == "alice" and job["attempts"] == 1
    assert job["created"] <= job["started"] <= job["finished"] and job["runtime_seconds"] > 0
    assert job["spec"]["options"] == {"window": 5} and job["spec"]["epochs"] == 3
    assert job["result"]["test_accuracy"] == 0.75 and job["result"]["options"] == {"window": "5"}
    assert "model_path" not in job["result"]  # a path on the daemon's machine
    assert job["progress"] == {"seconds": 0.2, "commits": 2, "samples": 64, "loss": 1 / 3}
    folder = world["daemon"].state / "jobs" / job["id"]
    argv = json.loads((folder / "argv.json").read_text())
    # Every value as one --key=value item; the operator's DK_* settings do not reach the run.
    assert f"--data={world['data'] / 'train.parquet'}" in argv and "--opt=window=5" in argv
    assert "--epochs=3" in argv and "--output-format=json" in argv and f"--model={folder}/model.keras" in argv
    assert json.loads((folder / "env.json").read_text()) == {"DK_DATA_DIR": "/nowhere"}
    assert folder.stat().st_mode & 0o777 == 0o700  # the job's files are the daemon's alone
    with world["daemon"].client(world["alice"]) as c:
        result = c.get(f"/jobs/{job['id']}/result")
        history = c.get(f"/jobs/{job['id']}/history")
    assert result.status_code == 200 and result.content == model_file.read_bytes()
    assert result.headers["content-disposition"] == f'attachment; filename="{job["id"]}.keras"'
    assert history.json() == [{"worker": 0, "epoch": e, "loss": 1 / (e + 1)} for e in range(3)]


def test_logs_from_an_offset(world: dict[str, Any], alice_job: dict[str, Any]) -> None:
    path = f"/jobs/{alice_job['id']}/logs"
    log = (world["daemon"].state / "jobs" / alice_job["id"] / "log.txt").read_bytes()
    with world["daemon"].client(world["alice"]) as c:
        whole = c.get(path).json()
        assert (
            whole["text"].encode() == log and whole["offset"] == whole["size"] == len(log) and whole["done"]
        )
        assert "stub: training" in whole["text"] and "stub: on stderr" in whole["text"]
        assert '"test_accuracy": 0.75' in whole["text"]  # stdout reaches the log too
        pieces, offset = [], 0
        while True:  # 16 bytes at a time, as a client that follows would
            chunk = c.get(path, params={"offset": offset, "limit": 16}).json()
            pieces.append(chunk["text"])
            if chunk["done"]:
                break
            offset = chunk["offset"]
        assert "".join(pieces).encode() == log
        assert c.get(path, params={"offset": len(log) + 100}).json()["text"] == ""
        assert c.get(path, params={"offset": -1}).status_code == 422


def test_logs_never_split_a_character(world: dict[str, Any], model_file: Path) -> None:
    with world["daemon"].client(world["alice"]) as c:
        job = wait_for(c, submit(c, spec(world), model_file).json()["id"])
        log = world["daemon"].state / "jobs" / job["id"] / "log.txt"
        with log.open("ab") as f:
            f.write("é€😀\n".encode() * 10)
        text, offset = "", 0
        while True:
            chunk = c.get(f"/jobs/{job['id']}/logs", params={"offset": offset, "limit": 17}).json()
            text += chunk["text"]
            if chunk["done"]:
                break
            offset = chunk["offset"]
    assert text == log.read_text() and "\ufffd" not in text


def test_a_failed_job_says_why(world: dict[str, Any], model_file: Path) -> None:
    with world["daemon"].client(world["alice"]) as c:
        job = wait_for(c, submit(c, spec(world, seed=1), model_file).json()["id"])
        assert job["state"] == "failed" and job["exit_code"] == 3
        assert job["reason"] == "training exited with status 3: Error: the stub was asked to fail"
        for tail in ("/result", "/history"):
            r = c.get(f"/jobs/{job['id']}{tail}")
            assert r.status_code == 409 and "failed" in r.json()["error"]


def test_results_wait_for_the_job(world: dict[str, Any], model_file: Path) -> None:
    with world["daemon"].client(world["alice"]) as c:
        job = submit(c, spec(world, epochs=100), model_file).json()
        r = c.get(f"/jobs/{job['id']}/result")
        assert r.status_code == 409 and r.json()["error"] in (
            "the job is queued: it has no trained model",
            "the job is running: it has no trained model",
        )
        c.post(f"/jobs/{job['id']}/cancel")


# Cancelling


def test_cancel_a_queued_job(world: dict[str, Any], model_file: Path) -> None:
    with world["daemon"].client(world["alice"]) as c:
        blockers = [submit(c, spec(world, seed=2), model_file).json()["id"] for _ in range(2)]
        queued = submit(c, spec(world), model_file).json()
        assert queued["state"] == "queued" and queued["queue_position"] >= 1
        r = c.post(f"/jobs/{queued['id']}/cancel")
        assert r.status_code == 200 and r.json()["state"] == "cancelled"
        assert r.json()["reason"] == "cancelled by alice while queued" and r.json()["started"] is None
        again = c.post(f"/jobs/{queued['id']}/cancel")
        assert again.status_code == 409 and again.json() == {"error": "the job has already been cancelled"}
        for job_id in blockers:
            c.post(f"/jobs/{job_id}/cancel")
        for job_id in blockers:
            assert wait_for(c, job_id)["state"] == "cancelled"


def test_cancel_stops_every_process_of_a_running_job(world: dict[str, Any], model_file: Path) -> None:
    with world["daemon"].client(world["alice"]) as c:
        job_id = submit(c, spec(world, seed=2), model_file).json()["id"]
        wait_for(c, job_id, {"running"})
        pids = world["daemon"].stub_children(job_id)
        session = procs.session_members(pids[0])
        assert {p.pid for p in session} >= set(pids)  # the child and its grandchildren, one session
        assert len({os.getpgid(p) for p in pids}) == 2  # one grandchild has left the process group
        r = c.post(f"/jobs/{job_id}/cancel")
        assert r.status_code == 202 and r.json()["cancel_requested"]
        job = wait_for(c, job_id, timeout=30)
    assert job["state"] == "cancelled" and job["reason"] == "cancelled while running"
    assert procs.session_members(pids[0]) == []
    for pid in pids:
        state = procs.stat(pid)
        assert state is None or state.state == "Z", f"process {pid} survived the cancel"


# Bad specs, bad uploads, path tricks


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("{", "the spec is not valid JSON"),
        ("[]", "Input should be an object"),
        ('{"plugin": "adag"}', "data: Field required"),
        ('{"data": "/x", "rm": "-rf"}', "rm: unknown field"),
        ('{"data": "{data}", "epochs": "5"}', "epochs: Input should be a valid integer"),
        ('{"data": "{data}", "epochs": 0}', "epochs must be at least 1, got 0"),
        ('{"data": "{data}", "workers": 1.5}', "workers: Input should be a valid integer"),
        ('{"data": "{data}", "plugin": "nope"}', "unknown optimizer 'nope'"),
        ('{"data": "{data}", "plugin": "--help"}', "plugin: String should match pattern"),
        ('{"data": "{data}", "options": {"nope": 1}}', "adag has no option nope"),
        ('{"data": "{data}", "options": {"window": "x"}}', "option window takes a int"),
        ('{"data": "{data}", "options": {"a=b": 1}}', "options.a=b.[key]: String should match pattern"),
        ('{"data": "{data}", "codec": "zip"}', "codec:"),
        ('{"data": "{data}", "plugin": "aeasgd", "options": {"rho": 1e300}}', "rules compute in float32"),
        ('{"data": "{data}", "features": "f; rm -rf /"}', "features: String should match pattern"),
        ('{"data": "{data}", "worker_optimizer": "--x"}', "worker_optimizer: String should match pattern"),
        ('{"data": "relative/train.parquet"}', "data: a local path must be absolute"),
        ('{"data": "--help"}', "data: not a path or URI"),
        ('{"data": "{data}/missing.parquet"}', "does not exist"),
        ('{"data": "/etc/passwd"}', "data: the path is outside the folders this daemon serves data from"),
        ('{"data": "{data}/../../../etc/passwd"}', "outside the folders"),
        ('{"data": "file:///etc/passwd"}', "outside the folders"),
        ('{"data": "ftp://host/x"}', "scheme 'ftp' is not served"),
        ('{"data": "{data}", "test_data": "/etc"}', "test_data: the path is outside"),
        ('{"data": "{data}", "validation_data": "/etc"}', "validation_data: the path is outside"),
    ],
)
def test_malformed_specs_are_refused_at_once(
    world: dict[str, Any], model_file: Path, raw: str, message: str
) -> None:
    before = set(os.listdir(world["daemon"].state / "jobs"))
    with world["daemon"].client(world["alice"]) as c, model_file.open("rb") as f:
        r = c.post(
            "/jobs", data={"spec": raw.replace("{data}", str(world["data"]))}, files={"model": ("m.keras", f)}
        )
    assert r.status_code == 422, r.text
    assert set(r.json()) == {"error"} and message in r.json()["error"] and "\n" not in r.json()["error"]
    assert set(os.listdir(world["daemon"].state / "jobs")) == before  # nothing left behind


def test_missing_parts_are_422(world: dict[str, Any], model_file: Path) -> None:
    with world["daemon"].client(world["alice"]) as c, model_file.open("rb") as f:
        no_model = c.post("/jobs", data={"spec": json.dumps(spec(world))})
        no_spec = c.post("/jobs", files={"model": ("m.keras", f)})
        not_multipart = c.post("/jobs", json=spec(world))
    assert no_model.status_code == 422 and no_model.json() == {"error": "model: Field required"}
    assert no_spec.status_code == 422 and no_spec.json() == {"error": "spec: Field required"}
    assert not_multipart.status_code == 422


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def test_uploads_that_are_not_safe_models_are_refused(world: dict[str, Any], tmp_path: Path) -> None:
    import keras

    lambda_model = keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda x: x * 2)])
    lambda_model.save(tmp_path / "lambda.keras")
    cases = {
        "text": (tmp_path / "t.keras", "not a .keras file"),
        "no-config": (_zip(tmp_path / "n.keras", {"model.weights.h5": b"x"}), "no config.json"),
        "bad-config": (_zip(tmp_path / "b.keras", {"config.json": b"{nope"}), "damaged"),
        "bomb": (
            _zip(tmp_path / "z.keras", {"config.json": b"{}", "w.h5": bytes(8 * 2**20)}),
            "unpacks to more",
        ),
        "not-a-model": (_zip(tmp_path / "e.keras", {"config.json": b'{"class_name": "Nope"}'}), "safe mode"),
        "lambda": (tmp_path / "lambda.keras", "safe mode"),
    }
    (tmp_path / "t.keras").write_text("print('hello')")
    with world["daemon"].client(world["alice"]) as c:
        for name, (path, message) in cases.items():
            r = submit(c, spec(world), path)
            assert r.status_code == 422 and message in r.json()["error"], (name, r.text)


def test_oversized_uploads_are_refused(world: dict[str, Any], tmp_path: Path) -> None:
    big, bigger = tmp_path / "big.keras", tmp_path / "bigger.keras"
    big.write_bytes(os.urandom(2**20))  # over the model limit, under the request limit (+1 MiB)
    bigger.write_bytes(os.urandom(3 * 2**20))
    before = set(os.listdir(world["daemon"].state / "jobs"))
    with world["daemon"].client(world["alice"]) as c:
        declared = submit(c, spec(world), big)
        declared_bigger = submit(c, spec(world), bigger)

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while streaming
            yield b'--b\r\nContent-Disposition: form-data; name="model"; filename="m.keras"\r\n\r\n'
            for _ in range(3):
                yield os.urandom(2**20)

        streamed = c.post(
            "/jobs", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=b"}
        )
        assert c.get("/health").status_code == 200
    for r in (declared, declared_bigger, streamed):
        assert r.status_code == 413 and r.json() == {
            "error": "the upload is larger than this daemon's limit of 0.25 MiB"
        }
    assert set(os.listdir(world["daemon"].state / "jobs")) == before


def test_upload_names_are_never_paths(world: dict[str, Any], model_file: Path, tmp_path: Path) -> None:
    state = world["daemon"].state
    names = ["../../../evil.keras", "/tmp/evil.keras", "..", "a/../../b.keras", "x\x00y.keras", "spec.json"]
    with world["daemon"].client(world["alice"]) as c:
        for name in names:
            r = submit(c, spec(world, name=name), model_file, filename=name)
            assert r.status_code == 201, (name, r.text)
            job = wait_for(c, r.json()["id"])
            assert job["state"] == "succeeded" and job["name"] == name
            folder = state / "jobs" / job["id"]
            assert (folder / "model.keras").read_bytes() == model_file.read_bytes()
            assert json.loads((folder / "spec.json").read_text())["name"] == name
    assert not (state.parent / "evil.keras").exists() and not Path("/tmp/evil.keras").exists()
    assert sorted(p.name for p in state.iterdir() if not p.name.startswith("punchcard.db")) == [
        "daemon.lock",
        "jobs",
        "modelcheck.log",
    ]


@pytest.mark.parametrize(
    "path",
    [
        "/jobs/..%2F..%2Fpunchcard.db",
        "/jobs/%2E%2E/result",
        "/jobs/..%2Fhealth",
        "/jobs/ABCDEF",
        "/jobs/" + "a" * 33,
    ],
)
def test_job_ids_are_not_paths(world: dict[str, Any], alice_job: dict[str, Any], path: str) -> None:
    with world["daemon"].client(world["alice"]) as c:
        r = c.get(path)
    assert r.status_code == 404 and "error" in r.json()


def test_queue_limit_per_user(tmp_path: Path, model_file: Path) -> None:
    (tmp_path / "d").mkdir()
    daemon = stub_daemon(tmp_path, "--max-queued-per-user=2")
    try:
        token = daemon.add_user("carol")
        with daemon.client(token) as c:
            jobs = [submit(c, {"data": str(tmp_path / "d"), "seed": 2}, model_file) for _ in range(4)]
            # One runs, two wait; the fourth is one too many.
            assert [r.status_code for r in jobs] == [201, 201, 201, 429]
            assert jobs[3].json() == {"error": "you have 2 jobs queued; wait or cancel some"}
            for r in jobs[:3]:
                c.post(f"/jobs/{r.json()['id']}/cancel")
            for r in jobs[:3]:
                assert wait_for(c, r.json()["id"])["state"] == "cancelled"
    finally:
        daemon.stop()


def test_list_filters_by_state(world: dict[str, Any], alice_job: dict[str, Any]) -> None:
    with world["daemon"].client(world["alice"]) as c:
        listed = c.get("/jobs", params={"state": "succeeded"}).json()
        assert listed["user"] == "alice" and alice_job["id"] in [j["id"] for j in listed["jobs"]]
        assert all(j["state"] == "succeeded" and j["owner"] == "alice" for j in listed["jobs"])
        assert c.get("/jobs", params={"state": "nope"}).status_code == 422
    assert FINAL
