"""Small helpers shared by the tests."""

from __future__ import annotations

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
