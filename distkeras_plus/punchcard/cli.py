"""`dk punchcard serve|add-user|remove-user|list-users`, `dk submit` and `dk jobs ...`."""

from __future__ import annotations

import fcntl
import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any, TypeVar

import click

from distkeras_plus.cli.common import OUTPUT_FORMAT, DkCommand, DkGroup, UserError
from distkeras_plus.punchcard import DEFAULT_PORT, DEFAULT_SERVER
from distkeras_plus.punchcard.store import FINAL

if TYPE_CHECKING:
    from distkeras_plus.punchcard.client import PunchcardClient

F = TypeVar("F", bound=Callable[..., Any])


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "distkeras-plus" / "punchcard"


def _state_dir(f: F) -> F:
    return click.option(
        "--state-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=default_state_dir,
        show_default="$XDG_STATE_HOME/distkeras-plus/punchcard",
        envvar="DK_PUNCHCARD_STATE_DIR",
        help="Where the job store, uploads, logs and results live.",
    )(f)


def _connection(f: F) -> F:
    f = click.option(
        "--token",
        envvar="DK_TOKEN",
        show_envvar=True,
        help="Your token, from the operator's `dk punchcard add-user` (prefer the variable: "
        "command lines are visible to other users of the machine).",
    )(f)
    return click.option(
        "--server",
        envvar="DK_SERVER",
        show_envvar=True,
        default=DEFAULT_SERVER,
        show_default=True,
        help="The punchcard daemon's URL.",
    )(f)


@contextmanager
def _client(server: str, token: str | None) -> Iterator[PunchcardClient]:
    # Imported here: httpx is not worth its import time on every other `dk` command.
    from distkeras_plus.punchcard.client import PunchcardClient

    with PunchcardClient(server, token or "") as client:
        yield client


def _store(state_dir: Path) -> Any:
    from distkeras_plus.punchcard.store import Store

    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return Store(state_dir / "punchcard.db")
    except OSError as e:
        raise UserError(f"cannot open the state folder {state_dir}: {e}") from None


# The operator's commands


@click.group(cls=DkGroup)
def punchcard() -> None:
    """The job daemon: runs training jobs that remote users submit."""


