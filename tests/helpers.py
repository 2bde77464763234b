"""Small helpers shared by the tests."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from distkeras_plus import ParameterServer


def address(server: ParameterServer) -> str:
    host, port = server.address
    return f"{host}:{port}"


# Epochs in which each optimizer's defaults reach 0.90 on digits with the default model.
CONVERGENCE = {
    "adag": 8,
    "adag-adaptive": 8,
    "downpour": 6,
    "dynsgd": 8,
    "aeasgd": 10,
    "eamsgd": 6,
    "easgd": 10,
    "averaging": 10,
    "ensemble": 10,
    "single": 6,
}


@contextmanager
def example_plugin() -> Iterator[None]:
    """The third-party plugin of tests/example_plugin, pip-installed for the block's time."""
    uv = shutil.which("uv")
    pip = [uv, "pip", "--quiet"] if uv else [sys.executable, "-m", "pip", "--quiet"]
    target = ["--python", sys.executable] if uv else []
    subprocess.run([*pip, "install", *target, str(Path(__file__).parent / "example_plugin")], check=True)
    try:
        yield
    finally:
        uninstall = [*pip, "uninstall", *target] if uv else [*pip, "uninstall", "-y"]
        subprocess.run([*uninstall, "dk-example-plugin"], check=True)
