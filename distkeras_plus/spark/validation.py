"""Validation data, scored with the centre's weights at every epoch's end.

Small validation data is held on the driver as arrays and evaluated there (`Held`). Larger data
stays a DataFrame and is evaluated on Spark (`OnSpark`): every task runs Keras' own evaluation of
its partition and returns the state of the model's metrics (the loss's and each metric's totals
and counts, true positives, ...); the driver adds the states up and reads every metric from the
sum. The scores are those Keras gives for the whole data set at once, for any metric whose state
is sums (every built-in one), and the driver never holds the data.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from distkeras_plus.data.tables import Prepared, arrays, check_model, prepare, read
from distkeras_plus.errors import DataError, SettingError
from distkeras_plus.ps.weights import FlatWeights
from distkeras_plus.settings import RunConfig
from distkeras_plus.spark import session


class Held:
    """Validation arrays on the driver."""

    def __init__(self, x: npt.NDArray[Any], y: npt.NDArray[Any], batch_size: int) -> None:
        self.x, self.y, self.batch_size = x, y, batch_size

    def warm(self, model: Any) -> None:
        """Keras traces its evaluation on a first call (seconds): done before the training, an
        epoch's end reaches the workers sooner."""
        rows = 2 * self.batch_size + 1  # a full batch and a partial one
        model.evaluate(self.x[:rows], self.y[:rows], batch_size=self.batch_size, verbose=0)

    def scores(self, model: Any) -> dict[str, float]:
        found = model.evaluate(self.x, self.y, batch_size=self.batch_size, verbose=0, return_dict=True)
        return {k: float(v) for k, v in found.items()}


@dataclass(frozen=True)
class _Task:
    """What every evaluation task gets (plain data: it travels inside the Spark task)."""

    model: bytes  # the .keras archive
    compiled: dict[str, Any]  # Keras' compile config, as the workers have it
    weights: bytes  # the centre, float32
    num_features: int
    one_hot: bool
    batch_size: int


class OnSpark:
    """Validation data evaluated by a Spark job at every epoch's end."""

    def __init__(self, data: Prepared, model: Any, compiled: dict[str, Any], batch_size: int) -> None:
        from distkeras_plus.data.storage import model_bytes

        self.data, self.compiled, self.batch_size = data, compiled, batch_size
        self.model = model_bytes(model)

    def warm(self, model: Any) -> None:
        """Nothing to trace on the driver: its model only reads the sums."""

    def scores(self, model: Any) -> dict[str, float]:
        centre = FlatWeights.from_arrays(model.get_weights()).flat
        cfg = _Task(
            self.model,
            self.compiled,
            centre.tobytes(),
            self.data.columns.num_features,
            self.data.columns.one_hot,
            self.batch_size,
        )

        def task(batches: Iterator[Any]) -> Iterator[Any]:
            return _evaluate_partition(cfg, batches)

        rows = self.data.df.mapInArrow(task, "state binary").collect()
        if not rows:
            raise DataError("the validation data is empty")
        variables = model.metrics_variables
        total = np.sum([np.frombuffer(r["state"], np.float64) for r in rows], axis=0)
        if total.size != sum(int(np.prod(v.shape)) for v in variables):
            raise DataError("the evaluation tasks' metrics are not the driver's")  # never: one config
        offset = 0
        for v in variables:
            size = int(np.prod(v.shape))
            v.assign(total[offset : offset + size].reshape(v.shape))
            offset += size
        return {k: float(v) for k, v in model.get_metrics_result().items()}


def _evaluate_partition(cfg: _Task, batches: Iterator[Any]) -> Iterator[Any]:
    """Runs on an executor: Keras evaluates the partition with the centre's weights; one row, the
    metrics' state flattened (float64: sums of many partitions stay exact)."""
    import pyarrow as pa

    from distkeras_plus.spark.executor import set_process_env

    set_process_env(1)  # beside the training's workers: one core's share
    from distkeras_plus.data.storage import model_from_bytes
    from distkeras_plus.worker import compiling

    def minibatches() -> Iterator[tuple[npt.NDArray[Any], npt.NDArray[Any]]]:
        for batch in batches:
            x, y = arrays(batch, cfg.num_features, cfg.one_hot)
            for s in range(0, len(x), cfg.batch_size):
                yield x[s : s + cfg.batch_size], y[s : s + cfg.batch_size]

    found = minibatches()
    first = next(found, None)
    if first is None:
        return  # an empty partition adds nothing
    model = model_from_bytes(cfg.model)
    compiling.compile_model(model, cfg.compiled)
    layout = FlatWeights.from_arrays(model.get_weights()).layout
    model.set_weights(FlatWeights(layout, np.frombuffer(cfg.weights, np.float32)).views)
    shape = model.input_shape[1:]
    with warnings.catch_warnings():  # Keras' note that a generator ended is its end here
        warnings.filterwarnings("ignore", "Your input ran out of data")
        model.evaluate(((x.reshape((len(x), *shape)), y) for x, y in chain([first], found)), verbose=0)
    state = np.concatenate([np.ravel(np.asarray(v.numpy(), np.float64)) for v in model.metrics_variables])
    yield pa.record_batch([pa.array([state.tobytes()], pa.binary())], names=["state"])


def validation_for(
    spark: Any, validation: Any, model: Any, config: RunConfig, compiled: dict[str, Any], workers: int
) -> Held | OnSpark:
    """The validation data (a DataFrame or a path), checked as the training data is: held on
    the driver up to `config.validation_in_memory_mb`, else evaluated on Spark, in a task slot
    the training's `workers` leave free."""
    if isinstance(validation, str | Path):
        validation = read(spark, validation, config.features, config.label)
    data = prepare(validation, config.features, config.label)
    check_model(model, data, config.label)
    if data.rows == 0:
        raise DataError("the validation data is empty")
    width = data.columns.num_features + (data.classes if data.columns.one_hot else 1)
    size = data.rows * width * 4
    if size <= config.validation_in_memory_mb << 20:
        (batch,) = data.df.toArrow().combine_chunks().to_batches()
        x, y = arrays(batch, data.columns.num_features, data.columns.one_hot)
        return Held(x, y, config.batch_size)
    slots = session.task_slots(spark)
    if slots is not None and slots <= workers:
        raise SettingError(
            f"the validation data ({size >> 20} MiB) is evaluated on Spark at every epoch's end, in a "
            f"task slot the training leaves free, but its {workers} workers take all {slots}: train "
            "with fewer workers, or raise --validation-in-memory-mb to hold it on the driver"
        )
    return OnSpark(data, model, compiled, config.batch_size)
