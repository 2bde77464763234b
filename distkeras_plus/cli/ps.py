"""`dk ps serve`: a parameter server on its own."""

from __future__ import annotations

import json
import signal
import sys
import tempfile
import threading
from pathlib import Path
from types import FrameType

import click

from distkeras_plus._core import RULE_SYNTAX
from distkeras_plus.cli.common import OUTPUT_FORMAT, DkGroup, UserError, one_line
from distkeras_plus.ps.serve import (
    flat_weights,
    model_weights,
    new_secret,
    parse_rule_params,
    read_secret,
    start_server,
    write_secret,
)


@click.group(cls=DkGroup)
def ps() -> None:
    """The parameter server on its own."""


@ps.command("serve")
@click.option("--params", "num_params", type=click.IntRange(min=1), help="Serve this many zero parameters.")
@click.option(
    "--model",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Serve the weights of this .keras model.",
)
@click.option("--rule", default="add", show_default=True, help=f"Update rule: {RULE_SYNTAX}.")
@click.option("--rule-param", multiple=True, metavar="KEY=VALUE", help="A rule parameter, e.g. scale=0.5.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=0, type=click.IntRange(0, 65535), help="Port to bind; 0 picks a free one.")
@click.option(
    "--secret-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Hex secret that workers must hold; created if missing (default: a new private temp file).",
)
@click.option(
    "--idle-timeout",
    default=600.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds a worker may stay silent, mid-frame or between frames, before it is dropped.",
)
@OUTPUT_FORMAT
def ps_serve(
    num_params: int | None,
    model: Path | None,
    rule: str,
    rule_param: tuple[str, ...],
    host: str,
    port: int,
    secret_file: Path | None,
    idle_timeout: float,
    output_format: str,
) -> None:
    """Serve a parameter server until interrupted (Ctrl-C or SIGTERM)."""
    if (num_params is None) == (model is None):
        raise UserError("give exactly one of --params N or --model FILE.keras")
    weights = model_weights(model) if model is not None else flat_weights(num_params or 0)
    secret, secret_file = _secret(secret_file)
    try:
        server = start_server(weights, secret, rule, parse_rule_params(rule_param), host, port, idle_timeout)
    except OSError as e:  # the address is taken or not this machine's
        raise UserError(one_line(e)) from e

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    bound_host, bound_port = server.address
    info = {
        "host": bound_host,
        "port": bound_port,
        "num_params": weights.layout.num_params,
        "tensors": len(weights.layout.shapes),
        "rule": rule,
        "secret_file": str(secret_file),
    }
    if output_format == "json":
        click.echo(json.dumps({"event": "listening", **info}))
    else:
        click.echo(
            f"parameter server listening on {bound_host}:{bound_port} "
            f"({info['num_params']} parameters in {info['tensors']} tensors, rule {rule}); "
            f"secret in {secret_file}"
        )
    sys.stdout.flush()
    while not stop.wait(0.5):
        pass
    server.stop()
    stats = server.stats()
    if output_format == "json":
        click.echo(json.dumps({"event": "stopped", **stats}, default=str))
    else:
        click.echo(
            f"stopped after {stats['commits']} commits and {stats['pulls']} pulls "
            f"({stats['bytes_in']} bytes in, {stats['bytes_out']} bytes out)"
        )


def _secret(path: Path | None) -> tuple[bytes, Path]:
    if path is not None and path.exists():
        return read_secret(path), path
    if path is None:
        path = Path(tempfile.mkdtemp(prefix="dk-ps-")) / "secret"
    secret = new_secret()
    write_secret(path, secret)
    return secret, path
