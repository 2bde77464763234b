"""Server and client lifecycle through the Python surface: ports, threads, sockets, the GIL, stats."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest
from helpers import address

from distkeras_plus import (
    AuthenticationError,
    Centre,
    Client,
    Layout,
    LayoutMismatchError,
    ParameterServer,
    ServerClosedError,
)

N = 1000


def os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_pull_commit_stats(server: ParameterServer, secret: bytes) -> None:
    out = np.zeros(N, dtype=np.float32)
    with Client(address(server), secret, Layout.flat(N), worker_id=3) as c:
        assert c.pull(out) == 0 and np.all(out == 1.0)
        assert c.commit(np.full(N, 0.5, dtype=np.float32)) == (1, 0)
        assert c.pull(out) == 1 and np.all(out == 1.5)
        remote = c.stats()
    wait_until(lambda: server.stats()["workers_connected"] == 0)  # the session has ended
    stats = server.stats()
    sent, received = c.bytes_out, c.bytes_in
    assert remote["commits"] == 1 and remote["pulls"] == 2
    assert stats["bytes_in"] == sent and stats["bytes_out"] == received
    worker = stats["workers"][3]
    assert worker["commits"] == 1 and worker["pulls"] == 2 and worker["max_staleness"] == 0


def test_staleness_per_worker(secret: bytes) -> None:
    with ParameterServer(Centre(np.zeros(4, np.float32), "dynsgd"), Layout.flat(4), secret) as server:
        a, b = (Client(address(server), secret, Layout.flat(4), w) for w in (0, 1))
        out = np.zeros(4, np.float32)
        a.pull(out)
        b.pull(out)
        for _ in range(3):
            a.commit(np.ones(4, np.float32))
        assert b.commit(np.ones(4, np.float32)) == (4, 3)
        workers = server.stats()["workers"]
        assert workers[1]["last_staleness"] == 3 and workers[0]["max_staleness"] == 2
        assert workers[0]["mean_staleness"] == pytest.approx(1.0)


def test_stop_frees_port_threads_and_sockets(secret: bytes) -> None:
    threads, fds = os_threads(), open_fds()
    centre = Centre(np.zeros(N, np.float32))
    server = ParameterServer(centre, Layout.flat(N), secret)
    port = server.port
    clients = [Client(address(server), secret, Layout.flat(N), w) for w in range(4)]
    assert os_threads() >= threads + 5  # acceptor + one per connection
    server.stop()
    server.stop()  # idempotent
    assert not server.running
    with pytest.raises(ServerClosedError):
        clients[0].pull(np.zeros(N, np.float32))
    for c in clients:
        c.close()
    del clients
    assert os_threads() == threads
    assert open_fds() == fds
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
    # A second server can bind the same port right away.
    with ParameterServer(centre, Layout.flat(N), secret, port=port) as again:
        assert again.port == port


def test_gil_is_released_while_a_client_waits(secret: bytes) -> None:
    # A sync round of two: worker 0 waits inside commit until worker 1 arrives. Meanwhile this
    # thread must keep running Python code, which it could not if the wait held the GIL.
    centre = Centre(np.zeros(N, np.float32), "sync", {"workers": 2})
    with ParameterServer(centre, Layout.flat(N), secret) as server:
        done = threading.Event()

        def first() -> None:
            with Client(address(server), secret, Layout.flat(N), 0) as c:
                c.commit(np.ones(N, np.float32), out=np.zeros(N, np.float32))
            done.set()

        t = threading.Thread(target=first)
        t.start()
        ticks = 0
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            ticks += 1
        assert not done.is_set()
        assert ticks > 10_000
        with Client(address(server), secret, Layout.flat(N), 1) as c:
            out = np.zeros(N, np.float32)
            assert c.commit(np.ones(N, np.float32), out=out) == (1, 0)
            assert np.all(out == 2.0)
        t.join(timeout=10)
        assert done.is_set()


def test_client_errors_are_typed(server: ParameterServer, secret: bytes) -> None:
    with pytest.raises(AuthenticationError):
        Client(address(server), b"w" * 32, Layout.flat(N), 0)
    with pytest.raises(LayoutMismatchError):
        Client(address(server), secret, Layout([[N - 1]]), 0)
    with Client(address(server), secret, Layout.flat(N), 0) as c:
        with pytest.raises(ValueError, match="1000"):
            c.pull(np.zeros(N + 1, np.float32))
        with pytest.raises(TypeError):
            c.commit(np.zeros(N, np.float64))
        with pytest.raises(ValueError, match="contiguous"):
            c.pull(np.zeros(2 * N, np.float32)[::2])
    assert np.all(server.centre.to_numpy() == 1.0)


def test_bind_errors_are_clear(server: ParameterServer, secret: bytes) -> None:
    with pytest.raises(OSError, match=r"cannot listen on 127\.0\.0\.1"):
        ParameterServer(Centre(np.zeros(N, np.float32)), Layout.flat(N), secret, port=server.port)
    with pytest.raises(ValueError, match="16 bytes"):
        ParameterServer(Centre(np.zeros(N, np.float32)), Layout.flat(N), b"short")
    with pytest.raises(ValueError, match="layout has 5"):
        ParameterServer(Centre(np.zeros(N, np.float32)), Layout.flat(5), secret)


def test_centre_shared_with_the_driver(server: ParameterServer, secret: bytes) -> None:
    centre = server.centre
    with Client(address(server), secret, Layout.flat(N), 0) as c:
        c.commit(np.ones(N, np.float32))
    assert centre.clock == 1
    snapshot = np.zeros(N, np.float32)
    assert centre.pull(snapshot) == 1 and np.all(snapshot == 2.0)
