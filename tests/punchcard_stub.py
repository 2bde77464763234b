"""A stand-in for `python -m distkeras_plus train` that keeps to its command-line contract in
tenths of a second: the daemon's queue, restarts, cancels and load are tested with it, and
`test_punchcard_slow.py` runs the real training.

The spec's seed picks a behaviour: 0 trains for `epochs` tenths of a second and succeeds;
1 fails with a one-line error; 2 starts grandchildren (one in a process group of its own, as
PySpark's daemon does) and runs until it is killed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    assert argv[:4] == ["-P", "-m", "distkeras_plus", "train"], argv
    options: dict[str, str] = {}
    opts: list[str] = []
    for arg in argv[4:]:
        if arg == "--overwrite":  # the one flag: the job's own output file
            continue
        assert arg.startswith("--") and "=" in arg, f"not --key=value: {arg!r}"
        key, _, value = arg[2:].partition("=")
        if key == "opt":
            opts.append(value)
        else:
            assert key not in options, f"--{key} given twice"
            options[key] = value
    Path("argv.json").write_text(json.dumps(argv))
    Path("env.json").write_text(json.dumps({k: v for k, v in os.environ.items() if k.startswith("DK_")}))
    print("stub: training", flush=True)
    print("stub: on stderr", file=sys.stderr, flush=True)
    seed = int(options["seed"])
    if seed == 1:
        print("Error: the stub was asked to fail", file=sys.stderr, flush=True)
        return 3
    if seed == 2:
        children = [
            subprocess.Popen(["sleep", "600"]),
            subprocess.Popen(["sleep", "600"], process_group=0),  # like PySpark's daemon
        ]
        Path("children.json").write_text(json.dumps([os.getpid(), *(c.pid for c in children)]))
    ticks = 10**6 if seed == 2 else int(options["epochs"])
    progress = Path(options["progress-file"])
    for tick in range(ticks):
        with progress.open("a") as f:
            f.write(
                json.dumps(
                    {"seconds": tick / 10, "commits": tick, "samples": 32 * tick, "loss": 1 / (tick + 1)}
                )
            )
            f.write("\n")
        time.sleep(0.1)
    shutil.copyfile(options["model"], options["output"])
    history = [{"worker": 0, "epoch": e, "loss": 1 / (e + 1)} for e in range(int(options["epochs"]))]
    Path(options["history-file"]).write_text(json.dumps(history))
    report = {
        "plugin": options["plugin"],
        "options": dict(o.split("=", 1) for o in opts),
        "workers": int(options["workers"]),
        "epochs": int(options["epochs"]),
        "samples": 32 * ticks,
        "seconds": ticks / 10,
        "test_accuracy": 0.75,
        "test_loss": 0.5,
        "commits": ticks,
        "bytes_sent": 1,
        "bytes_received": 2,
        "model_path": str(Path(options["output"]).resolve()),
    }
    print(json.dumps(report), flush=True)
    print("stub: done", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
