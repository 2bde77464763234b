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
from distkeras_plus.cli_options import OUTPUT_FORMAT, UserError
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
from distkeras_plus.punchcard.cli import jobs, punchcard, submit


class InternalError(click.ClickException):
    """A failure the user did not cause: one line, exit status 1."""

    exit_code = 1


SUITE = click.option(
    "--suite",
    type=click.Path(file_okay=False, path_type=Path),
    help="The benchmarks/ folder of a source checkout (default: found from here).",
)


#: Errors a user can fix, reported in one line with exit status 2.
USER_ERRORS = (DkError, ValueError, OSError, RuntimeError)


def guarded(ctx: click.Context, exc: Exception) -> click.ClickException:
    """One line for `exc` (exit 2 when the user can fix it); the traceback with --debug."""
    if ctx.find_root().params.get("debug"):
        raise exc
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, USER_ERRORS):
        return UserError(message)
    return InternalError(f"internal error: {type(exc).__name__}: {message} (rerun with --debug)")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "DK"})
@click.version_option(__version__, prog_name="dk")
@click.option("--debug", is_flag=True, envvar="DK_DEBUG", help="Show full tracebacks.")
def main(debug: bool) -> None:
    """distkeras-plus: data-parallel Keras training on Spark."""


def _load_config(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """Eager: turns a settings file into Click defaults before the other options are read."""
    from distkeras_plus.config import ConfigError, find_pyproject, read_settings

    path = value if value is not None else find_pyproject(Path.cwd())
    if path is None:
        return None
    names = [p.name for p in ctx.command.params if p.name and p.name != "config"]
    try:
        ctx.default_map = {**(ctx.default_map or {}), **read_settings(path, names)}
    except ConfigError as e:
        raise UserError(str(e)) from None
    return path


# DK_PLUGIN, DK_WORKERS, ...: `dk train` reads every option from DK_<OPTION> as well.
@main.command("train", context_settings={"auto_envvar_prefix": "DK"})
@click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path, exists=True),
    is_eager=True,
    expose_value=False,
    callback=_load_config,
    help="A TOML file of settings (default: [tool.distkeras_plus] in the nearest pyproject.toml).",
)
@click.option(
    "--plugin", default="adag", show_default=True, help="Distributed optimizer (see `dk plugins list`)."
)
@click.option(
    "--dataset", default="digits", show_default=True, help="Built-in data set (see `dk datasets list`)."
)
@click.option(
    "--data",
    default=None,
    metavar="PATH",
    help="Train on this Parquet or CSV file or folder (or hdfs://, s3a://, file:// URI) instead.",
)
@click.option(
    "--test-data", default=None, metavar="PATH", help="Test set for --data (default: --validation-split)."
)
@click.option("--features", default="features", show_default=True, help="Features column of --data.")
@click.option("--label", default="label", show_default=True, help="Label column of --data.")
@click.option(
    "--model",
    default=None,
    metavar="FILE.keras",
    help="Model to train (default: a small MLP that fits the data).",
)
@click.option("--loss", default=None, help="Keras loss (default: (sparse) categorical cross-entropy).")
@click.option("--metrics", default="accuracy", show_default=True, help="Comma-separated Keras metrics.")
@click.option(
    "--workers", default=2, show_default=True, type=click.IntRange(min=1), help="Number of workers."
)
@click.option("--master", default=None, help="Spark master URL (default: local[WORKERS]).")
@click.option("--epochs", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--worker-optimizer", default=None, help="Keras optimizer for the workers (default: the plugin's)."
)
@click.option(
    "--opt", "opts", multiple=True, metavar="KEY=VALUE", help="An option of the optimizer, e.g. window=12."
)
@click.option(
    "--validation-split",
    default=0.2,
    show_default=True,
    type=click.FloatRange(0, 1, max_open=True),
    help="Fraction of --data held out as the test set (0: none).",
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option(
    "--codec", default=None, help="Commit codec: none, fp16, bf16, int8, int8:stochastic, topk:RATIO."
)
@click.option("--pull-codec", default="none", show_default=True, help="Pull codec: none, fp16, bf16.")
@click.option(
    "--output",
    default=None,
    metavar="PATH.keras",
    help="Where to save the trained model, a local path or a URI (default: ./dk-model-PLUGIN.keras).",
)
@click.option(
    "--checkpoint-dir",
    default=None,
    metavar="DIR",
    help="Write checkpoints of the centre here (a local folder or a Hadoop URI).",
)
@click.option(
    "--checkpoint-every",
    default=None,
    type=click.IntRange(min=1),
    metavar="N",
    help="Checkpoint after every N commits.",
)
@click.option(
    "--checkpoint-seconds",
    default=60.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Checkpoint at least this often while the centre changes.",
)
@click.option(
    "--resume",
    default=None,
    metavar="DIR",
    help="Continue the run whose checkpoints are in DIR, with its recorded settings.",
)
@click.option(
    "--progress-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Append the run's progress to this file as JSON lines, about once a second.",
)
@click.option(
    "--history-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write every worker's training history to this file as JSON.",
)
@OUTPUT_FORMAT
@click.pass_context
def train_command(
    ctx: click.Context,
    /,
    opts: tuple[str, ...],
    metrics: str,
    output: str | None,
    resume: str | None,
    progress_file: Path | None,
    history_file: Path | None,
    output_format: str,
    **settings: Any,
) -> None:
    """Train a model on Spark with a distributed optimizer and report its test accuracy.

    Every option can also come from a DK_<OPTION> environment variable (DK_WORKERS=4), a
    --config file or the [tool.distkeras_plus] table of the nearest pyproject.toml.
    """
    from distkeras_plus.training import TrainJob, resumed, run_training

    try:
        options = dict(key_values(opts))
    except ValueError as e:
        raise guarded(ctx, e) from e
    job = TrainJob(
        **settings,
        options=options,
        metrics=[m.strip() for m in metrics.split(",") if m.strip()],
        output=output or f"dk-model-{settings['plugin']}.keras",
    )
    show = ProgressLine(sys.stderr) if sys.stderr.isatty() else None
    record = progress_file.open("a") if progress_file is not None else None

    def progress(update: dict[str, Any]) -> None:
        if show is not None:
            show(update)
        if record is not None:
            record.write(json.dumps(update) + "\n")
            record.flush()

    try:
        checkpoint = None
        if resume is not None:
            job, checkpoint = resumed(resume, settings["master"], settings["workers"])
        report, history = run_training(job, progress if show or record else None, checkpoint)
    except Exception as e:
        raise guarded(ctx, e) from e
    finally:
        if show is not None:
            show.close()
        if record is not None:
            record.close()
    if history_file is not None:
        history_file.write_text(json.dumps(history))
    if output_format == "json":
        click.echo(json.dumps(report))
        return
    accuracy = (
        f"test accuracy {report['test_accuracy']:.4f} (loss {report['test_loss']:.4f}, "
        f"{report['test_samples']} samples)"
        if report["test_accuracy"] is not None
        else "no test set"
    )
    if report["resumed_from_clock"] is not None:
        click.echo(f"resumed from the checkpoint at clock {report['resumed_from_clock']}")
    click.echo(
        f"{report['plugin']}: {accuracy} after {report['epochs']} epochs on {report['workers']} workers, "
        f"{report['samples']} samples in {report['seconds']:.1f} s; {report['commits']} commits "
        f"({report['codec']}), {report['bytes_received'] / 1e6:.2f} MB committed, "
        f"{report['bytes_sent'] / 1e6:.2f} MB pulled; model saved to {report['model_path']}"
    )


class ProgressLine:
    """One status line on a terminal, rewritten in place."""

    def __init__(self, stream: Any) -> None:
        self.stream, self.width = stream, 0

    def __call__(self, p: dict[str, Any]) -> None:
        loss = f"loss {p['loss']:.4f}" if p.get("loss") is not None else "loss -"
        text = (
            f"{p['seconds']:6.0f} s  {p['samples']:>9,} samples  {p['commits']:>6,} commits  {loss}  "
            f"{(p['bytes_received'] + p['bytes_sent']) / 1e6:,.1f} MB"
        )
        self.stream.write("\r" + text.ljust(self.width))
        self.stream.flush()
        self.width = len(text)

    def close(self) -> None:
        if self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()


DATA = click.option(
    "--data", required=True, metavar="PATH", help="Parquet or CSV file or folder, or a Hadoop URI."
)
MODEL = click.option("--model", required=True, metavar="FILE.keras", help="A Keras model file or URI.")
FEATURES = click.option("--features", default="features", show_default=True, help="Features column.")
MASTER = click.option("--master", default=None, help="Spark master URL (default: local[WORKERS]).")
WORKERS = click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1))


