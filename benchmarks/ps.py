"""Parameter-server benchmark (`dk bench ps`): every figure next to its baseline, same run.

- apply: the Rust accumulator's commit vs NumPy `center += delta` on the same arrays;
- round trips: pull + commit over loopback by 1..n client processes, vs a plain socket copy of
  the same bytes, and vs a parameter server written the way the original dist-keras did it.
"""

from __future__ import annotations

import multiprocessing as mp
import socket
import statistics
import threading
import time
from typing import Any

import numpy as np

from benchmarks import machine
from benchmarks.baselines.original_ps import DeltaParameterServer, OriginalClient
from distkeras_plus import Centre, Client, Layout, ParameterServer
from distkeras_plus.ps.serve import new_secret

TARGETS = {"apply_vs_numpy": 0.8, "round_trip_vs_socket": 0.5, "round_trip_vs_original": 20.0}


def _timed(fn: Any, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def bench_apply(n: int, reps: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    start = rng.standard_normal(n, dtype=np.float32)
    delta = (rng.standard_normal(n, dtype=np.float32) * 1e-3).astype(np.float32)
    center = start.copy()
    centre = Centre(start.copy(), "add")

    def numpy_apply() -> None:
        np.add(center, delta, out=center)

    def rust_apply() -> None:
        # Scans the delta (NaN, largest magnitude) and applies it; over the network the server
        # scans each chunk as it arrives instead, which the round trips measure.
        centre.commit(delta)

    numpy_t: list[float] = []
    rust_t: list[float] = []
    for _ in range(reps):  # interleaved, so both see the same machine state
        numpy_t += _timed(numpy_apply, 3)
        rust_t += _timed(rust_apply, 3)
    # Same arrays, same number of adds: the results must agree.
    assert np.allclose(centre.to_numpy(), center, atol=1e-3)
    numpy_s, rust_s = (statistics.median(t) for t in (numpy_t, rust_t))
    gb = 4 * n / 1e9
    return {
        "params": n,
        "numpy_gb_s": gb / numpy_s,
        "rust_gb_s": gb / rust_s,
        "ratio": numpy_s / rust_s,
        "target": TARGETS["apply_vs_numpy"],
    }


# ---- round trips: each client is its own process, timed between a barrier and its last reply ----


def _client(
    kind: str, port: int, secret: bytes, n: int, rounds: int, worker: int, barrier: Any, results: Any
) -> None:
    buf = np.zeros(n, dtype=np.float32)
    delta = np.ones(n, dtype=np.float32)
    if kind == "rust":
        client = Client(f"127.0.0.1:{port}", secret, Layout.flat(n), worker)

        def round_trip() -> None:
            client.pull(buf)
            client.commit(delta)

    elif kind == "socket":
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        view = memoryview(buf.data).cast("B")

        def round_trip() -> None:
            sock.sendall(delta.data)
            got = 0
            while got < len(view):
                got += sock.recv_into(view[got:])

    else:
        original = OriginalClient(port, worker)

        def round_trip() -> None:
            original.pull()
            original.commit([delta])

    round_trip()  # warm-up: connection set up, pages touched
    barrier.wait()
    t0 = time.perf_counter()
    for _ in range(rounds):
        round_trip()
    results.put((t0, time.perf_counter()))


class _SocketCopyServer:
    """The baseline: per connection, receive n*4 bytes into a buffer and send them back."""

    def __init__(self, n: int) -> None:
        self.nbytes = 4 * n
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.threads: list[threading.Thread] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self.threads.append(t)

    def _serve(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        view = memoryview(bytearray(self.nbytes))
        with conn:
            while True:
                got = 0
                while got < self.nbytes:
                    k = conn.recv_into(view[got:])
                    if k == 0:
                        return
                    got += k
                conn.sendall(view)

    def stop(self) -> None:
        self.listener.close()
        for t in self.threads:
            t.join(timeout=10)


def _run_clients(kind: str, port: int, secret: bytes, n: int, clients: int, rounds: int) -> float:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(clients)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_client, args=(kind, port, secret, n, rounds, w, barrier, results))
        for w in range(clients)
    ]
    for p in procs:
        p.start()
    spans = [results.get(timeout=900) for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"{kind} client exited with {p.exitcode}")
    wall = max(end for _, end in spans) - min(start for start, _ in spans)
    return float(2 * 4 * n * rounds * clients / wall / 1e9)  # GB/s of weights moved (pulled + committed)


def bench_round_trips(n: int, clients: int, rounds: int, original_rounds: int) -> dict[str, Any]:
    secret = new_secret()
    raw = _SocketCopyServer(n)
    try:
        socket_gb_s = _run_clients("socket", raw.port, secret, n, clients, rounds)
    finally:
        raw.stop()

    centre = Centre(np.zeros(n, dtype=np.float32), "add")
    with ParameterServer(centre, Layout.flat(n), secret) as server:
        rust_gb_s = _run_clients("rust", server.port, secret, n, clients, rounds)
        commits = server.stats()["commits"]
    # Every client committed ones (warm-up included): the centre counts them exactly.
    expected = clients * (rounds + 1)
    assert commits == expected and float(centre.to_numpy()[0]) == expected

    original = DeltaParameterServer([np.zeros(n, dtype=np.float32)])
    original.start()
    try:
        original_gb_s = _run_clients("original", original.port, secret, n, clients, original_rounds)
    finally:
        original.stop()
    return {
        "params": n,
        "clients": clients,
        "rust_gb_s": rust_gb_s,
        "socket_gb_s": socket_gb_s,
        "original_gb_s": original_gb_s,
        "vs_socket": rust_gb_s / socket_gb_s,
        "vs_original": rust_gb_s / original_gb_s,
        # The ceiling for any server that moves the same bytes: a plain socket copy vs the original.
        "socket_vs_original": socket_gb_s / original_gb_s,
        "target_vs_socket": TARGETS["round_trip_vs_socket"],
        "target_vs_original": TARGETS["round_trip_vs_original"],
    }


def run(sizes: list[int], clients: list[int], quick: bool = False) -> dict[str, Any]:
    apply = [bench_apply(n, reps=3 if quick else 10) for n in sizes]
    trips = []
    for n in sizes:
        # About 0.4 GB (quick: 0.04 GB) of weights per client and variant; fewer for the slow baseline.
        rounds = max(2, int((0.05 if quick else 0.4) * 1e9 / (8 * n)))
        original_rounds = max(1, rounds // 25)
        trips += [bench_round_trips(n, c, rounds, original_rounds) for c in clients]
    return {
        "benchmark": "ps",
        "machine": machine.describe(),
        "quick": quick,
        "apply": apply,
        "round_trips": trips,
        "targets_met": all(a["ratio"] >= a["target"] for a in apply)
        and all(
            t["vs_socket"] >= t["target_vs_socket"] and t["vs_original"] >= t["target_vs_original"]
            for t in trips
        ),
    }


def render(results: dict[str, Any]) -> str:
    lines = [f"machine: {results['machine']['cpu']}, {results['machine']['cores']} cores", ""]
    lines.append("apply, scan included (GB/s of deltas)  numpy   rust   ratio  target")
    for a in results["apply"]:
        lines.append(
            f"  {a['params']:>10,} params             {a['numpy_gb_s']:6.2f} {a['rust_gb_s']:6.2f}"
            f"  {a['ratio']:5.2f}x  >={a['target']}x"
        )
    lines.append("")
    lines.append(
        "pull+commit (GB/s)            socket   rust  original  vs socket  vs original  (socket vs original)"
    )
    for t in results["round_trips"]:
        lines.append(
            f"  {t['params']:>10,} x {t['clients']} clients  {t['socket_gb_s']:6.2f} {t['rust_gb_s']:6.2f}"
            f"  {t['original_gb_s']:8.3f}  {t['vs_socket']:6.2f}x    {t['vs_original']:7.1f}x"
            f"      ({t['socket_vs_original']:.1f}x)"
        )
    lines.append("")
    lines.append("all targets met" if results["targets_met"] else "SOME TARGETS MISSED")
    return "\n".join(lines)
