"""The HTTP API (FastAPI) and the ASGI guard in front of it.

Every route but `/health` and the static page needs `Authorization: Bearer TOKEN`, checked by
the guard before anything of the request's body is read. A job that
belongs to someone else answers exactly like one that does not exist (404), so job ids reveal
nothing. Errors are `{"error": "one line"}` with the status that fits.
"""

from __future__ import annotations

import codecs
import json
import logging
import re
import shutil
import uuid
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, ClassVar

from fastapi import Depends, FastAPI, File, Form, Header, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from distkeras_plus import __version__
from distkeras_plus.errors import ModelError, SpecError
from distkeras_plus.punchcard import page, runner, users
from distkeras_plus.punchcard.limits import LoginLimiter, client_key
from distkeras_plus.punchcard.modelcheck import ModelChecker, check_archive
from distkeras_plus.punchcard.runner import Runner
from distkeras_plus.punchcard.spec import parse
from distkeras_plus.punchcard.store import FINAL, STATES, Job, QueueFull, Store

log = logging.getLogger("distkeras_plus.punchcard")

JOB_ID = re.compile(r"^[0-9a-f]{32}$")
PUBLIC = frozenset({"/health", "/", "/app.js"})  # every other path needs a token
IDEMPOTENCY_KEY = r"^[!-~]{1,128}$"  # printable ASCII: a UUID, a hash, a name

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True)
class Settings:
    max_upload_bytes: int = 200 * 2**20
    data_roots: tuple[Path, ...] = ()
    max_queued_per_user: int = 100


class ApiError(HTTPException):
    pass


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")


def job_json(job: Job, jobs_dir: Path, position: int | None = None, progress: bool = True) -> dict[str, Any]:
    """A job as the API shows it; listings skip the progress of jobs that are not running."""
    runtime = None
    if job.started is not None:
        runtime = round((job.finished or datetime.now(UTC).timestamp()) - job.started, 3)
    links = {"self": f"/jobs/{job.id}", "logs": f"/jobs/{job.id}/logs"}
    if job.state == "succeeded" and job.files_removed is None:
        links |= {"result": f"/jobs/{job.id}/result", "history": f"/jobs/{job.id}/history"}
    return {
        "id": job.id,
        "name": job.name,
        "owner": job.owner,
        "state": job.state,
        "queue_position": position,
        "cancel_requested": job.cancel_requested,
        "created": _iso(job.created),
        "started": _iso(job.started),
        "finished": _iso(job.finished),
        "runtime_seconds": runtime,
        "attempts": job.attempts,
        "spec": job.spec,
        "progress": runner.progress(jobs_dir / job.id)
        if job.state == "running" or (progress and job.state != "queued")
        else None,
        "result": job.result,
        "reason": job.reason,
        "exit_code": job.exit_code,
        "files_removed": _iso(job.files_removed),
        "links": links,
    }


def current_user(request: Request) -> str:
    """The user the guard authenticated (no guard in front: nobody is)."""
    user = request.scope.get("state", {}).get("user")
    if not isinstance(user, str):
        raise ApiError(401, "this needs a token: send Authorization: Bearer TOKEN")
    return user


User = Annotated[str, Depends(current_user)]


