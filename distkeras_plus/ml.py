"""A Spark ML Estimator that trains a Keras model on the cluster, and the Model it fits.

    estimator = KerasEstimator(model, plugin="adag", epochs=10, numWorkers=2, options={"window": 8})
    fitted = Pipeline(stages=[Standardizer(outputCol="features_std"), estimator]).fit(df)
    fitted.transform(test_df)  # prediction and probability columns
    fitted.write().overwrite().save("hdfs:///models/digits")

The estimator's Params are the run's settings (`distkeras_plus.settings.RunConfig`), each named
as the Python API names it, in Spark ML's camelCase (`batch_size` is `batchSize`, `num_workers`
`numWorkers`, `features_col` `featuresCol`), with the same defaults and checks; `options` holds
the optimizer's options. `fit` trains through the same engine as `distkeras_plus.train`, from a
copy of the estimator's model (a tuning run's fits all start from the same weights); Keras
callbacks given to the constructor see every fit's epochs, and are not saved with the stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pyspark.ml import Estimator, Model
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasPredictionCol, HasProbabilityCol
from pyspark.sql import DataFrame

from distkeras_plus.errors import SettingError
from distkeras_plus.settings import RunConfig, base_type, declared, default_of
from distkeras_plus.transformers import KerasStage, ModelPredictor

_CONVERTERS = {
    int: TypeConverters.toInt,
    float: TypeConverters.toFloat,
    str: TypeConverters.toString,
    bool: TypeConverters.toBoolean,
}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


#: Param name -> RunConfig field, for every setting.
SETTINGS = {_camel(s.api or name): name for name, s, _ in declared(RunConfig)}


class _RunParams(Params):
    """One Param per setting, made from its declaration (below)."""


for _name, _s, _hint in declared(RunConfig):
    _key = _camel(_s.api or _name)
    if hasattr(Estimator, _key) or hasattr(HasPredictionCol, _key):
        raise RuntimeError(f"the setting {_name} would hide {_key} of Spark ML")  # never: a new clash
    _converter = _CONVERTERS.get(base_type(_hint)[0], TypeConverters.identity)
    setattr(_RunParams, _key, Param(Params._dummy(), _key, _s.help, _converter))


class KerasModel(ModelPredictor, Model):
    """A trained Keras model as a Spark ML Model: adds `predictionCol` and `probabilityCol` on
    Arrow batches, as `ModelPredictor` does. `history` is the fit's per-epoch History
    (`{"loss": [...], ...}`), saved with the stage."""

    def __init__(self, model: Any, **params: Any) -> None:
        super().__init__(model, **params)
        self.history: dict[str, list[float]] = {}

    def _extra_metadata(self) -> dict[str, Any]:
        return {"history": self.history}

    def _restore(self, metadata: dict[str, Any]) -> None:
        self.history = metadata.get("history", {})


class KerasEstimator(Estimator[KerasModel], _RunParams, HasPredictionCol, HasProbabilityCol, KerasStage):
    """Trains `model` on the cluster (see the module's text); `verbose` is Keras' progress."""

    verbose: Param[int] = Param(
        Params._dummy(),
        "verbose",
        "Keras' progress: 0 none, 1 a bar, 2 a line per epoch",
        TypeConverters.toInt,
    )

    def __init__(self, model: Any, *, callbacks: Sequence[Any] = (), **params: Any) -> None:
        super().__init__()
        self.model, self.callbacks = model, list(callbacks)
        self._setDefault(verbose=0, **{key: default_of(RunConfig, name) for key, name in SETTINGS.items()})
        unknown = sorted(set(params) - set(SETTINGS) - {"predictionCol", "probabilityCol", "verbose"})
        if unknown:
            raise SettingError(
                f"KerasEstimator has no Param {', '.join(unknown)}; its Params: {', '.join(SETTINGS)}, "
                "predictionCol, probabilityCol, verbose"
            )
        self._set(**params)
        self.run_config()  # a bad value is one line now, not at fit

    def run_config(self) -> RunConfig:
        """The run's settings, as the Params say."""
        return RunConfig(**{name: self.getOrDefault(key) for key, name in SETTINGS.items()})

    def _fit(self, dataset: DataFrame) -> KerasModel:
        from distkeras_plus.data.storage import copy_model
        from distkeras_plus.spark import driver

        config = self.run_config()
        result = driver.train(
            dataset,
            copy_model(self.model),
            config,
            callbacks=self.callbacks,
            verbose=int(self.getOrDefault(self.verbose)),
        )
        fitted = KerasModel(
            result.model,
            featuresCol=config.features,
            predictionCol=self.getPredictionCol(),
            probabilityCol=self.getOrDefault(self.probabilityCol),
            batchSize=max(256, config.batch_size),
        )
        fitted.history = {k: [float(v) for v in vs] for k, vs in result.history.history.items()}
        return fitted
