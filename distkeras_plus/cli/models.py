"""`dk predict` and `dk evaluate`: a saved model over data, on Spark."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import click

from distkeras_plus.cli.common import OUTPUT_FORMAT, DkCommand

F = TypeVar("F", bound=Callable[..., Any])


def model_on_data(label_help: str) -> Callable[[F], F]:
    """The options both commands take: the model, the data and its columns, the Spark session."""

    def decorate(f: F) -> F:
        for option in reversed(
            [
                click.option(
                    "--model", required=True, metavar="FILE.keras", help="A Keras model file or URI."
                ),
                click.option(
                    "--data",
                    required=True,
                    metavar="PATH",
                    help="Parquet or CSV file or folder, or a Hadoop URI.",
                ),
                click.option("--features", default="features", show_default=True, help="Features column."),
                click.option("--label", default="label", show_default=True, help=label_help),
                click.option("--batch-size", default=256, show_default=True, type=click.IntRange(min=1)),
                click.option("--master", default=None, help="Spark master URL (default: local[WORKERS])."),
                click.option(
                    "--remote",
                    default=None,
                    envvar="DK_REMOTE",
                    metavar="URL",
                    help="Spark Connect URL instead of a master: sc://HOST:PORT (also SPARK_REMOTE).",
                ),
                click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1)),
                OUTPUT_FORMAT,
            ]
        ):
            f = option(f)
        return f

    return decorate


def _open(
    model: str,
    data: str,
    features: str,
    label: str,
    master: str | None,
    remote: str | None,
    workers: int,
    **read: Any,
) -> Any:
    """A quiet Spark session, the model at `model` (a local path or a URI) and the data."""
    from distkeras_plus.data.storage import load_model_file
    from distkeras_plus.data.tables import read as read_table
    from distkeras_plus.spark.session import local_session, quiet_logs

    spark = local_session(workers, master, remote=remote)
    quiet_logs(spark)
    return spark, load_model_file(model, spark), read_table(spark, data, features, label, **read)


@click.command("predict", cls=DkCommand)
@model_on_data("A CSV column that is not a feature, when present.")
@click.option("--output", required=True, metavar="PATH", help="Parquet folder (or URI) to write.")
@click.option("--prediction-col", default="prediction", show_default=True)
@click.option(
    "--probability-col", default="probability", show_default=True, help="Empty for no probabilities."
)
@click.option("--overwrite", is_flag=True, help="Replace what is at --output (default: refuse).")
def predict_command(
    output: str,
    prediction_col: str,
    probability_col: str,
    overwrite: bool,
    batch_size: int,
    output_format: str,
    **source: Any,
) -> None:
    """Predict every row of --data on Spark and write it, with the predictions, as Parquet."""
    from pyspark.errors import AnalysisException

    from distkeras_plus.data.storage import refuse_existing
    from distkeras_plus.errors import StorageError
    from distkeras_plus.spark.predict import predict

    refuse_existing(output, overwrite)
    spark, model, df = _open(**source, optional_label=True)
    predicted = predict(
        df,
        model,
        features_col=source["features"],
        prediction_col=prediction_col,
        probability_col=probability_col or None,
        batch_size=batch_size,
    )
    try:
        predicted.write.mode("overwrite" if overwrite else "errorifexists").parquet(output)
    except AnalysisException as e:  # a URI that exists already
        raise StorageError(f"cannot write {output}: {str(e).splitlines()[0]}") from None
    rows = spark.read.parquet(output).count()
    if output_format == "json":
        click.echo(json.dumps({"output": output, "rows": rows, "prediction_col": prediction_col}))
    else:
        click.echo(f"{rows} predictions written to {output} (column {prediction_col})")


@click.command("evaluate", cls=DkCommand)
@model_on_data("Label column.")
@click.option("--loss", default=None, help="Keras loss (default: (sparse) categorical cross-entropy).")
def evaluate_command(loss: str | None, batch_size: int, output_format: str, **source: Any) -> None:
    """Loss, accuracy and per-class precision, recall and F1 of a model on --data, computed on Spark."""
    from distkeras_plus.spark.predict import evaluate

    _, model, df = _open(**source)
    scores = evaluate(
        df,
        model,
        features_col=source["features"],
        label_col=source["label"],
        loss=loss,
        batch_size=batch_size,
    )
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
