"""Sessions: `nox -s lint typecheck rust tests slow` is what CI runs; `nox -s bench` records figures."""

from __future__ import annotations

import os

import nox

# Installed with compiled bytecode, as pip does: every Spark Python worker imports TensorFlow and
# Keras, which take more than twice as long to start from source.
os.environ.setdefault("UV_COMPILE_BYTECODE", "1")

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["lint", "typecheck", "rust", "tests", "slow"]
nox.options.reuse_venv = "yes"

# The package and its built-in optimizers, a separate distribution registered through entry points.
TEST_DEPS = [".[test]", "./plugins"]


@nox.session
def tests(session: nox.Session) -> None:
    """The Python suite (fast cases); builds and installs the package first."""
    session.install(*TEST_DEPS)
    session.run("pytest", *session.posargs)


@nox.session
def slow(session: nox.Session) -> None:
    """End-to-end cases too slow to run on every edit."""
    session.install(*TEST_DEPS)
    session.run("pytest", "-m", "slow", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff, cargo fmt and clippy with warnings as errors."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("cargo", "fmt", "--all", "--check", external=True)
    session.run("cargo", "clippy", "--all-targets", "--", "-D", "warnings", external=True)
    # The PyO3 layer too; its build script needs this session's Python.
    session.run(
        "cargo",
        "clippy",
        "--all-targets",
        "--features",
        "python",
        "--",
        "-D",
        "warnings",
        external=True,
        env={"PYO3_PYTHON": session.virtualenv.location + "/bin/python"},
    )


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy over the package, tests and benchmarks; stubtest checks `_core.pyi` against the module."""
    session.install("--no-deps", ".", "./plugins")
    session.install("numpy", "click", "pluggy", "pyspark>=4.0,<5", "mypy", "pytest", "hypothesis")
    # Punchcard's daemon and client, and its page test, are typed against these.
    session.install("fastapi", "uvicorn", "httpx", "pydantic", "selenium")
    session.install("matplotlib")  # dk history plot; typed
    session.run("mypy")
    # -P: check the installed module, not the checkout (which has no compiled _core).
    session.run(
        "python", "-P", "-m", "mypy.stubtest", "distkeras_plus._core", "--mypy-config-file", "pyproject.toml"
    )


@nox.session(venv_backend="none")
def rust(session: nox.Session) -> None:
    """The Rust core's unit and integration tests."""
    session.run("cargo", "test", "--all-targets", external=True)


@nox.session
def bench(session: nox.Session) -> None:
    """Every benchmark with its baseline; copy the figures into docs/benchmarks.md."""
    session.install(".", "./plugins")
    session.run("dk", "bench", "ps", *session.posargs)
    session.run("dk", "bench", "steps", *session.posargs)
    session.run("dk", "bench", "run", *session.posargs)
    session.run("dk", "bench", "memory", *session.posargs)
    session.run("dk", "bench", "train", *session.posargs)
    session.run("dk", "bench", "codecs", *session.posargs)
    session.run("dk", "bench", "checks", *session.posargs)
