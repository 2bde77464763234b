"""Running a parameter server from Python: run secrets, initial weights, rule parameters."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from distkeras_plus._core import MIN_SECRET_LEN, Centre, Layout, ParameterServer
from distkeras_plus.errors import ModelError, SettingError
from distkeras_plus.ps.weights import FlatWeights
from distkeras_plus.quiet import import_keras

SECRET_BYTES = 32


def new_secret() -> bytes:
    """A fresh per-run secret for the worker handshake."""
    return secrets.token_bytes(SECRET_BYTES)


def read_secret(path: Path) -> bytes:
    """Reads a secret written by `write_secret` (hex text)."""
    text = path.read_text().strip()
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        raise SettingError(f"{path} does not hold a hex secret") from None
    if len(secret) < MIN_SECRET_LEN:
        raise SettingError(f"the secret in {path} is shorter than {MIN_SECRET_LEN} bytes")
    return secret


def write_secret(path: Path, secret: bytes) -> None:
    """Writes `secret` as hex to a new file only its owner can read."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret.hex() + "\n")


def key_values(items: list[str] | tuple[str, ...]) -> list[tuple[str, str]]:
    """`["a=1", "b = x"]` -> `[("a", "1"), ("b", "x")]`, as given on a command line."""
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SettingError(f"{item!r} is not of the form key=value")
        pairs.append((key.strip(), value.strip()))
    return pairs


def parse_rule_params(items: list[str] | tuple[str, ...]) -> dict[str, float]:
    """`["alpha=0.5", "workers=2"]` -> `{"alpha": 0.5, "workers": 2.0}`."""
    params: dict[str, float] = {}
    for key, value in key_values(items):
        try:
            params[key] = float(value)
        except ValueError:
            raise SettingError(f"rule parameter {key!r} needs a number, got {value!r}") from None
    return params


def model_weights(path: Path) -> FlatWeights:
    """Loads a `.keras` file (in Keras' safe mode) and returns its weights, flattened."""
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist")
    keras = import_keras()  # here: loading TensorFlow takes seconds and only this path needs it

    model = keras.saving.load_model(path, compile=False, safe_mode=True)
    return FlatWeights.from_arrays(model.get_weights())


def start_server(
    weights: FlatWeights,
    secret: bytes,
    rule: str = "add",
    params: dict[str, float] | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    idle_timeout: float | None = None,
) -> ParameterServer:
    """Starts serving `weights` as the centre variable under `rule`; a worker silent for
    `idle_timeout` seconds is dropped."""
    centre = Centre(weights.flat, rule, params)
    return ParameterServer(centre, weights.layout, secret, host=host, port=port, idle_timeout=idle_timeout)


def flat_weights(num_params: int) -> FlatWeights:
    """Zero weights in one flat tensor, for a server that only needs a size."""
    return FlatWeights(Layout.flat(num_params))