def _session_and_model(workers: int, master: str | None, model: str) -> tuple[Any, Any]:
    """A quiet Spark session and the model at `model` (a local path or a URI)."""
    from distkeras_plus.engine import local_session
    from distkeras_plus.storage import load_model_file

    spark = local_session(workers, master)
    spark.sparkContext.setLogLevel("ERROR")
    return spark, load_model_file(model, spark)


@main.command("predict")
@MODEL
@DATA
@click.option("--output", required=True, metavar="PATH", help="Parquet folder (or URI) to write.")
@FEATURES
@click.option(
    "--label", default="label", show_default=True, help="A CSV column that is not a feature, when present."
)
@click.option("--prediction-col", default="prediction", show_default=True)
@click.option(
    "--probability-col", default="probability", show_default=True, help="Empty for no probabilities."
)
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(min=1))
@MASTER
@WORKERS
@OUTPUT_FORMAT
@click.pass_context
def predict_command(
    ctx: click.Context,
    /,
    model: str,
    data: str,
    output: str,
    features: str,
    label: str,
    prediction_col: str,
    probability_col: str,
    batch_size: int,
    master: str | None,
    workers: int,
    output_format: str,
) -> None:
    """Predict every row of --data on Spark and write it, with the predictions, as Parquet."""
    from distkeras_plus.data import read
    from distkeras_plus.predict import predict

    try:
        spark, keras_model = _session_and_model(workers, master, model)
        df = read(spark, data, features, label, optional_label=True)
        predicted = predict(
            df,
            keras_model,
            features_col=features,
            prediction_col=prediction_col,
            probability_col=probability_col or None,
            batch_size=batch_size,
        )
        predicted.write.mode("overwrite").parquet(output)
        rows = spark.read.parquet(output).count()
    except Exception as e:
        raise guarded(ctx, e) from e
    if output_format == "json":
        click.echo(json.dumps({"output": output, "rows": rows, "prediction_col": prediction_col}))
    else:
        click.echo(f"{rows} predictions written to {output} (column {prediction_col})")


