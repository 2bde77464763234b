"""The wire protocol written out by hand with `struct` and `hmac`, to send the server exactly the
bytes a test wants (good or hostile). It follows docs/protocol.md, independently of the Rust client."""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import struct

MAGIC = b"DKPS"
VERSION = 4
OPS = {
    "challenge": 1,
    "hello": 2,
    "welcome": 3,
    "error": 4,
    "pull": 5,
    "centre": 6,
    "commit": 7,
    "committed": 8,
    "stats": 9,
    "stats_reply": 10,
    "bye": 11,
}
#: Hello codec bytes: commit codec id, pull codec id, two zero bytes, f32 parameter.
CODEC_NONE = bytes(8)


def codecs(commit_id: int, param: float = 0.0, pull_id: int = 0) -> bytes:
    return struct.pack("<BBHf", commit_id, pull_id, 0, param)


ERROR_CODES = {1: "authentication", 2: "layout", 3: "protocol", 4: "rejected", 5: "closed"}
#: The u64 fields of a stats reply, in order.
STATS_REPLY = (
    "clock",
    "commits",
    "rejected",
    "pulls",
    "bytes_in",
    "bytes_out",
    "commit_bytes",
    "connections",
    "auth_failures",
    "protocol_errors",
    "timeouts",
    "workers_connected",
)


#: Commit head: worker_id, flags, seq, last_pull_clock, samples, epoch, n_logs, zero; then the logs.
COMMIT_HEAD = "<IIQQQIHH"
#: Committed reply head: clock, staleness, control bits (1: stop), learning rate (NaN: none).
COMMITTED_HEAD = "<QQIf"


def commit_head(
    worker_id: int = 0,
    flags: int = 0,
    seq: int = 1,
    clock: int = 0,
    samples: int = 0,
    epoch: int = 0,
    logs: tuple[float, ...] = (),
    n_logs: int | None = None,
) -> bytes:
    """A commit's head and logs (`n_logs` overrides the count the head declares)."""
    count = len(logs) if n_logs is None else n_logs
    head = struct.pack(COMMIT_HEAD, worker_id, flags, seq, clock, samples, epoch, count, 0)
    return head + struct.pack(f"<{len(logs)}f", *logs)


def committed_of(op: int, payload: bytes) -> tuple[int, int, int, float]:
    """(clock, staleness, control bits, learning rate) of a committed reply."""
    assert op == OPS["committed"], f"expected a committed reply, got op {op}"
    return struct.unpack_from(COMMITTED_HEAD, payload)


def stats_of(op: int, payload: bytes) -> dict[str, int]:
    assert op == OPS["stats_reply"], f"expected a stats reply, got op {op}"
    assert len(payload) == 8 * len(STATS_REPLY), len(payload)
    return dict(zip(STATS_REPLY, struct.unpack(f"<{len(STATS_REPLY)}Q", payload), strict=True))


def header(op: int, length: int, version: int = VERSION, magic: bytes = MAGIC, reserved: int = 0) -> bytes:
    return magic + struct.pack("<BBHQ", version, op, reserved, length)


def frame(op: str, payload: bytes = b"") -> bytes:
    return header(OPS[op], len(payload)) + payload


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def read_frame(sock: socket.socket) -> tuple[int, bytes]:
    head = recv_exact(sock, 16)
    assert head[:4] == MAGIC, head
    op, length = head[5], struct.unpack("<Q", head[8:])[0]
    return op, recv_exact(sock, length)


def error_of(op: int, payload: bytes) -> tuple[str, str]:
    assert op == OPS["error"], f"expected an error frame, got op {op}"
    return ERROR_CODES[struct.unpack("<H", payload[:2])[0]], payload[2:].decode()


def layout_hash(shapes: list[list[int]]) -> bytes:
    h = hashlib.sha256(b"distkeras-plus layout v1 float32")
    h.update(struct.pack("<Q", len(shapes)))
    for shape in shapes:
        h.update(struct.pack("<Q", len(shape)))
        for d in shape:
            h.update(struct.pack("<Q", d))
    return h.digest()


class RawWorker:
    """A worker speaking the protocol from Python, one frame at a time."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        op, payload = read_frame(self.sock)
        assert op == OPS["challenge"] and len(payload) == 32
        self.server_nonce = payload

    def hello_payload(
        self,
        secret: bytes,
        shapes: list[list[int]],
        worker_id: int = 0,
        attempt: int = 0,
        codecs: bytes = CODEC_NONE,
    ) -> bytes:
        client_nonce = os.urandom(32)
        lh = layout_hash(shapes)
        ids = struct.pack("<II", worker_id, attempt)
        signed = b"distkeras-plus hello v1" + self.server_nonce + ids + client_nonce + lh + codecs
        mac = hmac.new(secret, signed, hashlib.sha256).digest()
        self.client_nonce = client_nonce
        return ids + client_nonce + lh + codecs + mac

    def hello(
        self,
        secret: bytes,
        shapes: list[list[int]],
        worker_id: int = 0,
        attempt: int = 0,
        codecs: bytes = CODEC_NONE,
    ) -> tuple[int, bytes]:
        self.sock.sendall(frame("hello", self.hello_payload(secret, shapes, worker_id, attempt, codecs)))
        op, payload = read_frame(self.sock)
        if op == OPS["welcome"]:
            expected = hmac.new(
                secret, b"distkeras-plus welcome v1" + self.client_nonce + self.server_nonce, hashlib.sha256
            ).digest()
            assert hmac.compare_digest(payload[:32], expected), "server failed to prove the secret"
        return op, payload

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def commit_frame(
        self,
        values: bytes,
        worker_id: int = 0,
        seq: int = 1,
        clock: int = 0,
        samples: int = 0,
        epoch: int = 0,
        logs: tuple[float, ...] = (),
    ) -> bytes:
        return frame("commit", commit_head(worker_id, 0, seq, clock, samples, epoch, logs) + values)

    def closed_by_server(self) -> bool:
        """Reads until the server closes (EOF or reset); raises TimeoutError if it never does."""
        try:
            while self.sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
        return True

    def close(self) -> None:
        self.sock.close()
