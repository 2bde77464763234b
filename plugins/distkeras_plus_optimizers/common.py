"""Options shared by several built-in optimizers."""

from __future__ import annotations

from distkeras_plus import Option


def window(default: int) -> Option:
    return Option(
        "window", int, default, "local steps between exchanges with the parameter server", minimum=1
    )


def sgd(learning_rate: float, momentum: float = 0.0, nesterov: bool = False) -> dict[str, object]:
    """A Keras SGD optimizer config."""
    return {
        "class_name": "SGD",
        "config": {"learning_rate": learning_rate, "momentum": momentum, "nesterov": nesterov},
    }


def adam(learning_rate: float) -> dict[str, object]:
    """A Keras Adam optimizer config."""
    return {"class_name": "Adam", "config": {"learning_rate": learning_rate}}
