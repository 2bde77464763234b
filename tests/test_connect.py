"""Training under a real Spark Connect session (no SparkContext, no py4j on the client)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_a_connect_session_trains_as_a_classic_one(tmp_path: Path) -> None:
    script = Path(__file__).parent / "connect_run.py"
    run = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    found = json.loads(run.stdout.strip().splitlines()[-1])
    assert found["connect"] and found["local"] and found["slots"] == 2
    n = 1437  # digits' training rows
    for plugin in ("adag", "averaging", "ensemble"):
        assert found[plugin]["samples"] == 4 * n, found
        assert found[plugin]["accuracy"] > 0.5, found  # the thresholds of the classic tests
    assert len(found["val_accuracy"]) == 2 and found["val_accuracy"][1] > 0.3
    assert found["error"].startswith("no label column 'nope'"), found["error"]
