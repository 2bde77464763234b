"""The client side of the API, for `dk submit` and `dk jobs` (and for scripts)."""

from __future__ import annotations

import os
import re
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from distkeras_plus.errors import ClientError as ClientError
from distkeras_plus.punchcard import DEFAULT_SERVER as DEFAULT_SERVER
from distkeras_plus.punchcard.store import FINAL


class PunchcardClient:
    # Seconds before each new try of a submission that did not get an answer (the daemon
    # restarting, a proxy in between): the same Idempotency-Key makes a retry safe.
    SUBMIT_RETRIES = (1.0, 3.0)
    RETRY_STATUSES = frozenset({502, 503, 504})

    def __init__(self, server: str, token: str, timeout: float = 60.0) -> None:
        if not re.match(r"^https?://[^/\s]+", server):
            raise ClientError(f"--server must be an http:// or https:// URL, got {server!r}")
        if not token:
            raise ClientError(
                "no token: pass --token or set DK_TOKEN (the operator runs dk punchcard add-user)"
            )
        self.server = server.rstrip("/")
        self._http = httpx.Client(
            base_url=self.server,
            headers={"Authorization": f"Bearer {token}", "User-Agent": "dk-punchcard-client"},
            timeout=timeout,
            follow_redirects=False,  # a redirect elsewhere would carry the token along
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> PunchcardClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as e:
            raise ClientError(f"cannot reach the punchcard daemon at {self.server}: {e}") from None
        if not response.is_success:
            self._raise(response)
        return response

    def _job_path(self, job_id: str, tail: str = "") -> str:
        return f"/jobs/{quote(self.resolve(job_id), safe='')}{tail}"

    def resolve(self, job_id: str) -> str:
        """A full job id from a unique prefix (listings show the first 12 characters)."""
        if re.fullmatch(r"[0-9a-f]{32}", job_id) or not re.fullmatch(r"[0-9a-f]{4,31}", job_id):
            return job_id
        matches = [j["id"] for j in self.jobs() if j["id"].startswith(job_id)]
        if len(matches) != 1:
            raise ClientError(f"{'no job' if not matches else 'more than one job'} starts with {job_id}")
        return str(matches[0])

    def health(self) -> dict[str, Any]:
        return dict(self._request("GET", "/health").json())

    def submit(self, spec: str, model: Path, key: str | None = None) -> dict[str, Any]:
        """Submits a job; a try that gets no answer is made again with the same idempotency key,
        so the daemon creates the job once even if it had stored it before the answer was lost."""
        headers = {"Idempotency-Key": key or uuid.uuid4().hex}
        for wait in (*self.SUBMIT_RETRIES, None):
            try:
                with model.open("rb") as f:
                    files = {"model": ("model.keras", f, "application/octet-stream")}
                    response = self._http.post("/jobs", data={"spec": spec}, files=files, headers=headers)
            except httpx.TransportError as e:
                if wait is None:
                    raise ClientError(f"cannot reach the punchcard daemon at {self.server}: {e}") from None
            else:
                if response.status_code not in self.RETRY_STATUSES or wait is None:
                    break
            time.sleep(wait)
        if not response.is_success:
            self._raise(response)
        return dict(response.json())

    def jobs(self, state: str | None = None) -> list[dict[str, Any]]:
        params = {"state": state} if state else {}
        return list(self._request("GET", "/jobs", params=params).json()["jobs"])

    def status(self, job_id: str) -> dict[str, Any]:
        return dict(self._request("GET", self._job_path(job_id)).json())

    def logs(self, job_id: str, offset: int = 0) -> dict[str, Any]:
        return dict(self._request("GET", self._job_path(job_id, "/logs"), params={"offset": offset}).json())

    def follow(self, job_id: str, write: Callable[[str], None], poll: float = 1.0, offset: int = 0) -> None:
        """Writes the job's log as it grows until the job has finished and all of it is written."""
        job_id = self.resolve(job_id)
        while True:
            chunk = self.logs(job_id, offset)
            if chunk["text"]:
                write(chunk["text"])
            if chunk["done"]:
                return
            if chunk["offset"] == offset:
                time.sleep(poll)
            offset = chunk["offset"]

    def cancel(self, job_id: str) -> dict[str, Any]:
        return dict(self._request("POST", self._job_path(job_id, "/cancel")).json())

    def wait(self, job_id: str, timeout: float | None = None, poll: float = 1.0) -> dict[str, Any]:
        job_id = self.resolve(job_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.status(job_id)
            if job["state"] in FINAL:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise ClientError(f"job {job_id} is still {job['state']} after {timeout:g} s")
            time.sleep(poll)

    def download(self, job_id: str, dest: Path) -> Path:
        """The trained model, written to `dest` only once all of it has arrived."""
        path = self._job_path(job_id, "/result")
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".dk-result-", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                try:
                    with self._http.stream("GET", path) as response:
                        if not response.is_success:
                            response.read()
                            self._raise(response)
                        for block in response.iter_bytes(1 << 20):
                            f.write(block)
                except httpx.TransportError as e:
                    raise ClientError(f"cannot reach the punchcard daemon at {self.server}: {e}") from None
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return dest

    def _raise(self, response: httpx.Response) -> None:
        try:
            message = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            message = response.reason_phrase or "no message"
        raise ClientError(f"{message} (HTTP {response.status_code})")

    def history(self, job_id: str) -> Any:
        return self._request("GET", self._job_path(job_id, "/history")).json()
