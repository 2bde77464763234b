"""What a distributed optimizer is: a name, typed options, the parameter-server rule it needs and
the loop its workers run. Plugins return these from the `dk_optimizers` hook."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from distkeras_plus._core import RULES, Centre, InvalidArgumentError
from distkeras_plus.errors import OptionError, PluginError

if TYPE_CHECKING:
    from distkeras_plus.worker import WorkerContext

OptionType = type[int] | type[float] | type[str] | type[bool]


@dataclass(frozen=True)
class Option:
    """One typed option of an optimizer, with its default."""

    name: str
    type: OptionType
    default: Any
    help: str
    minimum: float | None = None
    choices: tuple[str, ...] | None = None

    def parse(self, value: Any) -> Any:
        """Checks `value` (or converts it, when it comes as text from the command line)."""
        if isinstance(value, str) and self.type is not str:
            value = self._from_text(value)
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, self.type) or (self.type is int and isinstance(value, bool)):
            raise OptionError(f"option {self.name} takes a {self.type.__name__}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise OptionError(f"option {self.name} must be a finite number, got {value!r}")
        if isinstance(value, int) and not -(2**63) <= value < 2**63:
            raise OptionError(f"option {self.name} must fit in 64 bits, got {value!r}")
        if self.minimum is not None and isinstance(value, int | float) and value < self.minimum:
            raise OptionError(f"option {self.name} must be >= {self.minimum}, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise OptionError(f"option {self.name} must be one of {', '.join(self.choices)}, got {value!r}")
        return value

    def _from_text(self, text: str) -> Any:
        try:
            if self.type is bool:
                lowered = text.strip().lower()
                if lowered in ("1", "true", "yes", "on"):
                    return True
                if lowered in ("0", "false", "no", "off"):
                    return False
                raise ValueError(text)
            return self.type(text)
        except ValueError:
            raise OptionError(f"option {self.name} takes a {self.type.__name__}, got {text!r}") from None


@dataclass(frozen=True)
class RuleChoice:
    """A parameter-server rule by name, with its numeric parameters."""

    name: str
    params: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class OptimizerSpec:
    """A distributed optimizer.

    - `rule(options, num_workers)` picks the parameter-server rule, or `None` for an optimizer
      that needs no parameter server (`ensemble`);
    - `worker(ctx)` is the loop each worker runs on its partition;
    - `synchronous` optimizers run as a Spark barrier stage (all workers at once);
    - `single_partition` optimizers train on one worker with all the data;
    - `combine(model, results)` builds the final model from what workers returned, for
      optimizers whose result is not the centre variable;
    - `worker_optimizer` is the default Keras optimizer (a name, a config, or a function of the
      options returning one); a user's choice overrides it;
    - `codec` is the default wire codec of commits (`none`, `fp16`, `int8`, `topk:0.01`, ...).
    """

    name: str
    summary: str
    options: Sequence[Option]
    rule: Callable[[Mapping[str, Any], int], RuleChoice | None]
    worker: Callable[[WorkerContext], None]
    synchronous: bool = False
    single_partition: bool = False
    worker_optimizer: str | Mapping[str, Any] | Callable[[Mapping[str, Any]], Any] = "adam"
    description: str = ""
    combine: Callable[[Any, list[bytes]], Any] | None = None
    codec: str = "none"

    def __post_init__(self) -> None:
        names = [o.name for o in self.options]
        if len(set(names)) != len(names):
            raise PluginError(f"optimizer {self.name} declares an option twice")
        for o in self.options:
            o.parse(o.default)  # a spec whose defaults are invalid is a plugin bug: fail at load

    def option_names(self) -> list[str]:
        return [o.name for o in self.options]

    def parse_options(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults updated by `given`; an unknown or ill-typed option is an error naming the valid ones."""
        by_name = {o.name: o for o in self.options}
        unknown = sorted(set(given) - set(by_name))
        if unknown:
            valid = ", ".join(self.option_names()) or "none"
            raise OptionError(f"{self.name} has no option {', '.join(unknown)}; its options: {valid}")
        return {name: o.parse(given[name]) if name in given else o.default for name, o in by_name.items()}

    def worker_optimizer_for(self, options: Mapping[str, Any]) -> Any:
        """The default Keras optimizer (name or config) for these options."""
        wo = self.worker_optimizer
        return wo(options) if callable(wo) else wo

    def rule_for(self, options: Mapping[str, Any], num_workers: int) -> RuleChoice | None:
        """The rule for these options, its parameters checked by the core (a `rho` that makes
        `alpha` too large for float32 is an error here, before anything runs)."""
        choice = self.rule(options, num_workers)
        if choice is None:
            return None
        if choice.name not in RULES:
            raise PluginError(
                f"optimizer {self.name} asks for unknown rule {choice.name!r}; rules: {', '.join(RULES)}"
            )
        try:
            Centre(np.zeros(1, np.float32), choice.name, dict(choice.params))
        except InvalidArgumentError as e:
            raise OptionError(f"{self.name} with these options: {e}") from None
        return choice
