"""What one client may cost the daemon: failed logins and open connections per address, and the
time it may take to send a request's headers.

Clients are told apart by address (an IPv6 client by its /64, which one machine usually holds
whole). Behind a reverse proxy every client has the proxy's address: the limits then apply to
all of them together.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from collections import Counter, deque

from uvicorn.protocols.http.h11_impl import H11Protocol, RequestResponseCycle


def client_key(host: str | None) -> str:
    if host is None:
        return ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{host}/64", strict=False))
    return str(address)


class LoginLimiter:
    """At most `max_failures` failed logins per address in any `window` seconds; past that, the
    address may not try a token (a valid one either, or it could go on guessing) until the
    oldest failure leaves the window. Used from the event loop only: no lock."""

    TRACKED = 10_000  # addresses remembered at most; the oldest are forgotten first

    def __init__(self, max_failures: int, window: float = 60.0) -> None:
        self.max_failures, self.window = max_failures, window
        self._failures: dict[str, deque[float]] = {}

    def retry_after(self, key: str) -> float | None:
        """Seconds until `key` may try again, or None when it may now."""
        failures = self._failures.get(key)
        if failures is None:
            return None
        now = time.monotonic()
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            del self._failures[key]
            return None
        return failures[0] + self.window - now if len(failures) >= self.max_failures else None

    def failed(self, key: str) -> None:
        failures = self._failures.pop(key, None) or deque(maxlen=self.max_failures)
        failures.append(time.monotonic())
        self._failures[key] = failures  # at the end: the dict is ordered by latest failure
        while len(self._failures) > self.TRACKED:
            del self._failures[next(iter(self._failures))]


def protocol(header_timeout: float, max_per_client: int) -> type[H11Protocol]:
    """uvicorn's h11 protocol with two bounds that uvicorn lacks (its `limit_concurrency` counts
    all clients together, and it waits for a request's headers as long as they take):

    - a request's headers must be complete `header_timeout` seconds after the connection opened
      or the previous response ended, or the connection is closed;
    - a client address may hold `max_per_client` connections; one more is answered 429 and closed.

    Both act on connections, before any request exists, hence the protocol and not ASGI."""
    open_connections: Counter[str] = Counter()
    refusal = json.dumps({"error": f"more than {max_per_client} connections from your address"})
    too_many = (
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nconnection: close\r\n"
        f"content-length: {len(refusal)}\r\n\r\n{refusal}"
    ).encode()

    class Protocol(H11Protocol):
        _key: str | None = None
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._key = client_key(self.client[0] if self.client else None)
            open_connections[self._key] += 1
            if open_connections[self._key] > max_per_client:
                transport.write(too_many)
                transport.close()
                return
            self._expect_headers()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            if self._key is not None:
                open_connections[self._key] -= 1
                if open_connections[self._key] <= 0:
                    del open_connections[self._key]
                self._key = None
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            self._expect_headers()  # before uvicorn handles a pipelined request: that one counts
            super().on_response_complete()

        def _expect_headers(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            self._header_timer = self.loop.call_later(header_timeout, self._headers_late, self.cycle)

        def _headers_late(self, waiting_after: RequestResponseCycle | None) -> None:
            # A new request (a new cycle) means its headers came in time.
            if self.cycle is waiting_after and not self.transport.is_closing():
                self.transport.close()

    return Protocol
