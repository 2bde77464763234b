"""Punchcard's limits against a real daemon on loopback: the token before the body, failed
logins, connections per client, the header timeout, the queue limit under concurrency,
non-finite numbers, deep model configs, idempotent submissions, --max-job-seconds and
--keep-days. Clients on other loopback addresses (127.0.0.2, ...) stand for other machines."""

from __future__ import annotations

import json
import math
import select
import socket
import sqlite3
import threading
import time
import uuid
import zipfile
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from punchcard_daemon import Daemon, stub_daemon, submit, wait_for

from distkeras_plus.cli import main
from distkeras_plus.errors import OptionError
from distkeras_plus.plugins.spec import Option
from distkeras_plus.punchcard import procs, store

MAX_QUEUED, MAX_CONNECTIONS, MAX_FAILED = 3, 20, 5


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory, model_file: Path) -> Iterator[Daemon]:
    daemon = stub_daemon(
        tmp_path_factory.mktemp("limits"),
        f"--max-queued-per-user={MAX_QUEUED}",
        f"--max-connections-per-client={MAX_CONNECTIONS}",
        f"--max-failed-logins={MAX_FAILED}",
        "--max-upload-mb=8",
        "--kill-grace=1",
    )
    warm(daemon, model_file)
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def short(tmp_path_factory: pytest.TempPathFactory, model_file: Path) -> Iterator[Daemon]:
    """A daemon with short time limits."""
    daemon = stub_daemon(
        tmp_path_factory.mktemp("short"), "--header-timeout=1", "--max-job-seconds=1", "--kill-grace=1"
    )
    warm(daemon, model_file)
    yield daemon
    daemon.stop()


def warm(daemon: Daemon, model: Path) -> None:
    """One job through the daemon, so that the tests do not wait for its model checker to start
    TensorFlow (which may take a minute on a busy machine)."""
    with httpx.Client(
        base_url=daemon.url, headers={"Authorization": f"Bearer {daemon.add_user('warm')}"}, timeout=300
    ) as c:
        r = submit(c, {"data": str(daemon.state), "epochs": 1}, model)
        assert r.status_code == 201, r.text
        wait_for(c, r.json()["id"], timeout=60)


def address(daemon: Daemon) -> tuple[str, int]:
    host, port = daemon.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def connect(daemon: Daemon, source: str = "127.0.0.1") -> socket.socket:
    s = socket.socket()
    s.settimeout(10)
    s.bind((source, 0))
    s.connect(address(daemon))
    return s


def read_all(s: socket.socket) -> bytes:
    """Everything until the daemon closes the connection."""
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    return data


def client_from(daemon: Daemon, source: str, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=daemon.url,
        headers={"Authorization": f"Bearer {token}"},
        transport=httpx.HTTPTransport(local_address=source),
        timeout=30,
    )


def jobs_of(daemon: Daemon, user: str) -> list[store.Job]:
    s = daemon.store()
    try:
        return s.jobs(owner=user)
    finally:
        s.close()


def no_stray_folders(daemon: Daemon) -> None:
    """Every job folder has its row: a refused submission left nothing behind."""
    s = daemon.store()
    try:
        assert {p.name for p in (daemon.state / "jobs").iterdir()} == s.ids()
    finally:
        s.close()


