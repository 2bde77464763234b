"""Hostile bytes from a raw socket: each gets an error reply or a closed connection, the centre is
unchanged, and the server goes on serving a well-behaved worker."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import numpy as np
import pytest
from helpers import address
from wire import OPS, RawWorker, commit_head, committed_of, error_of, frame, header, read_frame

from distkeras_plus import Client, Layout, ParameterServer, _core

N = 1000
SHAPES = [[N]]


def assert_unharmed(server: ParameterServer, secret: bytes, expected: float = 1.0) -> None:
    """The centre holds `expected` everywhere and a real worker can still pull and commit."""
    assert np.all(server.centre.to_numpy() == expected)
    with Client(address(server), secret, Layout.flat(N), worker_id=99) as c:
        out = np.zeros(N, dtype=np.float32)
        c.pull(out)
        assert np.all(out == expected)


def authed(server: ParameterServer, secret: bytes, worker_id: int = 0) -> RawWorker:
    w = RawWorker(server.port)
    op, _ = w.hello(secret, SHAPES, worker_id)
    assert op == OPS["welcome"]
    return w


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"\x00" * 16,
        header(OPS["hello"], 108, magic=b"XXXX"),
        header(OPS["hello"], 108, version=2),
        header(200, 0),
        header(OPS["hello"], 108, reserved=1),
        header(OPS["hello"], 1 << 40),  # oversized before authentication
        frame("pull"),  # anything but hello before authentication
        frame("hello", b"short"),
    ],
    ids=[
        "http",
        "zeros",
        "bad-magic",
        "bad-version",
        "unknown-op",
        "reserved",
        "oversized",
        "pull-first",
        "short",
    ],
)
def test_garbage_before_hello_is_refused(server: ParameterServer, secret: bytes, garbage: bytes) -> None:
    w = RawWorker(server.port)
    w.send(garbage)
    kind, message = error_of(*read_frame(w.sock))
    assert kind == "protocol" and message
    assert w.closed_by_server()
    assert_unharmed(server, secret)
    assert server.stats()["protocol_errors"] >= 1


def test_wrong_secret_is_refused_and_counted(server: ParameterServer, secret: bytes) -> None:
    w = RawWorker(server.port)
    op, payload = w.hello(b"x" * 32, SHAPES)
    assert error_of(op, payload)[0] == "authentication"
    assert w.closed_by_server()
    assert server.stats()["auth_failures"] == 1
    assert_unharmed(server, secret)


def test_tampered_mac_is_refused(server: ParameterServer, secret: bytes) -> None:
    w = RawWorker(server.port)
    payload = bytearray(w.hello_payload(secret, SHAPES))
    payload[-1] ^= 1
    w.send(frame("hello", bytes(payload)))
    assert error_of(*read_frame(w.sock))[0] == "authentication"
    assert_unharmed(server, secret)


def test_replayed_hello_does_not_authenticate(server: ParameterServer, secret: bytes) -> None:
    first = RawWorker(server.port)
    captured = first.hello_payload(secret, SHAPES)
    first.close()
    second = RawWorker(server.port)  # a new challenge: the captured MAC is for another nonce
    second.send(frame("hello", captured))
    assert error_of(*read_frame(second.sock))[0] == "authentication"


def test_wrong_layout_is_refused(server: ParameterServer, secret: bytes) -> None:
    w = RawWorker(server.port)
    op, payload = w.hello(secret, [[10, 100]])  # same count, other shape
    kind, message = error_of(op, payload)
    assert kind == "layout" and "1000 parameters" in message
    assert_unharmed(server, secret)


@pytest.mark.parametrize(
    "make_frame",
    [
        lambda w: header(OPS["commit"], 40 + 4 * N + 4) + b"\x00" * (40 + 4 * N + 4),  # too long
        lambda w: header(OPS["commit"], 40 + 4 * N - 4) + b"\x00" * (40 + 4 * N - 4),  # too short
        lambda w: header(OPS["commit"], 1 << 40),
        lambda w: frame("pull", b"x"),
        lambda w: frame("hello", w.hello_payload(b"k" * 32, SHAPES)),
        lambda w: header(77, 0),
        lambda w: b"DKPS\x01",  # a truncated header, then the connection closes
        lambda w: w.commit_frame(np.ones(N, dtype=np.float32).tobytes())[: 40 + 2 * N],  # truncated commit
    ],
    ids=[
        "commit-long",
        "commit-short",
        "oversized",
        "pull-payload",
        "second-hello",
        "unknown-op",
        "cut-header",
        "cut-commit",
    ],
)
def test_malformed_frames_after_auth_change_nothing(
    server: ParameterServer, secret: bytes, make_frame: Callable[[RawWorker], bytes]
) -> None:
    w = authed(server, secret)
    try:
        w.send(make_frame(w))
        w.sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # the server may reset the connection before it has all our bytes: also a refusal
    assert w.closed_by_server()
    assert_unharmed(server, secret)
    assert server.stats()["commits"] == 0


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_commit_is_rejected_and_the_connection_survives(
    server: ParameterServer, secret: bytes, bad: float
) -> None:
    w = authed(server, secret)
    values = np.ones(N, dtype=np.float32)
    values[N - 1] = bad  # in the last chunk: everything before it has been read already
    w.send(w.commit_frame(values.tobytes(), seq=1))
    kind, message = error_of(*read_frame(w.sock))
    assert kind == "rejected" and "NaN or infinity" in message
    assert_unharmed(server, secret)
    w.send(w.commit_frame(np.ones(N, dtype=np.float32).tobytes(), seq=2))
    clock, staleness, control, rate = committed_of(*read_frame(w.sock))
    assert (clock, staleness, control) == (1, 0, 0) and np.isnan(rate)
    assert np.all(server.centre.to_numpy() == 2.0)


def test_a_commit_with_logs_is_read_whole_and_its_reply_carries_the_control_block(
    server: ParameterServer, secret: bytes
) -> None:
    w = authed(server, secret)
    ones = np.ones(N, dtype=np.float32).tobytes()
    server.set_control(stop=True, learning_rate=0.5)
    w.send(w.commit_frame(ones, seq=1, samples=8, epoch=2, logs=(0.25, 4.0, 1.0)))
    assert committed_of(*read_frame(w.sock)) == (1, 0, 1, 0.5)
    # A refused commit (a duplicate) records nothing of its logs.
    w.send(w.commit_frame(ones, seq=1, samples=16, epoch=2, logs=(100.0,)))
    assert error_of(*read_frame(w.sock))[0] == "rejected"
    assert server.epochs() == {2: {"samples": 8, "means": [0.25, 4.0, 1.0]}}
    assert server.stats()["workers"][0]["epoch"] == 2


@pytest.mark.parametrize(
    ("n_logs", "length"),
    [
        (_core.MAX_LOGS + 1, 40 + 4 * (_core.MAX_LOGS + 1)),
        (1, 40 + 4 * N),  # the logs take 4 of the vector's bytes
        (3, 44),  # shorter than its logs
    ],
    ids=["too-many-logs", "vector-short-by-the-logs", "cut-logs"],
)
def test_malformed_logs_are_a_protocol_error(
    server: ParameterServer, secret: bytes, n_logs: int, length: int
) -> None:
    w = authed(server, secret)
    # Only the head: it is refused before the server reads on, so no unread bytes reset the socket.
    w.send(header(OPS["commit"], length) + commit_head(n_logs=n_logs))
    kind, _ = error_of(*read_frame(w.sock))
    assert kind == "protocol"
    assert w.closed_by_server()
    assert_unharmed(server, secret)
    assert server.stats()["commits"] == 0 and server.epochs() == {}


def test_duplicate_sequence_numbers_are_applied_once(server: ParameterServer, secret: bytes) -> None:
    w = authed(server, secret, worker_id=4)
    ones = np.ones(N, dtype=np.float32).tobytes()
    w.send(w.commit_frame(ones, worker_id=4, seq=7))
    assert read_frame(w.sock)[0] == OPS["committed"]
    for seq in (7, 3):
        w.send(w.commit_frame(ones, worker_id=4, seq=seq))
        kind, message = error_of(*read_frame(w.sock))
        assert kind == "rejected" and "duplicate" in message
    assert np.all(server.centre.to_numpy() == 2.0)
    # The same worker on a new connection cannot replay it either.
    again = authed(server, secret, worker_id=4)
    again.send(again.commit_frame(ones, worker_id=4, seq=7))
    assert error_of(*read_frame(again.sock))[0] == "rejected"
    assert server.stats()["rejected"] == 3


def test_commit_for_another_worker_or_from_the_future_is_rejected(
    server: ParameterServer, secret: bytes
) -> None:
    w = authed(server, secret, worker_id=1)
    ones = np.ones(N, dtype=np.float32).tobytes()
    w.send(w.commit_frame(ones, worker_id=2, seq=1))
    assert "worker 2" in error_of(*read_frame(w.sock))[1]
    w.send(w.commit_frame(ones, worker_id=1, seq=2, clock=50))
    assert "clock 50" in error_of(*read_frame(w.sock))[1]
    assert_unharmed(server, secret)


def test_silent_connection_is_dropped_after_the_handshake_timeout(secret: bytes) -> None:
    from distkeras_plus import Centre

    centre = Centre(np.ones(N, dtype=np.float32))
    with ParameterServer(centre, Layout.flat(N), secret, handshake_timeout=0.3) as server:
        w = RawWorker(server.port)
        w.sock.settimeout(5)
        assert w.closed_by_server()  # never said hello: dropped
        assert_unharmed(server, secret)


def test_slow_sender_does_not_block_other_workers(server: ParameterServer, secret: bytes) -> None:
    slow = authed(server, secret, worker_id=1)
    frame_bytes = slow.commit_frame(np.full(N, 5.0, dtype=np.float32).tobytes(), worker_id=1)
    slow.send(frame_bytes[:100])  # half a commit, then silence
    with Client(address(server), secret, Layout.flat(N), worker_id=2) as fast:
        for _ in range(5):
            fast.commit(np.ones(N, dtype=np.float32))
    assert np.all(server.centre.to_numpy() == 6.0)
    slow.send(frame_bytes[100:])  # the rest arrives: applied whole
    assert read_frame(slow.sock)[0] == OPS["committed"]
    assert np.all(server.centre.to_numpy() == 11.0)


def test_slow_strangers_neither_outstay_the_deadline_nor_keep_a_worker_out(secret: bytes) -> None:
    from distkeras_plus import Centre

    centre = Centre(np.ones(N, dtype=np.float32))
    with ParameterServer(centre, Layout.flat(N), secret, handshake_timeout=3.0) as server:
        strangers = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(200)]
        hello_start = header(OPS["hello"], 108)
        closed: set[int] = set()

        def dribble(rounds: int) -> None:
            """One byte a second on every stranger that is still open, a valid hello's start."""
            for i in range(rounds):
                for k, s in enumerate(strangers):
                    if k not in closed:
                        try:
                            s.sendall(hello_start[i : i + 1])
                        except OSError:
                            closed.add(k)
                time.sleep(1.0)

        dribble(2)
        started = time.perf_counter()
        with Client(address(server), secret, Layout.flat(N), worker_id=1) as worker:
            out = np.zeros(N, dtype=np.float32)
            worker.pull(out)
        took = time.perf_counter() - started
        assert took < 1.0 and np.all(out == 1.0)
        dribble(4)  # past the deadline: every stranger is closed, however steadily it sends
        stats = server.stats()
        # 136 closed to make room (64 may wait at once), the 64 others at the deadline.
        assert len(closed) == 200 and stats["timeouts"] == 200, stats
        assert stats["auth_failures"] == 0 and stats["protocol_errors"] == 0
        for s in strangers:
            s.close()
