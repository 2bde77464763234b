"""End-to-end cases run by `nox -s slow` (CI runs them too)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from distkeras_plus import Centre, Client, Layout, ParameterServer

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def test_bench_ps_runs_end_to_end() -> None:
    dk = str(Path(sys.executable).parent / "dk")
    result = subprocess.run(
        [dk, "bench", "ps", "--quick", "--sizes", "200000", "--clients", "1,2", "--output-format", "json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    report = json.loads(result.stdout)
    assert report["machine"]["cores"] >= 1
    [apply] = report["apply"]
    assert apply["params"] == 200_000 and apply["numpy_gb_s"] > 0 and apply["rust_gb_s"] > 0
    trips = report["round_trips"]
    assert [t["clients"] for t in trips] == [1, 2]
    for t in trips:
        assert t["rust_gb_s"] > 0 and t["socket_gb_s"] > 0 and t["original_gb_s"] > 0
        assert t["vs_socket"] == pytest.approx(t["rust_gb_s"] / t["socket_gb_s"])


def test_many_workers_many_sync_rounds(secret: bytes) -> None:
    # 16 workers average their weights for 20 rounds over 1M parameters.
    n, workers, rounds = 1_000_000, 16, 20
    centre = Centre(np.zeros(n, np.float32), "sync", {"workers": workers, "scale": 1 / workers})
    finals: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []
    with ParameterServer(centre, Layout.flat(n), secret) as server:

        def worker(w: int) -> None:
            try:
                with Client(f"127.0.0.1:{server.port}", secret, Layout.flat(n), w) as c:
                    current = np.zeros(n, np.float32)
                    out = np.zeros(n, np.float32)
                    for r in range(rounds):
                        mine = np.full(n, float(w + r), np.float32)
                        c.commit(mine - current, out=out)
                        current = out.copy()
                    finals[w] = current
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(w,)) for w in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        stats = server.stats()
    assert not errors, errors
    expected = np.mean([w + rounds - 1 for w in range(workers)])
    for w in range(workers):
        np.testing.assert_allclose(finals[w], expected, rtol=1e-5)
    assert stats["clock"] == rounds and stats["commits"] == workers * rounds


def test_dk_train_json_on_synthetic_data(tmp_path: Path) -> None:
    dk = str(Path(sys.executable).parent / "dk")
    run = subprocess.run(
        [dk, "train", "--plugin", "dynsgd", "--dataset", "synthetic:3000", "--epochs", "3", "--codec", "int8",
         "--output", str(tmp_path / "m.keras"), "--output-format", "json"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout)
    assert report["samples"] == 3 * 2400 and report["codec"] == "int8" and report["workers"] == 2
    assert 0 < report["commit_bytes"] <= report["bytes_received"]
    assert report["test_accuracy"] > 0.3 and (tmp_path / "m.keras").is_file()  # 4 classes: chance is 0.25