def create_app(
    store: Store, jobs: Runner, checker: ModelChecker | None, settings: Settings = Settings()
) -> FastAPI:
    """The API over a store and a runner; wrap it in `Guard` to serve it."""
    # No /docs or /openapi.json: every route but health needs a token, and those would not.
    app = FastAPI(title="punchcard", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store = store

    def owned(job_id: str, user: str) -> Job:
        job = store.get(job_id, owner=user) if JOB_ID.match(job_id) else None
        if job is None:
            raise ApiError(404, "no such job")
        return job

    def removed(job: Job) -> None:
        if job.files_removed is not None:
            raise ApiError(410, f"the job's files were removed on {_iso(job.files_removed)} (--keep-days)")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        headers = dict(exc.headers or {})
        if exc.status_code == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return JSONResponse({"error": str(exc.detail)}, exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header"))
        return JSONResponse({"error": f"{where}: {err.get('msg')}" if where else str(err.get("msg"))}, 422)

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> Response:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"error": "internal error; the daemon's log has the details"}, 500)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__}

    @app.get("/", include_in_schema=False)
    def index() -> Response:
        return Response(page.INDEX, media_type="text/html; charset=utf-8")

    @app.get("/app.js", include_in_schema=False)
    def script() -> Response:
        return Response(page.SCRIPT, media_type="text/javascript; charset=utf-8")

    @app.post("/jobs", status_code=201)
    def submit(
        user: User,
        spec: Annotated[str, Form(description="The job spec, JSON.")],
        model: Annotated[UploadFile, File(description="The model, a .keras file.")],
        idempotency_key: Annotated[
            str | None, Header(pattern=IDEMPOTENCY_KEY, description="Names the submission for retries.")
        ] = None,
    ) -> JSONResponse:
        def answer(job: Job, position: int | None) -> JSONResponse:
            """201 with the job; 200 (set below) when it is the job an earlier try created."""
            return JSONResponse(job_json(job, jobs.jobs_dir, position), 201, {"Location": f"/jobs/{job.id}"})

        if idempotency_key is not None and (earlier := store.by_key(user, idempotency_key)) is not None:
            response = answer(earlier, store.queue_positions().get(earlier.id))
            response.status_code = 200
            return response
        job_spec = _or_422(lambda: parse(spec, settings.data_roots))
        # A cheap refusal before the upload is checked; the check that counts is add_job's.
        if store.count(user, "queued") >= settings.max_queued_per_user:
            raise ApiError(429, str(QueueFull(settings.max_queued_per_user)))
        job_id = uuid.uuid4().hex
        folder = jobs.job_dir(job_id)
        folder.mkdir(mode=0o700, parents=True)
        try:
            # The upload's own file name is never used: the model is always model.keras here.
            with (folder / runner.MODEL).open("wb") as f:
                shutil.copyfileobj(model.file, f, 1 << 20)
                if f.tell() > settings.max_upload_bytes:  # the guard's bound includes the spec
                    raise ApiError(413, too_large(settings.max_upload_bytes))
            _or_422(lambda: check_archive(folder / runner.MODEL, 2 * settings.max_upload_bytes + 2**20))
            if checker is not None:
                _or_422(lambda: checker.check(folder / runner.MODEL))
            data = job_spec.model_dump(mode="json")
            (folder / runner.SPEC).write_text(json.dumps(data, indent=2, allow_nan=False))
            # Everything that can fail happens before the commit: the answer is made inside the
            # transaction, so a submission that fails leaves nothing stored.
            response, created = store.add_job(
                job_id,
                user,
                job_spec.name,
                data,
                answer,
                key=idempotency_key,
                max_queued=settings.max_queued_per_user,
            )
        except QueueFull as e:
            shutil.rmtree(folder, ignore_errors=True)
            raise ApiError(429, str(e)) from None
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        if created:
            jobs.wake()
        else:  # the same key came in twice at once: the first one's job
            shutil.rmtree(folder, ignore_errors=True)
            response.status_code = 200
        return response

    @app.get("/jobs")
    def list_jobs(
        user: User,
        state: Annotated[str | None, Query(pattern="^(" + "|".join(STATES) + ")$")] = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    ) -> dict[str, Any]:
        positions = store.queue_positions()
        found = store.jobs(owner=user, state=state, limit=limit)
        return {
            "user": user,
            "jobs": [job_json(j, jobs.jobs_dir, positions.get(j.id), progress=False) for j in found],
        }

    @app.get("/jobs/{job_id}")
    def status(job_id: str, user: User) -> dict[str, Any]:
        job = owned(job_id, user)
        position = store.queue_positions().get(job_id) if job.state == "queued" else None
        return job_json(job, jobs.jobs_dir, position)

    @app.get("/jobs/{job_id}/logs")
    def logs(
        job_id: str,
        user: User,
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=16, le=4 * 2**20)] = 256 * 1024,
    ) -> dict[str, Any]:
        job = owned(job_id, user)
        return _read_log(jobs.job_dir(job_id) / runner.LOG, offset, limit, job.state in FINAL)

    @app.post("/jobs/{job_id}/cancel", status_code=202)
    def cancel(job_id: str, user: User) -> JSONResponse:
        job = owned(job_id, user)
        if job.state in FINAL:
            raise ApiError(
                409, f"the job has already {'been ' if job.state == 'cancelled' else ''}{job.state}"
            )
        jobs.cancel(job_id, user)
        latest = owned(job_id, user)
        return JSONResponse(job_json(latest, jobs.jobs_dir), 200 if latest.state in FINAL else 202)

    @app.get("/jobs/{job_id}/result")
    def result(job_id: str, user: User) -> Response:
        job = owned(job_id, user)
        path = jobs.job_dir(job_id) / runner.OUTPUT
        removed(job)
        if job.state != "succeeded" or not path.is_file():
            raise ApiError(409, f"the job is {job.state}: it has no trained model")
        return FileResponse(path, media_type="application/octet-stream", filename=f"{job_id}.keras")

    @app.get("/jobs/{job_id}/history")
    def history(job_id: str, user: User) -> Response:
        job = owned(job_id, user)
        path = jobs.job_dir(job_id) / runner.HISTORY
        removed(job)
        if not path.is_file():
            raise ApiError(409, f"the job is {job.state}: it has no training history")
        return Response(path.read_bytes(), media_type="application/json")

    return app