def upload_head(length: int, authorization: str | None) -> bytes:
    lines = [
        "POST /jobs HTTP/1.1",
        "Host: punchcard",
        "Content-Type: multipart/form-data; boundary=b",
        f"Content-Length: {length}",
        *([f"Authorization: {authorization}"] if authorization else []),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# The token comes before the body


@pytest.mark.parametrize("length", [5 * 2**20, 100 * 2**20])  # under and over the upload limit
@pytest.mark.parametrize("authorization", [None, "Bearer dkp_not-a-token"])
def test_an_upload_without_a_valid_token_is_refused_before_its_body(
    limited: Daemon, length: int, authorization: str | None
) -> None:
    with connect(limited) as s:
        s.sendall(upload_head(length, authorization))  # the headers only: no byte of the body
        start = time.monotonic()
        answer = read_all(s)
    # Answered at once, and the connection closed: the body is never taken in.
    assert time.monotonic() - start < 5
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401 ") and b"connection: close" in head.lower()
    assert "token" in json.loads(body)["error"]


def test_an_upload_with_a_valid_token_is_read(limited: Daemon) -> None:
    """The control: with a valid token, the same headers make the daemon wait for the body."""
    token = limited.add_user("uploader")
    with connect(limited) as s:
        s.sendall(upload_head(5 * 2**20, f"Bearer {token}"))
        readable, _, _ = select.select([s], [], [], 1.5)
        assert readable == []  # no answer: it is reading the body


# Failed logins


def test_failed_logins_are_limited_per_address(limited: Daemon) -> None:
    token = limited.add_user("mallory-neighbour")
    with (
        client_from(limited, "127.0.0.2", "dkp_guess") as guesser,
        client_from(limited, "127.0.0.2", token) as same_address,
        client_from(limited, "127.0.0.1", token) as elsewhere,
    ):
        statuses = [guesser.get("/jobs").status_code for _ in range(MAX_FAILED)]
        assert statuses == [401] * MAX_FAILED
        blocked = guesser.get("/jobs")
        assert blocked.status_code == 429 and 1 <= int(blocked.headers["retry-after"]) <= 60
        assert blocked.json()["error"].startswith("too many failed logins from your address")
        # From that address not even a valid token is tried (or guessing could go on) ...
        assert same_address.get("/jobs").status_code == 429
        # ... while other addresses are not affected.
        assert elsewhere.get("/jobs").status_code == 200
        assert guesser.get("/health").status_code == 200


# Connections per client and the header timeout


def test_connections_per_client_are_limited(limited: Daemon) -> None:
    first = [connect(limited, "127.0.0.3") for _ in range(MAX_CONNECTIONS)]
    try:
        extra = [connect(limited, "127.0.0.3") for _ in range(2)]
        for s in extra:
            answer = read_all(s)
            s.close()
            assert answer.startswith(b"HTTP/1.1 429 ") and b"connections from your address" in answer
        # The first ones are served; another address is not limited by this one's connections.
        for s in first[:2]:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(65536).startswith(b"HTTP/1.1 200 ")
        assert httpx.get(f"{limited.url}/health").status_code == 200
    finally:
        for s in first:
            s.close()
    # Closed connections no longer count.
    deadline = time.monotonic() + 10
    while True:
        with connect(limited, "127.0.0.3") as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            if read_all(s).startswith(b"HTTP/1.1 200 "):
                break
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_a_client_slow_to_send_its_headers_is_disconnected(short: Daemon) -> None:
    request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    with connect(short) as s:
        start, sent, closed = time.monotonic(), 0, False
        while sent < len(request) and time.monotonic() - start < 10:
            try:
                s.send(request[sent : sent + 1])
            except OSError:  # reset: closed
                closed = True
                break
            sent += 1
            readable, _, _ = select.select([s], [], [], 0.25)  # one byte every quarter second
            if readable:
                closed = s.recv(65536) == b""
                break
        took = time.monotonic() - start
    assert closed and 0.9 < took < 4, (closed, took, sent)
    assert sent < len(request)


def test_an_idle_connection_is_closed_after_the_header_timeout(short: Daemon) -> None:
    with connect(short) as s:
        start = time.monotonic()
        assert s.recv(65536) == b""
        assert 0.9 < time.monotonic() - start < 4


def test_the_header_timeout_is_per_request(short: Daemon) -> None:
    """A keep-alive connection that sends each request promptly lives longer than the timeout."""
    with connect(short) as s:
        start = time.monotonic()
        for _ in range(5):
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while not answer.endswith(b"}"):
                chunk = s.recv(65536)
                assert chunk, "closed"
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200 ")
            time.sleep(0.5)
        assert time.monotonic() - start > 2


# The queue limit under concurrency


def test_concurrent_submissions_keep_to_the_queue_limit(limited: Daemon, model_file: Path) -> None:
    data = str(limited.state)
    blocker_token, token = limited.add_user("blocker"), limited.add_user("carol")
    with limited.client(blocker_token) as b:  # holds the one running slot: carol's jobs stay queued
        blocker = submit(b, {"data": data, "seed": 2}, model_file).json()["id"]
        wait_for(b, blocker, {"running"})
    tries = 16
    barrier = threading.Barrier(tries)

    def one(_: int) -> httpx.Response:
        with limited.client(token) as c:
            barrier.wait()
            return submit(c, {"data": data, "seed": 2}, model_file)

    try:
        with ThreadPoolExecutor(tries) as pool:
            answers = list(pool.map(one, range(tries)))
        assert Counter(r.status_code for r in answers) == {201: MAX_QUEUED, 429: tries - MAX_QUEUED}
        refused = {r.json()["error"] for r in answers if r.status_code == 429}
        assert refused == {f"you have {MAX_QUEUED} jobs queued; wait or cancel some"}
        carols = jobs_of(limited, "carol")
        assert len(carols) == MAX_QUEUED and all(j.state == "queued" for j in carols)
        no_stray_folders(limited)
    finally:
        with limited.client(token) as c:
            for j in jobs_of(limited, "carol"):
                c.post(f"/jobs/{j.id}/cancel")
        with limited.client(blocker_token) as b:
            b.post(f"/jobs/{blocker}/cancel")
            wait_for(b, blocker, timeout=30)


# What a spec and a model may hold


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ('{"data": "{data}", "test_split": NaN}', "test_split"),
        ('{"data": "{data}", "test_split": Infinity}', "test_split"),
        ('{"data": "{data}", "epochs": 1e999}', "epochs"),
        ('{"data": "{data}", "plugin": "aeasgd", "options": {"rho": -Infinity}}', "options.rho"),
        ('{"data": "{data}", "plugin": "aeasgd", "options": {"rho": 1e999}}', "options.rho"),
        ('{"data": "{data}", "options": {"window": NaN}}', "options.window"),
        ('{"data": "{data}", "more": [1, 2, -1e400]}', "more.2"),
    ],
)
def test_non_finite_numbers_are_refused_naming_the_field(
    limited: Daemon, model_file: Path, raw: str, field: str
) -> None:
    token = limited.add_user(f"n{uuid.uuid4().hex[:8]}")
    before = set((limited.state / "jobs").iterdir())
    with limited.client(token) as c, model_file.open("rb") as f:
        r = c.post(
            "/jobs",
            data={"spec": raw.replace("{data}", str(limited.state))},
            files={"model": ("m.keras", f)},
        )
        assert r.status_code == 422, r.text
        assert r.json()["error"].startswith(f"{field}: must be a finite number, got ")
        assert c.get("/jobs").json()["jobs"] == []  # nothing stored
    assert set((limited.state / "jobs").iterdir()) == before


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, json.loads("1e999"), "nan", "-Infinity"])
def test_options_refuse_non_finite_numbers_whatever_their_bounds(value: Any) -> None:
    option = Option("rate", float, 0.1, "a rate", minimum=0.0)
    with pytest.raises(OptionError, match="rate must be a finite number"):
        option.parse(value)