@punchcard.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option(
    "--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(0, 65535), help="0 picks one."
)
@click.option(
    "--spark-master", envvar="DK_SPARK_MASTER", help="Spark master URL for every job (default: local)."
)
@click.option(
    "--spark-remote",
    envvar="DK_SPARK_REMOTE",
    metavar="URL",
    help="Spark Connect URL (sc://HOST:PORT) every job trains through, instead of a master.",
)
@_state_dir
@click.option("--max-concurrent-jobs", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--max-upload-mb", default=200.0, show_default=True, type=click.FloatRange(min=0.001))
@click.option("--max-queued-per-user", default=100, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--data-root",
    "data_roots",
    multiple=True,
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Local data must lie inside this folder (repeatable; default: anything the daemon can read).",
)
@click.option(
    "--requeue-interrupted",
    is_flag=True,
    help="Queue again the jobs a previous daemon was running when it stopped (default: mark them failed).",
)
@click.option(
    "--kill-grace",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds between SIGTERM and SIGKILL when a job is cancelled.",
)
@click.option(
    "--python",
    type=click.Path(dir_okay=False, exists=True),
    default=sys.executable,
    show_default="this one",
    help="The Python that runs jobs (`PYTHON -m distkeras_plus train ...`), e.g. another installation's.",
)
@click.option(
    "--max-job-seconds",
    default=86400.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="A job running longer is stopped and marked failed (0: no limit).",
)
@click.option(
    "--keep-days",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Remove the folders (model, logs, result) of jobs finished this long ago; checked at start "
    "and hourly; the jobs stay listed (0: keep them all).",
)
@click.option(
    "--header-timeout",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds a client has to send a request's headers; then the connection is closed.",
)
@click.option(
    "--max-connections-per-client",
    default=16,
    show_default=True,
    type=click.IntRange(min=1),
    help="Open connections one client address may hold; more are answered 429.",
)
@click.option(
    "--max-failed-logins",
    default=10,
    show_default=True,
    type=click.IntRange(min=1),
    help="Failed logins (bad tokens) one client address may have in a minute; then 429 until a minute "
    "after the first.",
)
@click.option("--access-log/--no-access-log", default=True, show_default=True)
@OUTPUT_FORMAT
def serve(
    host: str,
    port: int,
    spark_master: str | None,
    spark_remote: str | None,
    state_dir: Path,
    max_concurrent_jobs: int,
    max_upload_mb: float,
    max_queued_per_user: int,
    data_roots: tuple[Path, ...],
    requeue_interrupted: bool,
    kill_grace: float,
    python: str,
    max_job_seconds: float,
    keep_days: float,
    header_timeout: float,
    max_connections_per_client: int,
    max_failed_logins: int,
    access_log: bool,
    output_format: str,
) -> None:
    """Serve the job API and page until interrupted (Ctrl-C or SIGTERM)."""
    import uvicorn

    from distkeras_plus.punchcard.app import Guard, Settings, create_app
    from distkeras_plus.punchcard.limits import LoginLimiter, protocol
    from distkeras_plus.punchcard.modelcheck import ModelChecker
    from distkeras_plus.punchcard.runner import Runner

    if spark_remote is not None:
        from distkeras_plus.errors import SettingError
        from distkeras_plus.spark.session import check_remote_url

        check_remote_url(spark_remote)
        if spark_master is not None:
            raise SettingError("give --spark-master or --spark-remote, not both")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    store = _store(state_dir)
    lock = _lock(state_dir)  # before anything touches the jobs: one daemon per state folder
    sock = _listen(host, port)
    jobs_dir = state_dir / "jobs"
    jobs_dir.mkdir(mode=0o700, exist_ok=True)
    runner = Runner(
        store,
        jobs_dir,
        max_concurrent_jobs,
        spark_master,
        kill_grace,
        python,
        max_job_seconds or None,
        keep_days or None,
        remote=spark_remote,
    )
    recovered = runner.recover(requeue_interrupted)
    _remove_strays(jobs_dir, store.ids())
    checker = ModelChecker(state_dir / "modelcheck.log")
    checker.start()
    max_upload = int(max_upload_mb * 2**20)
    settings = Settings(max_upload, tuple(p.resolve() for p in data_roots), max_queued_per_user)
    # The guard bounds whole requests: the model, the spec and the multipart framing.
    app = Guard(
        create_app(store, runner, checker, settings),
        store,
        max_upload + 2**20,
        max_upload,
        LoginLimiter(max_failed_logins),
    )
    bound_host, bound_port = sock.getsockname()[:2]
    url = f"http://{bound_host if ':' not in bound_host else f'[{bound_host}]'}:{bound_port}"
    if not _loopback(bound_host):
        click.echo(
            f"warning: listening on {bound_host}: tokens and models cross the network unencrypted "
            "unless a TLS proxy stands in front (see docs/punchcard.md)",
            err=True,
        )
    info = {"url": url, "state_dir": str(state_dir), "recovered_jobs": recovered, "pid": os.getpid()}
    if output_format == "json":
        click.echo(json.dumps({"event": "listening", **info}))
    else:
        click.echo(f"punchcard listening on {url} (state in {state_dir}; {len(recovered)} jobs recovered)")
    sys.stdout.flush()
    runner.start()
    config = uvicorn.Config(
        app,
        http=protocol(header_timeout, max_connections_per_client),  # h11, with the limits above
        log_config=None,  # the logging set up above
        access_log=access_log,
        server_header=False,
        proxy_headers=False,
        lifespan="off",
        backlog=2048,
        timeout_graceful_shutdown=5,
    )
    try:
        _run(config, sock)
    finally:
        runner.shutdown()
        checker.close()
        store.close()
        lock.close()


def _run(config: Any, sock: socket.socket) -> None:
    """uvicorn's server, except that a signal only asks it to stop: uvicorn itself raises the
    signal again once stopped, which would kill the process before its jobs are stopped."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextmanager
        def capture_signals(self) -> Iterator[None]:
            def on_signal(signum: int, frame: FrameType | None) -> None:
                self.handle_exit(signum, frame)

            old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for s, handler in old.items():
                    signal.signal(s, handler)

    Server(config).run(sockets=[sock])


def _lock(state_dir: Path) -> IO[str]:
    """Two daemons on one state folder would both run its queue: the second one refuses to start."""
    f = (state_dir / "daemon.lock").open("a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise UserError(f"another punchcard daemon (pid {holder}) serves {state_dir}") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def _listen(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)  # now: clients that come before uvicorn has started wait in the backlog
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port}: {e}") from None
    return sock


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _remove_strays(jobs_dir: Path, known: set[str]) -> None:
    """Job folders with no row: a submission that died between its upload and its commit."""
    for folder in jobs_dir.iterdir():
        if re.fullmatch(r"[0-9a-f]{32}", folder.name) and folder.name not in known:
            shutil.rmtree(folder, ignore_errors=True)


@punchcard.command("add-user")
@click.argument("name")
@_state_dir
@OUTPUT_FORMAT
def add_user(name: str, state_dir: Path, output_format: str) -> None:
    """Create a user and print their token, once: only its hash is kept."""
    from distkeras_plus.punchcard import users

    store = _store(state_dir)
    try:
        token = users.add_user(store, name)
    finally:
        store.close()
    if output_format == "json":
        click.echo(json.dumps({"user": name, "token": token}))
    else:
        click.echo(token)
        click.echo(f"token of {name}, shown this once: hand it over privately (DK_TOKEN=...)", err=True)


@punchcard.command("remove-user")
@click.argument("name")
@_state_dir
def remove_user(name: str, state_dir: Path) -> None:
    """Revoke a user's token at once; their jobs stay in the store."""
    store = _store(state_dir)
    try:
        if not store.remove_user(name):
            raise UserError(f"no user {name!r}")
    finally:
        store.close()
    click.echo(f"removed {name}")


@punchcard.command("list-users")
@_state_dir
@OUTPUT_FORMAT
def list_users(state_dir: Path, output_format: str) -> None:
    """The users and how many jobs each has submitted."""
    store = _store(state_dir)
    try:
        found = store.users()
    finally:
        store.close()
    if output_format == "json":
        click.echo(json.dumps([{"user": u.name, "created": u.created, "jobs": u.jobs} for u in found]))
        return
    for u in found:
        click.echo(f"{u.name:<20} since {datetime.fromtimestamp(u.created):%Y-%m-%d %H:%M}  {u.jobs} jobs")


# The user's commands


@click.command("submit", cls=DkCommand)
@click.argument(
    "spec_file", metavar="SPEC.json", type=click.Path(dir_okay=False, exists=True, path_type=Path)
)
@click.option(
    "--model",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The model to train, a .keras file (model.save('m.keras')).",
)
@click.option(
    "--follow", is_flag=True, help="Then print the job's log until it ends; exit 1 unless it succeeds."
)
@_connection
@OUTPUT_FORMAT
def submit(
    spec_file: Path, model: Path, follow: bool, server: str, token: str | None, output_format: str
) -> None:
    """Submit a training job: a JSON spec (see docs/punchcard.md) and a model."""
    try:
        spec = spec_file.read_text()
        json.loads(spec)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{spec_file}: not a JSON job spec: {e}") from None
    with _client(server, token) as client:
        job = client.submit(spec, model)
        if output_format == "json":
            click.echo(json.dumps(job))
        else:
            where = f" (position {job['queue_position']})" if job.get("queue_position") else ""
            click.echo(
                f"job {job['id']} {job['state']}{where}; follow it with: dk jobs logs {job['id']} --follow"
            )
        if follow:
            sys.stdout.flush()
            client.follow(job["id"], _write)
            _exit_with(client.status(job["id"]), output_format)


def _write(text: str) -> None:
    click.echo(text, nl=False)
    sys.stdout.flush()


def _exit_with(job: dict[str, Any], output_format: str) -> None:
    if output_format == "json":
        click.echo(json.dumps(job))
    else:
        click.echo(_summary(job))
    if job["state"] != "succeeded":
        sys.exit(1)


def _summary(job: dict[str, Any]) -> str:
    line = f"job {job['id']} {job['state']}"
    if job["state"] == "succeeded" and job.get("result"):
        r = job["result"]
        line += f": test accuracy {r.get('test_accuracy', float('nan')):.4f} in {r.get('seconds', 0):.1f} s"
    elif job.get("reason"):
        line += f": {job['reason']}"
    return line


@click.group(cls=DkGroup)
def jobs() -> None:
    """Your jobs on a punchcard daemon: list, status, logs, cancel, result."""


@jobs.command("list")
@click.option("--state", type=click.Choice(["queued", "running", "succeeded", "failed", "cancelled"]))
@_connection
@OUTPUT_FORMAT
def jobs_list(state: str | None, server: str, token: str | None, output_format: str) -> None:
    """Your jobs, newest first."""
    with _client(server, token) as client:
        found = client.jobs(state)
    if output_format == "json":
        click.echo(json.dumps(found))
        return
    for j in found:
        click.echo(
            f"{j['id'][:12]}  {j['state']:<9}  {j['spec']['plugin']:<10}  {(j['created'] or '')[:19]}  "
            f"{_progress(j)}  {j['name']}".rstrip()
        )


def _progress(job: dict[str, Any]) -> str:
    if job["state"] == "queued":
        return f"queue position {job.get('queue_position')}"
    if job["state"] == "succeeded" and job.get("result"):
        return f"accuracy {job['result'].get('test_accuracy', float('nan')):.4f}"
    p = job.get("progress") or {}
    if job["state"] == "running":
        parts = [
            f"{k} {p[k]:.4g}" if k == "loss" else f"{k} {p[k]}"
            for k in ("samples", "commits", "loss")
            if p.get(k) is not None
        ]
        return ", ".join(parts) or "starting"
    return job.get("reason") or ""


@jobs.command("status")
@click.argument("job_id", metavar="ID")
@_connection
@OUTPUT_FORMAT
def jobs_status(job_id: str, server: str, token: str | None, output_format: str) -> None:
    """A job's state, progress, timings and result."""
    with _client(server, token) as client:
        job = client.status(job_id)
    if output_format == "json":
        click.echo(json.dumps(job))
        return
    click.echo(_summary(job))
    for key in ("name", "created", "started", "finished", "runtime_seconds", "queue_position"):
        if job.get(key):
            click.echo(f"  {key.replace('_', ' ')}: {job[key]}")
    if job.get("progress"):
        click.echo(f"  progress: {json.dumps(job['progress'])}")
    click.echo(f"  spec: {json.dumps(job['spec'])}")


@jobs.command("logs")
@click.argument("job_id", metavar="ID")
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the job ends.")
@_connection
def jobs_logs(job_id: str, follow: bool, server: str, token: str | None) -> None:
    """A job's log (the training run's stdout and stderr)."""
    with _client(server, token) as client:
        if follow:
            client.follow(job_id, _write)
            return
        offset = 0
        while True:  # all of it, in the chunks the daemon sends
            chunk = client.logs(job_id, offset)
            _write(chunk["text"])
            if chunk["offset"] >= chunk["size"] or chunk["offset"] == offset:
                return
            offset = chunk["offset"]


@jobs.command("cancel")
@click.argument("job_id", metavar="ID")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until it has stopped.")
@_connection
@OUTPUT_FORMAT
def jobs_cancel(job_id: str, wait: bool, server: str, token: str | None, output_format: str) -> None:
    """Cancel a queued or running job (a running one is stopped with all its processes)."""
    with _client(server, token) as client:
        job = client.cancel(job_id)
        if wait and job["state"] not in FINAL:
            job = client.wait(job["id"], timeout=300, poll=0.5)
    click.echo(json.dumps(job) if output_format == "json" else _summary(job))


@jobs.command("result")
@click.argument("job_id", metavar="ID")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to save the trained model (default: ./dk-job-ID.keras).",
)
@click.option("--history", type=click.Path(dir_okay=False, path_type=Path), help="Save the history JSON too.")
@_connection
def jobs_result(
    job_id: str, output: Path | None, history: Path | None, server: str, token: str | None
) -> None:
    """Download a finished job's trained model (and its training history)."""
    with _client(server, token) as client:
        full = client.resolve(job_id)
        path = client.download(full, output or Path(f"dk-job-{full[:12]}.keras"))
        click.echo(str(path))
        if history is not None:
            history.write_text(json.dumps(client.history(full), indent=2))
            click.echo(str(history))


@jobs.command("history")
@click.argument("job_id", metavar="ID")
@_connection
def jobs_history(job_id: str, server: str, token: str | None) -> None:
    """A finished job's per-worker training history, as JSON."""
    with _client(server, token) as client:
        click.echo(json.dumps(client.history(job_id)))