def too_large(limit: int) -> str:
    return f"the upload is larger than this daemon's limit of {limit / 2**20:g} MiB"


def _or_422(check: Callable[[], Any]) -> Any:
    try:
        return check()
    except (SpecError, ModelError) as e:
        raise ApiError(422, str(e)) from None


def _read_log(path: Path, offset: int, limit: int, final: bool) -> dict[str, Any]:
    """Text from byte `offset`, cut at a character boundary; `offset` in the answer is where to go on."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, 2)
            f.seek(min(offset, size))
            chunk = f.read(limit)
    except FileNotFoundError:
        size, chunk = 0, b""
    end = min(offset, size) + len(chunk)
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    text = decoder.decode(chunk, final=final and end >= size)
    pending = len(decoder.getstate()[0])  # bytes of a character split by the cut: next time
    next_offset = max(offset, end - pending)
    return {"text": text, "offset": next_offset, "size": size, "done": final and next_offset >= size}


class Guard:
    """Outermost ASGI layer: checks the token, bounds request bodies and sets headers every
    response should carry.

    The token is checked on the request's headers alone, so a request without a valid one is
    answered 401 before a byte of its body is read (and the connection closed: the body is never
    taken in). Failed logins are counted per client address (`logins`). The size limit is
    enforced while the body streams in (Content-Length may be absent or lie), before the
    multipart parser spools anything to disk."""

    HEADERS: ClassVar[list[tuple[bytes, bytes]]] = [
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
        (b"x-frame-options", b"DENY"),
        (b"cache-control", b"no-store"),
        (
            b"content-security-policy",
            b"default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; connect-src 'self'; "
            b"frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    ]
    DRAIN = 64 * 2**20  # read at most this much of a refused body, so the client sees the 413

    def __init__(
        self, app: ASGIApp, store: Store, max_body: int, max_upload: int, logins: LoginLimiter
    ) -> None:
        self.app, self.store, self.max_body, self.max_upload = app, store, max_body, max_upload
        self.logins = logins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self.HEADERS]
            await send(message)

        headers = dict(scope.get("headers", []))
        if scope["path"] not in PUBLIC:
            refusal = await self._authenticate(scope, headers.get(b"authorization"))
            if refusal is not None:
                await _answer(send_with_headers, *refusal)
                return

        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await self._refuse(receive, send_with_headers, 0, int(length) if length.isdigit() else None)
            return

        received, refused, started = 0, False, False

        async def limited_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    refused = True
                    if not started:
                        more = message.get("more_body", False)
                        await self._refuse(receive, send_with_headers, received, None, more)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return  # the 413 went out; the app's own answer to a cut-off body is dropped
            started = started or message["type"] == "http.response.start"
            await send_with_headers(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not refused:
                raise

    async def _authenticate(
        self, scope: Scope, header: bytes | None
    ) -> tuple[int, str, Sequence[tuple[bytes, bytes]]] | None:
        """None with the user in `scope["state"]`, or the refusal: status, message, headers."""
        unauthorized = [(b"www-authenticate", b"Bearer")]
        if not header:  # no credentials is not a guess: not counted
            return 401, "this needs a token: send Authorization: Bearer TOKEN", unauthorized
        key = client_key((scope.get("client") or (None,))[0])
        wait = self.logins.retry_after(key)
        if wait is not None:
            seconds = str(max(1, round(wait)))
            message = f"too many failed logins from your address; try again in {seconds} s"
            return 429, message, [(b"retry-after", seconds.encode())]
        scheme, _, token = header.decode("latin-1").partition(" ")
        user = None
        if scheme.lower() == "bearer" and token.strip():
            # SQLite may wait on a writer: not on the event loop.
            user = await run_in_threadpool(users.authenticate, self.store, token.strip())
        if user is None:
            self.logins.failed(key)
            if scheme.lower() != "bearer" or not token.strip():
                return 401, "the Authorization header must read 'Bearer TOKEN'", unauthorized
            return 401, "the token is not valid (ask the operator for a new one)", unauthorized
        scope.setdefault("state", {})["user"] = user
        return None

    async def _refuse(
        self, receive: Receive, send: Send, received: int, declared: int | None, more: bool = True
    ) -> None:
        if declared is None or declared - received <= self.DRAIN:
            while more and received <= self.max_body + self.DRAIN:
                message = await receive()
                if message["type"] != "http.request":
                    break
                received += len(message.get("body", b""))
                more = message.get("more_body", False)
        await _answer(send, 413, too_large(self.max_upload))


async def _answer(send: Send, status: int, error: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    """A JSON error that closes the connection: the rest of the request is not read."""
    body = json.dumps({"error": error}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
