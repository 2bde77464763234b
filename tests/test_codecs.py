"""Compressed commits and pulls: savings on the wire, error feedback, hostile payloads, refusals."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from helpers import address
from wire import OPS, VERSION, RawWorker, codecs, commit_head, error_of, read_frame

from distkeras_plus import (
    Centre,
    Client,
    Codec,
    CommitRejectedError,
    Layout,
    ParameterServer,
    ProtocolError,
    _core,
)

N = 4096


@pytest.fixture
def zero_server(secret: bytes):  # type: ignore[no-untyped-def]
    with ParameterServer(Centre(np.zeros(N, np.float32)), Layout.flat(N), secret) as s:
        yield s


def delta(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(N).astype(np.float32)


@pytest.mark.parametrize(
    ("codec", "max_fraction", "tolerance"),
    [
        ("none", 1.0, 0.0),
        ("fp16", 0.5, 1e-3),
        ("bf16", 0.5, 1e-2),
        ("int8", 0.26, 2e-2),
        ("topk:0.01", 0.02, None),
    ],
)
def test_commit_bytes_and_precision(
    zero_server: ParameterServer, secret: bytes, codec: str, max_fraction: float, tolerance: float | None
) -> None:
    d = delta()
    with Client(address(zero_server), secret, Layout.flat(N), 0, codec=codec) as c:
        before = c.bytes_out
        c.commit(d)
        sent = c.bytes_out - before
    assert zero_server.stats()["commit_bytes"] == sent  # counted apart from other inbound traffic
    assert sent <= max_fraction * 4 * N + 16 + 40
    centre = zero_server.centre.to_numpy()
    if tolerance is not None:
        np.testing.assert_allclose(centre, d, atol=tolerance * float(np.abs(d).max()) + 1e-7)
    else:
        kept = np.flatnonzero(centre)
        assert len(kept) == int(np.ceil(0.01 * N))
        assert np.abs(d[kept]).min() >= np.sort(np.abs(d))[-len(kept)]  # the largest ones
        np.testing.assert_array_equal(centre[kept], d[kept])


def test_error_feedback_sends_everything_eventually(zero_server: ParameterServer, secret: bytes) -> None:
    # topk:0.01 keeps 41 of 4096 values per commit; the rest is carried over and grows until it
    # is among the largest. With the same delta everywhere, every value is sent in turn and none
    # is ever more than one full cycle (N / 41 commits) behind.
    d = np.ones(N, np.float32)
    commits, kept = 300, int(np.ceil(0.01 * N))
    with Client(address(zero_server), secret, Layout.flat(N), 0, codec="topk:0.01") as c:
        for _ in range(commits):
            c.commit(d)
        behind = commits * d - zero_server.centre.to_numpy()
        assert np.all(behind >= 0) and np.all(behind <= np.ceil(N / kept) + 1)
        # At the end the worker flushes what it still owes, densely: nothing is lost.
        assert c.flush() == (commits + 1, commits)  # (clock, staleness: it never pulled)
        assert c.flush() is None
    np.testing.assert_allclose(zero_server.centre.to_numpy(), commits * d, rtol=1e-6)


def test_compressed_pulls(zero_server: ParameterServer, secret: bytes) -> None:
    d = delta(2)
    zero_server.centre.commit(d)
    for codec, tolerance in (("fp16", 1e-3), ("bf16", 1e-2)):
        with Client(address(zero_server), secret, Layout.flat(N), 1, pull_codec=codec) as c:
            before = c.bytes_in
            out = np.zeros(N, np.float32)
            c.pull(out)
            assert c.bytes_in - before == 16 + 8 + 2 * N
            np.testing.assert_allclose(out, d, rtol=tolerance, atol=1e-6)


def test_a_server_refuses_codecs_it_does_not_accept(secret: bytes) -> None:
    with ParameterServer(
        Centre(np.zeros(N, np.float32)), Layout.flat(N), secret, codecs=["none", "fp16"]
    ) as s:
        with pytest.raises(ProtocolError, match=r"does not accept codec topk:0\.01; it accepts: none, fp16"):
            Client(address(s), secret, Layout.flat(N), 0, codec="topk:0.01")
        Client(address(s), secret, Layout.flat(N), 0, codec="fp16").close()
    with pytest.raises(ValueError, match="unknown codec"):
        Client("127.0.0.1:1", secret, Layout.flat(N), 0, codec="zip")
    with ParameterServer(
        Centre(np.zeros(N, np.float32), "elastic", {"alpha": 0.5}), Layout.flat(N), secret
    ) as s:
        with pytest.raises(ProtocolError, match="elastic commits carry weights"):
            Client(address(s), secret, Layout.flat(N), 0, codec="int8")


@pytest.mark.parametrize(
    ("commit_id", "param", "pull_id"), [(4, 2.0, 0), (4, 0.0, 0), (9, 0.0, 0), (0, 0.0, 4)]
)
def test_a_codec_the_hello_cannot_name_is_refused_as_a_protocol_error(
    zero_server: ParameterServer, secret: bytes, commit_id: int, param: float, pull_id: int
) -> None:
    w = RawWorker(zero_server.port)
    kind, message = error_of(*w.hello(secret, [[N]], codecs=codecs(commit_id, param, pull_id)))
    assert kind == "protocol" and "codec" in message  # as docs/protocol.md says codec refusals are


def topk_payload(indices: list[int], values: list[float], count: int | None = None) -> bytes:
    out = bytearray(struct.pack("<I", len(indices) if count is None else count))
    previous = 0
    for i in indices:
        gap = i - previous
        while gap >= 0x80:
            out.append((gap & 0x7F) | 0x80)
            gap >>= 7
        out.append(gap)
        previous = i + 1
    out += struct.pack(f"<{len(values)}f", *values)
    return bytes(out)


@pytest.mark.parametrize(
    ("codec_id", "param", "payload", "why"),
    [
        (4, 0.01, topk_payload([N + 5], [1.0]), "beyond"),
        (4, 0.01, topk_payload([1, 2], [1.0, 2.0], count=1000), "at most"),
        (4, 0.01, topk_payload([1, 2], [1.0, float("nan")]), "NaN"),
        (4, 0.01, topk_payload([1, 2], [1.0, 2.0])[:-2], "do not match"),
        (3, 0.0, struct.pack("<f", float("nan")) + bytes(N // 256 * 4 - 4) + bytes(N), "scale"),
        (3, 0.0, bytes(N // 256 * 4 + N - 1), "does not fit"),
        (1, 0.0, b"\x00\x7c" * N, "NaN"),  # fp16 infinity
    ],
    ids=["index-beyond", "count-beyond", "nan-value", "truncated", "nan-scale", "short-block", "fp16-inf"],
)
def test_malformed_compressed_commits_change_nothing(
    zero_server: ParameterServer, secret: bytes, codec_id: int, param: float, payload: bytes, why: str
) -> None:
    w = RawWorker(zero_server.port)
    op, _ = w.hello(secret, [[N]], codecs=codecs(codec_id, param))
    assert op == OPS["welcome"]
    w.send(w.commit_frame(payload, seq=1))
    kind, message = error_of(*read_frame(w.sock))
    assert kind == "rejected" and why in message, message
    assert np.all(zero_server.centre.to_numpy() == 0.0)
    # The connection is still in step: a good commit goes through.
    w.send(
        w.commit_frame(
            topk_payload([3], [2.5])
            if codec_id == 4
            else Codec("fp16" if codec_id == 1 else "int8").encode(np.ones(N, np.float32)),
            seq=2,
        )
    )
    assert read_frame(w.sock)[0] == OPS["committed"]


def test_unknown_commit_flags_close_the_connection(zero_server: ParameterServer, secret: bytes) -> None:
    w = RawWorker(zero_server.port)
    assert w.hello(secret, [[N]], codecs=codecs(1))[0] == OPS["welcome"]
    body = commit_head(flags=2) + bytes(2 * N)
    w.send(struct.pack("<4sBBHQ", b"DKPS", VERSION, OPS["commit"], 0, len(body)) + body)
    assert "flags" in error_of(*read_frame(w.sock))[1]
    assert w.closed_by_server()
    assert np.all(zero_server.centre.to_numpy() == 0.0)


def test_codec_objects() -> None:
    values = delta(3)
    for name in ("none", "fp16", "bf16", "int8", "int8:stochastic", "topk:0.1"):
        codec = Codec(name)
        data = codec.encode(values, seed=1)
        assert len(data) <= codec.max_encoded_len(N)
        out = np.empty(N, np.float32)
        codec.decode(data, out)
        assert codec.lossy == (name != "none")
        assert np.isfinite(out).all()
    with pytest.raises(CommitRejectedError):
        Codec("int8").decode(b"\x00" * 10, np.empty(N, np.float32))


def connects(
    server: ParameterServer, secret: bytes, worker: int, codec: str = "none", pull_codec: str = "none"
) -> bool:
    try:
        Client(address(server), secret, Layout.flat(N), worker, codec=codec, pull_codec=pull_codec).close()
    except (ProtocolError, CommitRejectedError):  # a hello has no ratio for a pull codec: topk is rejected
        return False
    return True


def test_codec_vocabulary_comes_from_the_core(secret: bytes) -> None:
    assert _core.CODECS == ("none", "fp16", "bf16", "int8", "topk")
    assert _core.PULL_CODECS == ("none", "fp16", "bf16")
    assert _core.ELASTIC_CODECS == ("none", "fp16", "bf16")
    assert _core.CODEC_SYNTAX == "none, fp16, bf16, int8, int8:stochastic, topk:RATIO (0 < RATIO <= 1)"
    for name in ("none", "fp16", "bf16", "int8", "int8:stochastic", "topk:0.1"):
        codec = Codec(name)
        assert codec.kind == name.split(":")[0] and codec.kind in _core.CODECS
        assert codec.pull_capable == (codec.kind in _core.PULL_CODECS)
        assert codec.elastic_capable == (codec.kind in _core.ELASTIC_CODECS)
    # What the server lets pulls and elastic commits use is what the lists say.
    specs = {"none": "none", "fp16": "fp16", "bf16": "bf16", "int8": "int8", "topk": "topk:0.5"}
    elastic_centre = Centre(np.zeros(N, np.float32), "elastic", {"alpha": 0.5})
    with (
        ParameterServer(Centre(np.zeros(N, np.float32)), Layout.flat(N), secret) as plain,
        ParameterServer(elastic_centre, Layout.flat(N), secret) as elastic,
    ):
        for worker, (kind, spec) in enumerate(specs.items()):
            assert connects(plain, secret, worker, pull_codec=spec) == (kind in _core.PULL_CODECS), kind
            assert connects(elastic, secret, worker, codec=spec) == (kind in _core.ELASTIC_CODECS), kind
    with pytest.raises(_core.InvalidArgumentError, match="codec families: none, fp16, bf16, int8, topk"):
        ParameterServer(Centre(np.zeros(N, np.float32)), Layout.flat(N), secret, codecs=["zip"])
    with pytest.raises(_core.InvalidArgumentError, match="unknown codec"):
        Codec("zip")
