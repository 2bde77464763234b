from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from distkeras_plus import Centre, Layout, ParameterServer
from distkeras_plus.ps.serve import new_secret

# The punchcard tests' daemon and fixtures (model_file, daemon, stop_daemons): punchcard_daemon.py.
pytest_plugins = ["punchcard_daemon"]


@pytest.fixture
def secret() -> bytes:
    return new_secret()


@pytest.fixture
def server(secret: bytes) -> Iterator[ParameterServer]:
    """An `add` server over 1000 parameters, all 1.0, on an ephemeral loopback port."""
    centre = Centre(np.ones(1000, dtype=np.float32), "add")
    with ParameterServer(centre, Layout.flat(1000), secret) as s:
        yield s


@pytest.fixture(scope="session")
def spark() -> Iterator[object]:
    """One local[2] Spark session for the whole run (starting one takes seconds)."""
    from distkeras_plus.spark.session import local_session

    session = local_session(2)
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def digits_data() -> object:
    from distkeras_plus.data.datasets import digits

    return digits()