def _zip(path: Path, config: str) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("config.json", config)
    return path


@pytest.mark.parametrize(
    "config",
    [
        "[" * 100_000 + "]" * 100_000,  # deeper than Python's parser goes
        '{"a": ' * 101 + "1" + "}" * 101,  # parsed, then too deep
    ],
)
def test_a_deeply_nested_model_config_is_refused(limited: Daemon, tmp_path: Path, config: str) -> None:
    token = limited.add_user(f"d{uuid.uuid4().hex[:8]}")
    before = set((limited.state / "jobs").iterdir())
    with limited.client(token) as c:
        r = submit(c, {"data": str(limited.state)}, _zip(tmp_path / "deep.keras", config))
        assert r.status_code == 422, r.text
        assert r.json() == {"error": "the model's config.json is nested more than 100 levels deep"}
        assert c.get("/jobs").json()["jobs"] == []
    assert set((limited.state / "jobs").iterdir()) == before


def test_a_nested_keras_model_is_well_within_the_depth_limit(limited: Daemon, tmp_path: Path) -> None:
    import keras

    inner = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4), keras.layers.BatchNormalization()])
    inputs = keras.Input((8,))
    functional = keras.Model(inputs, keras.layers.Dense(2)(inner(inputs)))
    keras.Sequential([keras.Input((8,)), functional, keras.layers.Dense(3)]).save(tmp_path / "n.keras")
    with limited.client(limited.add_user("nested")) as c:
        r = submit(c, {"data": str(limited.state), "epochs": 1}, tmp_path / "n.keras")
        assert r.status_code == 201, r.text


