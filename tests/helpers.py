"""Small helpers shared by the tests."""

from __future__ import annotations

from distkeras_plus import ParameterServer


def address(server: ParameterServer) -> str:
    host, port = server.address
    return f"{host}:{port}"
