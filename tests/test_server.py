"""Server and client lifecycle through the Python surface: ports, threads, sockets, the GIL, stats."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from helpers import address
from wire import OPS, STATS_REPLY, RawWorker, frame, read_frame, stats_of

from distkeras_plus import (
    AuthenticationError,
    Centre,
    Client,
    DkError,
    Layout,
    LayoutMismatchError,
    ParameterServer,
    ServerClosedError,
    _core,
)

N = 1000


def os_threads() -> int:
    """The parameter server's own threads (the core names them dk-ps-*); counting every thread
    would count others that come and go, such as an allocator's background thread."""
    names = []
    for task in os.listdir("/proc/self/task"):
        try:
            names.append(Path(f"/proc/self/task/{task}/comm").read_text())
        except OSError:  # ended meanwhile
            continue
    return sum(name.startswith("dk-ps") for name in names)


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
    assert os_threads() == threads + 5  # acceptor + one per connection
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


def test_argument_errors_are_dk_errors_and_value_errors(server: ParameterServer, secret: bytes) -> None:
    assert issubclass(_core.InvalidArgumentError, DkError)
    assert issubclass(_core.InvalidArgumentError, ValueError)
    assert _core.InvalidArgumentError.__module__ == "distkeras_plus._core"
    attempts: list[Callable[[], object]] = [
        lambda: Centre(np.zeros(4, np.float32), "nesterov"),  # the core refuses it
        lambda: Centre(np.zeros(4, np.float32), round_timeout=0.0),  # the Python layer refuses it
        lambda: Layout.flat(4).flatten_into([np.zeros(4, np.float32)], np.zeros(5, np.float32)),
        lambda: Client(address(server), secret, Layout.flat(N), 0, connect_timeout=-1.0),
        lambda: ParameterServer(Centre(np.zeros(4, np.float32)), Layout.flat(4), b"short"),
    ]
    for attempt in attempts:
        with pytest.raises(_core.InvalidArgumentError):
            attempt()
    with Client(address(server), secret, Layout.flat(N), 0) as c:
        with pytest.raises(_core.InvalidArgumentError, match="contiguous"):
            c.pull(np.zeros(2 * N, np.float32)[::2])


def test_vocabulary_comes_from_the_core() -> None:
    assert _core.RULES == ("add", "dynsgd", "adaptive", "elastic", "sync")
    assert _core.RULE_PARAMS == {
        "add": ("scale",),
        "dynsgd": (),
        "adaptive": ("gamma",),
        "elastic": ("alpha",),
        "sync": ("workers", "scale"),
    }
    assert _core.RULE_SYNTAX.startswith("add(scale=1), dynsgd, adaptive(gamma=1e-4)")
    assert _core.MIN_SECRET_LEN == 16
    assert _core.PROTOCOL_VERSION == 4
    assert _core.MAX_LOGS == 32
    required = {"elastic": {"alpha": 0.5}, "sync": {"workers": 1.0}}
    for rule in _core.RULES:
        centre = Centre(np.zeros(2, np.float32), rule, required.get(rule))
        assert centre.rule == rule and tuple(centre.rule_params) == _core.RULE_PARAMS[rule]
    short = b"k" * (_core.MIN_SECRET_LEN - 1)
    with pytest.raises(ValueError, match=f"{_core.MIN_SECRET_LEN} bytes"):
        ParameterServer(Centre(np.zeros(2, np.float32)), Layout.flat(2), short)
    ParameterServer(Centre(np.zeros(2, np.float32)), Layout.flat(2), short + b"k").stop()


def test_stats_follow_the_schema(server: ParameterServer, secret: bytes) -> None:
    assert _core.STATS_FIELDS == STATS_REPLY  # as docs/protocol.md writes the stats reply
    assert _core.WORKER_STATS_FIELDS == (
        "connected",
        "commits",
        "pulls",
        "last_staleness",
        "max_staleness",
        "mean_staleness",
        "samples",
        "epoch",
        "loss",
    )
    with Client(address(server), secret, Layout.flat(N), worker_id=5) as c:
        c.commit(np.ones(N, np.float32))
        remote = c.stats()
        local = server.stats()
    assert tuple(remote) == _core.STATS_FIELDS
    assert tuple(local) == (*_core.STATS_FIELDS, "workers")
    assert tuple(local["workers"][5]) == _core.WORKER_STATS_FIELDS
    assert {k: v for k, v in remote.items() if k != "bytes_out"} == {
        k: local[k] for k in _core.STATS_FIELDS if k != "bytes_out"
    }
    assert all(type(local[k]) is int for k in _core.STATS_FIELDS)
    worker = local["workers"][5]
    assert type(worker["mean_staleness"]) is float and type(worker["loss"]) is float
    assert all(
        type(worker[k]) is int for k in _core.WORKER_STATS_FIELDS if k not in ("mean_staleness", "loss")
    )
    # A worker speaking the protocol by hand reads the same fields.
    w = RawWorker(server.port)
    op, _ = w.hello(secret, [[N]], worker_id=6)
    assert op == OPS["welcome"]
    w.send(frame("stats"))
    raw = stats_of(*read_frame(w.sock))
    assert raw["commits"] == 1 and raw["workers_connected"] == 1 and raw["connections"] == 2
    w.close()