# Idempotent submissions


def test_the_same_idempotency_key_gives_one_job(limited: Daemon, model_file: Path) -> None:
    spec = {"data": str(limited.state), "epochs": 1}
    alice, bob = limited.add_user("idem-alice"), limited.add_user("idem-bob")

    def post(client: httpx.Client, key: str) -> httpx.Response:
        with model_file.open("rb") as f:
            return client.post(
                "/jobs",
                data={"spec": json.dumps(spec)},
                files={"model": ("m.keras", f)},
                headers={"Idempotency-Key": key},
            )

    with limited.client(alice) as a, limited.client(bob) as b:
        first, again = post(a, "k-1"), post(a, "k-1")
        assert (first.status_code, again.status_code) == (201, 200)
        assert first.json()["id"] == again.json()["id"]
        assert post(a, "k-2").status_code == 201
        theirs = post(b, "k-1")  # a key is the user's own
        assert theirs.status_code == 201 and theirs.json()["id"] != first.json()["id"]
        # The same key many times at once: one job.
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: post(a, "k-3"), range(8)))
        assert sorted(r.status_code for r in answers) == [200] * 7 + [201]
        assert len({r.json()["id"] for r in answers}) == 1
        bad = post(a, "not a key")
        assert bad.status_code == 422 and bad.json()["error"].startswith("idempotency-key: ")
    assert len(jobs_of(limited, "idem-alice")) == 3 and len(jobs_of(limited, "idem-bob")) == 1
    no_stray_folders(limited)


