"""A worker that stops talking is dropped without holding up the others; a synchronous round
that never completes is abandoned instead of hanging."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from helpers import address
from wire import OPS, RawWorker

from distkeras_plus import Centre, Client, CommitRejectedError, Layout, ParameterServer, ServerClosedError

N = 1000


def test_a_silent_worker_is_dropped_and_the_others_go_on(secret: bytes) -> None:
    with ParameterServer(Centre(np.zeros(N, np.float32)), Layout.flat(N), secret, idle_timeout=0.5) as server:
        quiet = Client(address(server), secret, Layout.flat(N), 0)
        stalled = RawWorker(server.port)
        assert stalled.hello(secret, [[N]], worker_id=2)[0] == OPS["welcome"]
        stalled.send(stalled.commit_frame(np.full(N, 9.0, np.float32).tobytes(), worker_id=2)[:200])
        with Client(address(server), secret, Layout.flat(N), 1) as busy:
            for _ in range(10):  # keeps working while the other two are silent
                busy.commit(np.ones(N, np.float32))
                time.sleep(0.1)
        with pytest.raises(ServerClosedError):
            quiet.pull(np.zeros(N, np.float32))
        stalled.sock.settimeout(5)
        assert stalled.closed_by_server()
        assert server.stats()["timeouts"] == 2
        assert np.all(server.centre.to_numpy() == 10.0)  # the stalled half-commit never landed


def test_an_incomplete_sync_round_is_abandoned(secret: bytes) -> None:
    centre = Centre(np.zeros(N, np.float32), "sync", {"workers": 2}, round_timeout=0.3)
    with ParameterServer(centre, Layout.flat(N), secret) as server:
        with Client(address(server), secret, Layout.flat(N), 0) as alone:
            with pytest.raises(CommitRejectedError, match="abandoned"):
                alone.commit(np.ones(N, np.float32), out=np.zeros(N, np.float32))
        assert centre.clock == 0 and np.all(centre.to_numpy() == 0.0)
        # A retried round with both workers completes.
        results: list[tuple[int, int]] = []

        def commit(worker: int) -> None:
            with Client(address(server), secret, Layout.flat(N), worker, attempt=1) as c:
                results.append(c.commit(np.full(N, 2.0, np.float32), out=np.zeros(N, np.float32)))

        threads = [threading.Thread(target=commit, args=(w,)) for w in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == [(1, 0), (1, 0)]
        assert np.all(centre.to_numpy() == 4.0)


def test_timeouts_must_be_positive(secret: bytes) -> None:
    with pytest.raises(ValueError, match="positive"):
        ParameterServer(Centre(np.zeros(N, np.float32)), Layout.flat(N), secret, idle_timeout=0)
    with pytest.raises(ValueError, match="positive"):
        Centre(np.zeros(N, np.float32), "sync", {"workers": 2}, round_timeout=-1)
