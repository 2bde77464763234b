"""The `dk` command line."""

from __future__ import annotations

import importlib
import json
import signal
import sys
import tempfile
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import click

from distkeras_plus import __version__
from distkeras_plus._core import DkError
from distkeras_plus.ps import (
    flat_weights,
    key_values,
    model_weights,
    new_secret,
    parse_rule_params,
    read_secret,
    start_server,
    write_secret,
)


class UserError(click.ClickException):
    """A problem the user can fix: one line on stderr, exit status 2."""

    exit_code = 2


OUTPUT_FORMAT = click.option(
    "--output-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    envvar="DK_OUTPUT_FORMAT",
    help="Human-readable text or one JSON object per line.",
)


SUITE = click.option(
    "--suite",
    type=click.Path(file_okay=False, path_type=Path),
    help="The benchmarks/ folder of a source checkout (default: found from here).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "DK"})
@click.version_option(__version__, prog_name="dk")
def main() -> None:
    """distkeras-plus: data-parallel Keras training on Spark."""


@main.command("train")
@click.option(
    "--plugin", default="adag", show_default=True, help="Distributed optimizer (see `dk plugins list`)."
)
@click.option(
    "--dataset", default="digits", show_default=True, help="Built-in data set (see `dk datasets list`)."
)
@click.option(
    "--workers", default=2, show_default=True, type=click.IntRange(min=1), help="Number of workers."
)
@click.option("--epochs", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--master", default=None, help="Spark master URL (default: local[WORKERS]).")
@click.option(
    "--opt", "opts", multiple=True, metavar="KEY=VALUE", help="An option of the optimizer, e.g. window=12."
)
@click.option(
    "--worker-optimizer", default=None, help="Keras optimizer for the workers (default: the plugin's)."
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option(
    "--codec", default=None, help="Commit codec: none, fp16, bf16, int8, int8:stochastic, topk:RATIO."
)
@click.option("--pull-codec", default="none", show_default=True, help="Pull codec: none, fp16, bf16.")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to save the trained model (default: ./dk-model-PLUGIN.keras).",
)
@OUTPUT_FORMAT
def train_command(
    plugin: str,
    dataset: str,
    workers: int,
    epochs: int,
    batch_size: int,
    master: str | None,
    opts: tuple[str, ...],
    worker_optimizer: str | None,
    seed: int,
    codec: str | None,
    pull_codec: str,
    output: Path | None,
    output_format: str,
) -> None:
    """Train a model on Spark with a distributed optimizer and report its test accuracy."""
    from distkeras_plus.training import run_training

    try:
        options = dict(key_values(opts))
        report = run_training(
            plugin=plugin,
            dataset=dataset,
            workers=workers,
            epochs=epochs,
            batch_size=batch_size,
            master=master,
            options=options,
            worker_optimizer=worker_optimizer,
            seed=seed,
            output=output or Path(f"dk-model-{plugin}.keras"),
            codec=codec,
            pull_codec=pull_codec,
        )
    except (DkError, ValueError, OSError, RuntimeError) as e:
        raise UserError(str(e)) from e
    if output_format == "json":
        click.echo(json.dumps(report))
    else:
        click.echo(
            f"{report['plugin']}: test accuracy {report['test_accuracy']:.4f} "
            f"(loss {report['test_loss']:.4f}) "
            f"after {report['epochs']} epochs on {report['workers']} workers, {report['samples']} samples "
            f"in {report['seconds']:.1f} s; {report['commits']} commits ({report['codec']}), "
            f"{report['bytes_received'] / 1e6:.2f} MB committed, {report['bytes_sent'] / 1e6:.2f} MB pulled; "
            f"model saved to {report['model_path']}"
        )


@main.group()
def plugins() -> None:
    """Installed distributed optimizers."""


@plugins.command("list")
@OUTPUT_FORMAT
def plugins_list(output_format: str) -> None:
    """List every optimizer and the distribution it comes from."""
    from distkeras_plus import registry

    try:
        installed = registry.load()
    except registry.PluginError as e:
        raise UserError(str(e)) from e
    rows = [
        {
            "name": n,
            "summary": r.spec.summary,
            "plugin": r.plugin,
            "distribution": r.distribution,
            "version": r.version,
        }
        for n, r in sorted(installed.items())
    ]
    if output_format == "json":
        click.echo(json.dumps(rows))
        return
    width = max((len(r["name"]) for r in rows), default=4)
    for r in rows:
        click.echo(f"{r['name']:<{width}}  {r['summary']}  [{r['distribution']} {r['version']}]")


@plugins.command("info")
@click.argument("name")
@OUTPUT_FORMAT
def plugins_info(name: str, output_format: str) -> None:
    """Show an optimizer's options, defaults, server rule and origin."""
    from distkeras_plus import registry

    try:
        r = registry.get(name)
    except registry.PluginError as e:
        raise UserError(str(e)) from e
    spec = r.spec
    defaults = spec.parse_options({})
    rule = spec.rule_for(defaults, 2)
    info = {
        "name": spec.name,
        "summary": spec.summary,
        "description": spec.description,
        "options": [
            {"name": o.name, "type": o.type.__name__, "default": o.default, "help": o.help}
            for o in spec.options
        ],
        "rule": None if rule is None else {"name": rule.name, "params_with_2_workers": dict(rule.params)},
        "synchronous": spec.synchronous,
        "worker_optimizer": spec.worker_optimizer_for(defaults),
        "plugin": r.plugin,
        "distribution": r.distribution,
        "version": r.version,
    }
    if output_format == "json":
        click.echo(json.dumps(info))
        return
    click.echo(f"{spec.name}: {spec.summary}")
    if spec.description:
        click.echo(f"  {spec.description}")
    click.echo(f"  from {r.distribution} {r.version} (plugin {r.plugin})")
    click.echo(
        f"  server rule: {'none' if rule is None else rule.name} {dict(rule.params) if rule else ''}".rstrip()
    )
    click.echo(f"  runs {'synchronously (a barrier stage)' if spec.synchronous else 'asynchronously'}")
    click.echo(f"  default worker optimizer: {json.dumps(info['worker_optimizer'])}")
    click.echo("  options:" if spec.options else "  options: none")
    for o in spec.options:
        click.echo(f"    {o.name} ({o.type.__name__}, default {o.default!r}): {o.help}")


@main.group()
def datasets() -> None:
    """Built-in data sets."""


@datasets.command("list")
@OUTPUT_FORMAT
def datasets_list(output_format: str) -> None:
    """List the built-in data sets."""
    from distkeras_plus.datasets import DATASETS

    if output_format == "json":
        click.echo(json.dumps([{"name": n, "summary": s} for n, (s, _) in DATASETS.items()]))
        return
    for name, (summary, _) in DATASETS.items():
        click.echo(f"{name:<14} {summary}")


@datasets.command("export")
@click.argument("name")
@click.argument("path", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", default=0, show_default=True, type=int)
def datasets_export(name: str, path: Path, seed: int) -> None:
    """Write a data set as PATH/train.parquet and PATH/test.parquet (features, label)."""
    from distkeras_plus.datasets import load

    try:
        written = load(name, seed=seed).to_parquet(path)
    except (ValueError, OSError) as e:
        raise UserError(str(e)) from e
    for p in written:
        click.echo(str(p))


@main.group()
def ps() -> None:
    """The parameter server on its own."""


@ps.command("serve")
@click.option("--params", "num_params", type=click.IntRange(min=1), help="Serve this many zero parameters.")
@click.option(
    "--model",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Serve the weights of this .keras model.",
)
@click.option(
    "--rule", default="add", show_default=True, help="Update rule: add, dynsgd, adaptive, elastic, sync."
)
@click.option("--rule-param", multiple=True, metavar="KEY=VALUE", help="A rule parameter, e.g. scale=0.5.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=0, type=click.IntRange(0, 65535), help="Port to bind; 0 picks a free one.")
@click.option(
    "--secret-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Hex secret that workers must hold; created if missing (default: a new private temp file).",
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
    output_format: str,
) -> None:
    """Serve a parameter server until interrupted (Ctrl-C or SIGTERM)."""
    if (num_params is None) == (model is None):
        raise UserError("give exactly one of --params N or --model FILE.keras")
    try:
        weights = model_weights(model) if model is not None else flat_weights(num_params or 0)
        secret, secret_file = _secret(secret_file)
        server = start_server(weights, secret, rule, parse_rule_params(rule_param), host, port)
    except (DkError, ValueError, OSError) as e:
        raise UserError(str(e)) from e

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


@main.group()
def bench() -> None:
    """Benchmarks, each measured against its baseline in the same run."""


@bench.command("ps")
@click.option(
    "--sizes",
    default="1000000,10000000",
    show_default=True,
    help="Comma-separated parameter counts.",
)
@click.option(
    "--clients", default="1,8", show_default=True, help="Comma-separated numbers of concurrent clients."
)
@click.option("--quick", is_flag=True, help="Fewer repetitions: a smoke run, not figures to record.")
@SUITE
@OUTPUT_FORMAT
def bench_ps(sizes: str, clients: str, quick: bool, suite: Path | None, output_format: str) -> None:
    """Parameter server: apply, round trips and the original-style baseline."""
    try:
        size_list = [int(float(s)) for s in sizes.split(",") if s.strip()]
        client_list = [int(c) for c in clients.split(",") if c.strip()]
    except ValueError as e:
        raise UserError(f"--sizes and --clients take comma-separated numbers: {e}") from e
    module = _benchmarks(suite, "ps")
    results: dict[str, Any] = module.run(size_list, client_list, quick=quick)
    if output_format == "json":
        click.echo(json.dumps(results, indent=2))
    else:
        click.echo(module.render(results))


@bench.command("train")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--dataset", "datasets", multiple=True, help="Only these data sets (digits, fashion-mnist).")
@SUITE
@OUTPUT_FORMAT
def bench_train(batch_size: int, datasets: tuple[str, ...], suite: Path | None, output_format: str) -> None:
    """Training: plain Keras vs each optimizer with 2 workers on local Spark."""
    module = _benchmarks(suite, "train")
    results: dict[str, Any] = module.run(batch_size, list(datasets) or None)
    if output_format == "json":
        click.echo(json.dumps(results, indent=2))
    else:
        click.echo(module.render(results))


@bench.command("codecs")
@click.option(
    "--sizes", default="1000000,10000000", show_default=True, help="Comma-separated parameter counts."
)
@click.option("--quick", is_flag=True, help="Fewer repetitions, digits only: a smoke run.")
@SUITE
@OUTPUT_FORMAT
def bench_codecs(sizes: str, quick: bool, suite: Path | None, output_format: str) -> None:
    """Codecs: ratio and speed, and training with each codec vs none."""
    try:
        size_list = [int(float(s)) for s in sizes.split(",") if s.strip()]
    except ValueError as e:
        raise UserError(f"--sizes takes comma-separated numbers: {e}") from e
    module = _benchmarks(suite, "codecs")
    results: dict[str, Any] = module.run(size_list, quick=quick)
    if output_format == "json":
        click.echo(json.dumps(results, indent=2))
    else:
        click.echo(module.render(results))


def _benchmarks(suite: Path | None, name: str) -> Any:
    """Imports `benchmarks.<name>` from a source checkout: benchmarks ship with the source, not the wheel."""
    candidates = (
        [suite]
        if suite
        else [Path.cwd() / "benchmarks", Path(__file__).resolve().parent.parent / "benchmarks"]
    )
    for folder in candidates:
        if folder is not None and (folder / "__init__.py").is_file():
            root = str(folder.resolve().parent)
            if root not in sys.path:
                sys.path.append(root)  # last, so the installed distkeras_plus wins over the checkout
            return importlib.import_module(f"benchmarks.{name}")
    raise UserError(
        "benchmarks live in the source checkout: run dk bench from it, or pass --suite PATH/benchmarks"
    )