class LosingProxy:
    """Forwards connections to the daemon, except that on the first one the daemon's answer is
    dropped and the connection closed: as when the daemon dies after storing a submission."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(30)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.requests: list[bytes] = []  # what each connection brought, as far as the daemon's answer
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.requests.append(b"")
            index = len(self.requests) - 1
            threading.Thread(target=self._serve, args=(client, index), daemon=True).start()

    def _serve(self, client: socket.socket, index: int) -> None:
        upstream = socket.create_connection(self.target, timeout=120)
        client.settimeout(120)

        def forward() -> None:
            try:
                while data := client.recv(65536):
                    self.requests[index] += data
                    upstream.sendall(data)
            except OSError:
                pass

        threading.Thread(target=forward, daemon=True).start()
        try:
            while data := upstream.recv(65536):
                if index == 0:
                    break  # the answer is lost
                client.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (client, upstream):  # shutdown, not only close: it wakes the other thread
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    def close(self) -> None:
        self.listener.close()


def test_dk_submit_retries_with_its_key_when_the_answer_is_lost(
    limited: Daemon, model_file: Path, tmp_path: Path
) -> None:
    token = limited.add_user("retrier")
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"data": str(limited.state), "epochs": 1}))
    proxy = LosingProxy(address(limited))
    try:
        result = CliRunner().invoke(
            main,
            ["submit", str(spec), f"--model={model_file}", "--output-format=json"],
            env={"DK_SERVER": proxy.url, "DK_TOKEN": token},
            catch_exceptions=False,
        )
    finally:
        proxy.close()
    assert result.exit_code == 0, result.output
    job = json.loads(result.stdout)
    # The first try was stored, its answer lost; the retry got that job rather than a second one.
    assert [j.id for j in jobs_of(limited, "retrier")] == [job["id"]]
    assert len(proxy.requests) == 2
    keys = [
        line.split(b":", 1)[1].strip()
        for r in proxy.requests
        for line in r.split(b"\r\n\r\n")[0].split(b"\r\n")
        if line.lower().startswith(b"idempotency-key:")
    ]
    assert len(keys) == 2 and keys[0] == keys[1] and len(keys[0]) >= 32


# Run time and the folders of old jobs


def test_a_job_that_runs_too_long_is_stopped(short: Daemon, model_file: Path) -> None:
    with short.client(short.add_user("sleeper")) as c:
        quick = submit(c, {"data": str(short.state), "epochs": 2}, model_file).json()["id"]
        assert wait_for(c, quick, timeout=30)["state"] == "succeeded"
        job_id = submit(c, {"data": str(short.state), "seed": 2}, model_file).json()["id"]  # forever
        wait_for(c, job_id, {"running"})
        pids = short.stub_children(job_id)
        job = wait_for(c, job_id, timeout=30)
    assert job["state"] == "failed" and job["reason"] == "ran longer than --max-job-seconds 1"
    assert 1 <= job["runtime_seconds"] < 10
    assert procs.session_members(pids[0]) == []  # its grandchildren too


def test_old_job_folders_are_removed(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "jobs").mkdir(parents=True)
    s = store.Store(state / "punchcard.db")
    try:
        for job_id in ("a" * 32, "b" * 32):  # two finished jobs, with their files
            s.add_job(job_id, "keeper", "", {"data": "/x"}, lambda j, _: j)
            s.finish(job_id, "succeeded", result={"test_accuracy": 0.75})
            (state / "jobs" / job_id).mkdir()
            (state / "jobs" / job_id / "output.keras").write_bytes(b"model")
        old, recent = "a" * 32, "b" * 32
        s._db.execute("UPDATE jobs SET finished = finished - 2 * 86400 WHERE id = ?", (old,))  # 2 days ago
    finally:
        s.close()
    daemon = Daemon(state, "--keep-days=1")  # removes them at start, then hourly
    deadline = time.monotonic() + 20
    while (state / "jobs" / old).exists():
        assert time.monotonic() < deadline, "the old job's folder is still there"
        time.sleep(0.1)
    assert (state / "jobs" / recent / "output.keras").is_file()
    with daemon.client(daemon.add_user("keeper")) as c:
        job = c.get(f"/jobs/{old}").json()
        assert job["state"] == "succeeded" and job["result"] == {"test_accuracy": 0.75}
        assert job["files_removed"] is not None and "result" not in job["links"]
        gone = c.get(f"/jobs/{old}/result")
        assert gone.status_code == 410 and "removed" in gone.json()["error"]
        assert c.get(f"/jobs/{recent}/result").content == b"model"
        assert c.get(f"/jobs/{recent}").json()["files_removed"] is None


def test_an_old_database_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "punchcard.db"
    with sqlite3.connect(path) as db:  # a database as the daemon made it before schema version 1
        db.executescript(store._SCHEMA)
        db.execute(
            "INSERT INTO jobs (id, owner, name, state, spec, created) "
            "VALUES ('a', 'alice', '', 'succeeded', '{}', 0)"
        )
    created = []
    for _ in range(2):  # and opening it again changes nothing
        s = store.Store(path)
        try:
            old = s.get("a")
            assert old is not None and old.idempotency_key is None and old.files_removed is None
            job, new = s.add_job("b", "alice", "", {}, lambda j, _: j, key="k")
            assert job.id == "b" and job.idempotency_key == "k"
            created.append(new)
        finally:
            s.close()
    assert created == [True, False]
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(store._MIGRATIONS)
        assert db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 2
