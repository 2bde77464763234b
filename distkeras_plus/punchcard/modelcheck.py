"""Checking an uploaded model before a job is accepted.

First, cheaply in the daemon: the file is a zip archive with a `config.json` and unpacks to a
bounded size (no zip bombs). Then Keras loads it in safe mode (no Lambda code, no pickles) in a
long-lived child process: the daemon never imports TensorFlow or loads untrusted models itself,
and the child pays TensorFlow's start-up once rather than once per submission.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import subprocess
import sys
import threading
import time
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import IO, Any

from distkeras_plus.errors import ModelError

# Keras nests a config about 3 levels per nested model (a Sequential inside a Functional inside
# a Sequential is 13 deep): 100 leaves room for any real model and keeps hostile ones cheap.
MAX_CONFIG_DEPTH = 100


def check_archive(path: Path, max_unpacked: int) -> None:
    if not zipfile.is_zipfile(path):
        raise ModelError("the model is not a .keras file (a zip archive saved by Keras 3)")
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            if len(infos) > 10_000:
                raise ModelError("the model archive holds too many files")
            if sum(i.file_size for i in infos) > max_unpacked:
                raise ModelError(f"the model unpacks to more than {max_unpacked // 2**20} MiB")
            names = {i.filename for i in infos}
            if "config.json" not in names:
                raise ModelError("the model archive has no config.json: save it with model.save('m.keras')")
            if z.getinfo("config.json").file_size > 64 * 2**20:
                raise ModelError("the model's config.json is too large")
            config = json.loads(z.read("config.json"))
    except (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError, EOFError) as e:
        raise ModelError(f"the model archive is damaged: {e}") from None
    except RecursionError:  # Python's parser gives up near sys.getrecursionlimit() levels
        raise ModelError(_too_deep()) from None
    if not isinstance(config, dict):
        raise ModelError("the model's config.json is not a Keras model config")
    if _depth(config) > MAX_CONFIG_DEPTH:
        raise ModelError(_too_deep())


def _too_deep() -> str:
    return f"the model's config.json is nested more than {MAX_CONFIG_DEPTH} levels deep"


def _depth(value: Any) -> int:
    """How deep objects and arrays nest, without recursion (Keras' loader would recurse)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict | list):
            deepest = max(deepest, depth)
            stack += [(x, depth + 1) for x in (v.values() if isinstance(v, dict) else v)]
    return deepest


class ModelChecker:
    """Loads models with `keras.saving.load_model(path, safe_mode=True, compile=False)` in a child.

    One check at a time; a check that takes longer than `timeout` seconds (start-up included)
    kills the child, and the next check starts a new one."""

    def __init__(self, log: Path, timeout: float = 180.0, python: str = sys.executable) -> None:
        self._log, self._timeout, self._python = log, timeout, python
        self._proc: subprocess.Popen[bytes] | None = None
        self._buffer = b""
        self._lock = threading.Lock()
        self._passed: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def check(self, path: Path) -> dict[str, Any]:
        """What the child learnt of the model (parameters, input shape), or ModelError.

        Models that loaded before are known by their SHA-256: a sweep that submits one model
        many times pays for one load."""
        digest = _sha256(path)
        with self._lock:
            if digest in self._passed:
                self._passed.move_to_end(digest)
                return self._passed[digest]
            proc = self._start()
            assert proc.stdin is not None
            deadline = time.monotonic() + self._timeout
            try:
                proc.stdin.write(json.dumps({"path": str(path)}).encode() + b"\n")
                proc.stdin.flush()
                reply = self._read_line(proc, deadline)
            except (OSError, TimeoutError) as e:
                self._kill()
                raise ModelError(f"the model could not be checked ({e}); try again") from None
            answer: dict[str, Any] = json.loads(reply)
        if not answer.get("ok"):
            raise ModelError(f"Keras cannot load the model in safe mode: {answer.get('error')}")
        with self._lock:
            self._passed[digest] = answer
            while len(self._passed) > 1024:
                self._passed.popitem(last=False)
        return answer

    def start(self) -> None:
        """Starts the child now, so that TensorFlow's start-up is not paid by the first submission."""
        with self._lock:
            self._start()

    def close(self) -> None:
        with self._lock:
            self._kill()

    def _start(self) -> subprocess.Popen[bytes]:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        with self._log.open("ab") as log:
            self._proc = subprocess.Popen(  # noqa: S603 - a fixed argument list
                [self._python, "-P", "-m", "distkeras_plus.punchcard.modelcheck"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""},
            )
        self._buffer = b""
        return self._proc

    def _read_line(self, proc: subprocess.Popen[bytes], deadline: float) -> bytes:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer within {self._timeout:.0f} s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise OSError(f"the checker exited with status {proc.wait()}")
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            for stream in (self._proc.stdin, self._proc.stdout):
                if stream is not None:
                    stream.close()
            self._proc = None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _serve(requests: IO[str], replies: IO[str]) -> None:
    import keras

    for line in requests:
        path = json.loads(line)["path"]
        try:
            model = keras.saving.load_model(path, safe_mode=True, compile=False)
            reply = {
                "ok": True,
                "params": int(model.count_params()),
                "input_shape": json.loads(json.dumps(getattr(model, "input_shape", None), default=str)),
            }
        except Exception as e:  # whatever Keras raises is the user's answer, on one line
            reply = {"ok": False, "error": " ".join(f"{type(e).__name__}: {e}".split())[:500]}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()
        keras.backend.clear_session()


def main() -> None:
    # Replies go on a private copy of stdout; fd 1 itself goes to stderr, so nothing that
    # TensorFlow or Keras prints can be mistaken for a reply.
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    _serve(sys.stdin, replies)


if __name__ == "__main__":
    main()