@main.command("evaluate")
@MODEL
@DATA
@FEATURES
@click.option("--label", default="label", show_default=True, help="Label column.")
@click.option("--loss", default=None, help="Keras loss (default: (sparse) categorical cross-entropy).")
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(min=1))
@MASTER
@WORKERS
@OUTPUT_FORMAT
@click.pass_context
def evaluate_command(
    ctx: click.Context,
    /,
    model: str,
    data: str,
    features: str,
    label: str,
    loss: str | None,
    batch_size: int,
    master: str | None,
    workers: int,
    output_format: str,
) -> None:
    """Loss, accuracy and per-class precision, recall and F1 of a model on --data, computed on Spark."""
    from distkeras_plus.data import read
    from distkeras_plus.predict import evaluate

    try:
        spark, keras_model = _session_and_model(workers, master, model)
        df = read(spark, data, features, label)
        scores = evaluate(
            df, keras_model, features_col=features, label_col=label, loss=loss, batch_size=batch_size
        )
    except Exception as e:
        raise guarded(ctx, e) from e
    if output_format == "json":
        click.echo(json.dumps(scores.as_dict()))
        return
    click.echo(
        f"{scores.samples} samples: loss {scores.loss:.4f}, accuracy {scores.accuracy:.4f}, "
        f"macro F1 {scores.macro_f1:.4f}"
    )
    click.echo(f"{'class':>6} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}")
    for c in scores.classes:
        click.echo(
            f"{c['class']:>6} {c['precision']:>9.4f} {c['recall']:>9.4f} {c['f1']:>9.4f} {c['support']:>8}"
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


main.add_command(punchcard)
main.add_command(submit)
main.add_command(jobs)
