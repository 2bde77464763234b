"""A parameter server written the way the original dist-keras (2016-2018) wrote it.

Kept only as a benchmark baseline, on loopback, with data we generate. It reproduces the
original's design on purpose: one Python thread per connection, one lock around the centre
variable, a one-byte action code, and pickle over the socket with a 20-digit ASCII length
prefix and a receive loop that concatenates bytes. NEVER use this pattern for real traffic:
unpickling network data runs arbitrary code.
"""

from __future__ import annotations

import copy
import pickle
import socket
import threading
from typing import Any

import numpy as np


def recvall(connection: socket.socket, num_bytes: int) -> bytes:
    byte_buffer = b""
    buffer_size = 0
    bytes_left = num_bytes
    while buffer_size < num_bytes:
        data = connection.recv(bytes_left)
        if not data:
            raise ConnectionError("peer closed the connection")
        delta = len(data)
        buffer_size += delta
        bytes_left -= delta
        byte_buffer += data
    return byte_buffer


def recv_data(connection: socket.socket) -> Any:
    length = int(recvall(connection, 20).decode())
    data = recvall(connection, length)
    # The original design, reproduced as a baseline; unpickling network data is unsafe.
    return pickle.loads(data)


def send_data(connection: socket.socket, data: Any) -> None:
    serialized_data = pickle.dumps(data, -1)
    length = len(serialized_data)
    connection.sendall(str(length).zfill(20).encode())
    connection.sendall(serialized_data)


class DeltaParameterServer:
    """The original's SocketParameterServer + DeltaParameterServer, minus Keras."""

    def __init__(self, weights: list[np.ndarray], port: int = 0) -> None:
        self.center_variable = [w.copy() for w in weights]
        self.mutex = threading.Lock()
        self.running = False
        self.server_socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.server_socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server_socket.bind(("127.0.0.1", port))
        self.server_socket.listen(64)
        self.port = self.server_socket.getsockname()[1]
        self.connections: list[threading.Thread] = []
        self.num_updates = 0

    def handle_commit(self, conn: socket.socket) -> None:
        data = recv_data(conn)
        delta = data["delta"]
        with self.mutex:
            self.center_variable = [c + d for c, d in zip(self.center_variable, delta, strict=True)]
            self.num_updates += 1

    def handle_pull(self, conn: socket.socket) -> None:
        with self.mutex:
            cv = copy.deepcopy(self.center_variable)
        send_data(conn, cv)

    def handle_connection(self, conn: socket.socket) -> None:
        while self.running:
            try:
                action = conn.recv(1).decode()
            except OSError:
                break
            if action == "c":
                self.handle_commit(conn)
            elif action == "p":
                self.handle_pull(conn)
            else:
                break
        conn.close()

    def start(self) -> None:
        self.running = True
        self.acceptor = threading.Thread(target=self.run, daemon=True)
        self.acceptor.start()

    def run(self) -> None:
        while self.running:
            try:
                conn, _ = self.server_socket.accept()
            except OSError:
                break
            if not self.running:
                conn.close()
                break
            thread = threading.Thread(target=self.handle_connection, args=(conn,), daemon=True)
            thread.start()
            self.connections.append(thread)

    def stop(self) -> None:
        self.running = False
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            pass
        self.acceptor.join()
        self.server_socket.close()
        for thread in self.connections:
            thread.join(timeout=5)


class OriginalClient:
    """The worker side of the original: connect, pull (`p`), commit (`c`)."""

    def __init__(self, port: int, worker_id: int) -> None:
        self.socket = socket.create_connection(("127.0.0.1", port))
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.worker_id = worker_id

    def pull(self) -> list[np.ndarray]:
        self.socket.sendall(b"p")
        return recv_data(self.socket)  # type: ignore[no-any-return]

    def commit(self, delta: list[np.ndarray]) -> None:
        self.socket.sendall(b"c")
        send_data(self.socket, {"delta": delta, "worker_id": self.worker_id})

    def close(self) -> None:
        self.socket.close()