def test_epochs_average_the_workers_logs_by_their_samples(server: ParameterServer, secret: bytes) -> None:
    ones = np.ones(N, np.float32)
    with (
        Client(address(server), secret, Layout.flat(N), worker_id=0) as a,
        Client(address(server), secret, Layout.flat(N), worker_id=1) as b,
    ):
        a.set_progress(10, 0, [1.0, 0.5])
        a.commit(ones)
        b.set_progress(30, 0, (3.0, float("nan")))  # a NaN metric is left out of its mean
        b.commit(ones)
        a.set_progress(20, 1, [2.0])
        a.commit(ones)
        a.commit(ones)  # no new samples: adds nothing
        with pytest.raises(ValueError, match="MAX_LOGS"):
            a.set_progress(30, 1, [0.0] * (_core.MAX_LOGS + 1))
    epochs = server.epochs()
    assert list(epochs) == [0, 1]
    assert epochs[0]["samples"] == 40 and epochs[0]["means"] == [pytest.approx(100 / 40), 0.5]
    assert epochs[1] == {"samples": 10, "means": [2.0]}
    worker = server.stats()["workers"][0]
    assert (worker["samples"], worker["epoch"], worker["loss"]) == (20, 1, 2.0)


def test_the_server_keeps_the_centre_as_each_epoch_ends(server: ParameterServer, secret: bytes) -> None:
    server.track_epochs(2)
    with (
        Client(address(server), secret, Layout.flat(N), worker_id=0) as a,
        Client(address(server), secret, Layout.flat(N), worker_id=1) as b,
    ):

        def commit(c: Client, samples: int, epoch: int, delta: float) -> None:
            c.set_progress(samples, epoch, [0.5])
            c.commit(np.full(N, delta, np.float32))

        commit(a, 10, 0, 1.0)
        commit(a, 20, 1, 1.0)  # worker 1 has not committed yet: nothing ends
        assert server.epochs_ended == 0 and server.take_epoch_centre(0) is None
        commit(b, 10, 0, 10.0)
        assert server.epochs_ended == 0
        commit(b, 20, 1, 10.0)  # the slower worker moves on: epoch 0 ends (centre 1 + 22)
        commit(a, 30, 3, 1.0)
        commit(b, 30, 1, 10.0)
        assert server.epochs_ended == 1
        commit(b, 40, 4, 10.0)  # worker 0 is in epoch 3: epochs 1 and 2 end at once
        commit(a, 40, 3, 1.0)
        assert server.epochs_ended == 3
    centre = server.take_epoch_centre(0)
    assert centre is not None and centre.dtype == np.float32 and centre.shape == (N,)
    assert np.all(centre == 23.0)
    assert server.take_epoch_centre(0) is None  # taken
    for epoch in (2, 1):
        centre = server.take_epoch_centre(epoch)
        assert centre is not None and np.all(centre == 44.0)
    assert server.take_epoch_centre(3) is None  # not ended
    with pytest.raises(ValueError, match="at least one worker"):
        server.track_epochs(0)


def test_commit_replies_carry_the_control_block(server: ParameterServer, secret: bytes) -> None:
    ones = np.ones(N, np.float32)
    c = Client(address(server), secret, Layout.flat(N), worker_id=0)
    assert (c.stop_requested, c.learning_rate) == (False, None)
    c.commit(ones)
    assert (c.stop_requested, c.learning_rate) == (False, None)
    server.set_control(learning_rate=0.125)
    assert (c.stop_requested, c.learning_rate) == (False, None)  # only a reply brings it
    c.commit(ones)
    assert (c.stop_requested, c.learning_rate) == (False, 0.125)
    server.set_control(stop=True)
    c.commit(ones)
    c.close()
    assert (c.stop_requested, c.learning_rate) == (True, None)  # still readable once closed
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError, match="learning_rate"):
            server.set_control(learning_rate=bad)


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
