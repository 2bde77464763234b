"""Several OS processes, each with several threads, commit integer-valued deltas at once over
loopback; the centre must hold the exact sum (no lost or torn update)."""

from __future__ import annotations

import multiprocessing as mp
import threading

import numpy as np

from distkeras_plus import Centre, Client, Layout, ParameterServer

N = 300_007  # several shards, and not a multiple of the shard size
PROCESSES = 3
THREADS = 3
COMMITS = 15


def delta_of(worker: int) -> np.ndarray:
    return ((np.arange(N) + worker) % 7).astype(np.float32)


def worker_process(port: int, secret: bytes, first_worker: int) -> None:
    errors: list[BaseException] = []

    def run(worker: int) -> None:
        try:
            with Client(f"127.0.0.1:{port}", secret, Layout.flat(N), worker) as c:
                buf = np.empty(N, dtype=np.float32)
                delta = delta_of(worker)
                for _ in range(COMMITS):
                    c.pull(buf)
                    c.commit(delta)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(first_worker + t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def test_processes_and_threads_sum_exactly(secret: bytes) -> None:
    centre = Centre(np.zeros(N, dtype=np.float32), "add")
    with ParameterServer(centre, Layout.flat(N), secret) as server:
        ctx = mp.get_context("spawn")
        procs = [
            ctx.Process(target=worker_process, args=(server.port, secret, p * THREADS))
            for p in range(PROCESSES)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=120)
            assert p.exitcode == 0
        stats = server.stats()
    workers = PROCESSES * THREADS
    expected = COMMITS * sum(delta_of(w).astype(np.int64) for w in range(workers))
    result = centre.to_numpy()
    assert np.array_equal(result.astype(np.int64), expected)
    assert centre.clock == stats["commits"] == workers * COMMITS
    assert len(stats["workers"]) == workers
