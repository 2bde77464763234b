"""Each built-in optimizer's rule, step by step: real worker loops (in threads, with a real Keras
model) against a real parameter server; every commit the workers sent and every centre they
received is checked against a NumPy replay of the formula in docs/algorithms.md."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from harness import Run, run_threads

from distkeras_plus.data.datasets import default_model, digits
from distkeras_plus.plugins import registry

ATOL = 1e-5


@pytest.fixture(scope="module")
def parts() -> list[tuple[np.ndarray, np.ndarray]]:
    ds = digits()
    # Uneven partitions (60 and 45 samples): the smaller worker runs out of data first.
    return [(ds.x_train[:60], ds.y_train[:60]), (ds.x_train[60:105], ds.y_train[60:105])]


def model() -> Any:
    return default_model(64, 10, seed=1)


def events(run: Run, worker: int) -> list[dict[str, Any]]:
    return [e for e in run.log if e["worker"] == worker]


def annotate_commits(
    run: Run, workers: int, check: Callable[[dict[str, Any], dict[str, Any], dict[str, Any], int], None]
) -> None:
    """Walks each worker's own sequence: for each commit, `check(commit, last_pull, last_weights, k)`
    with k the local steps since the previous exchange; remembers the pull each commit follows."""
    for w in range(workers):
        pull: dict[str, Any] = {}
        weights: dict[str, Any] = {}
        steps_at_exchange = 0
        for e in events(run, w):
            if e["op"] == "pull":
                pull = e
            elif e["op"] == "weights":
                weights = e
            else:
                k = weights["steps"] - steps_at_exchange
                steps_at_exchange = weights["steps"]
                check(e, pull, weights, k)
                e["pull"] = pull


def replay_async(run: Run, apply: Callable[[np.ndarray, dict[str, Any]], np.ndarray]) -> None:
    """Applies the commits in the server's clock order; checks staleness, every pull and the end."""
    commits = sorted((e for e in run.log if e["op"] == "commit"), key=lambda e: e["clock"])
    assert [c["clock"] for c in commits] == list(range(1, len(commits) + 1))
    states = [run.initial.astype(np.float64)]
    for c in commits:
        assert c["staleness"] == c["clock"] - 1 - c["pull"]["clock"]
        states.append(apply(states[-1], c))
    for p in (e for e in run.log if e["op"] == "pull"):
        np.testing.assert_allclose(p["centre"], states[p["clock"]], atol=ATOL)
    np.testing.assert_allclose(run.centre, states[-1], atol=ATOL)


def total_steps(parts: list[tuple[np.ndarray, np.ndarray]], epochs: int, batch: int = 8) -> list[int]:
    return [epochs * math.ceil(len(x) / batch) for x, _ in parts]


@pytest.mark.parametrize(
    ("optimizer", "normalize"),
    [("downpour", False), ("adag", True), ("dynsgd", False), ("adag-adaptive", True)],
)
def test_delta_optimizers(
    optimizer: str, normalize: bool, parts: list[tuple[np.ndarray, np.ndarray]]
) -> None:
    epochs, window = 2, 3
    run = run_threads(optimizer, model(), parts, {"window": window}, epochs=epochs)
    committed_steps = [0, 0]

    def worker_rule(commit: dict[str, Any], pull: dict[str, Any], weights: dict[str, Any], k: int) -> None:
        assert 1 <= k <= window
        committed_steps[commit["worker"]] += k
        expected = weights["w"] - pull["centre"]
        if normalize:
            expected = expected / k
        np.testing.assert_allclose(commit["values"], expected, atol=1e-6)

    annotate_commits(run, 2, worker_rule)
    # Every local step was committed, the last partial window included (original defect 6).
    assert committed_steps == total_steps(parts, epochs) == [c.steps for c in run.contexts]

    def server_rule(C: np.ndarray, c: dict[str, Any]) -> np.ndarray:
        D: np.ndarray = c["values"].astype(np.float64)
        if optimizer == "dynsgd":
            D = D / (c["staleness"] + 1)
        elif optimizer == "adag-adaptive":
            sent: np.ndarray = c["pull"]["centre"]
            D = D / ((C - sent) ** 2 / 1e-4 + 1)
        out: np.ndarray = C + D
        return out

    replay_async(run, server_rule)


@pytest.mark.parametrize("optimizer", ["aeasgd", "eamsgd"])
def test_elastic_optimizers(optimizer: str, parts: list[tuple[np.ndarray, np.ndarray]]) -> None:
    opts = {"window": 4, "rho": 2.0, "learning_rate": 0.05}
    alpha = 0.1
    run = run_threads(optimizer, model(), parts, opts, epochs=2)

    def worker_rule(commit: dict[str, Any], pull: dict[str, Any], weights: dict[str, Any], k: int) -> None:
        np.testing.assert_array_equal(commit["values"], weights["w"])  # the worker sends W

    annotate_commits(run, 2, worker_rule)

    def server_rule(C: np.ndarray, c: dict[str, Any]) -> np.ndarray:
        E: np.ndarray = alpha * (c["values"].astype(np.float64) - C)
        np.testing.assert_allclose(c["reply"], E, atol=ATOL)  # the worker gets E back and does W -= E
        out: np.ndarray = C + E
        return out

    # Elastic commits carry weights, not a pull clock: staleness is counted from the first pull.
    replay_async(run, server_rule)


def replay_sync(run: Run, workers: int, scale: float) -> list[np.ndarray]:
    commits = [e for e in run.log if e["op"] == "commit"]
    rounds = max(c["clock"] for c in commits)
    states = [run.initial.astype(np.float64)]
    for r in range(1, rounds + 1):
        members = [c for c in commits if c["clock"] == r]
        assert sorted(c["worker"] for c in members) == list(range(workers))
        states.append(states[-1] + scale * sum(c["values"].astype(np.float64) for c in members))
        for c in members:
            np.testing.assert_allclose(c["reply"], states[r], atol=ATOL)
    np.testing.assert_allclose(run.centre, states[-1], atol=ATOL)
    return states


def test_averaging_takes_the_mean_every_round(parts: list[tuple[np.ndarray, np.ndarray]]) -> None:
    epochs = 3
    run = run_threads("averaging", model(), parts, {}, epochs=epochs)  # window 0: once per epoch
    states = replay_sync(run, 2, 0.5)
    assert len(states) == epochs + 1
    for w in range(2):
        own = events(run, w)
        commits = [e for e in own if e["op"] == "commit"]
        weights = [e for e in own if e["op"] == "weights"]
        for r, (c, wt) in enumerate(zip(commits, weights, strict=True)):
            np.testing.assert_allclose(c["values"], wt["w"] - states[r], atol=1e-6)  # D_i = W_i - C
    # C = mean_i W_i every round: the round sum is reset (original defect 2).
    for r in range(1, epochs + 1):
        round_weights = [[e["w"] for e in events(run, w) if e["op"] == "weights"][r - 1] for w in range(2)]
        np.testing.assert_allclose(states[r], np.mean(round_weights, axis=0), atol=ATOL)
    # Every worker trained on all of its data (original defect 1).
    assert [c.steps for c in run.contexts] == total_steps(parts, epochs)


def test_easgd_descends_and_sums_elastic_differences(parts: list[tuple[np.ndarray, np.ndarray]]) -> None:
    opts = {"window": 3, "rho": 2.0, "learning_rate": 0.05}
    run = run_threads("easgd", model(), parts, opts, epochs=2)
    states = replay_sync(run, 2, 1.0)
    for w in range(2):
        own = events(run, w)
        commits = [e for e in own if e["op"] == "commit"]
        weights = [e for e in own if e["op"] == "weights"]
        for r, (c, wt) in enumerate(zip(commits, weights, strict=True)):
            np.testing.assert_allclose(c["values"], 0.1 * (wt["w"] - states[r]), atol=1e-6)
    # Both workers took part in every round, the one with less data too.
    per_epoch = max(math.ceil(len(x) / 8) for x, _ in parts)
    assert len(states) - 1 == 2 * math.ceil(per_epoch / 3)


def test_easgd_local_steps_lower_the_loss(parts: list[tuple[np.ndarray, np.ndarray]]) -> None:
    # The original's synchronous EASGD ascended the gradient (defect 4).
    run = run_threads("easgd", model(), parts, {"window": 4}, epochs=3)
    for ctx in run.contexts:
        losses = [h["loss"] for h in ctx.history if h["loss"] is not None]
        assert losses[-1] < losses[0]


def test_eamsgd_uses_nesterov_at_the_look_ahead_point() -> None:
    # v = mu v - lr grad(W + mu v); W += v. Keras' SGD(nesterov=True) keeps W' = W + mu v
    # (the look-ahead point) as its variable: check it follows that on f(w) = w^2 / 2.
    import keras

    spec = registry.get("eamsgd").spec
    config = spec.worker_optimizer_for(spec.parse_options({"learning_rate": 0.1, "momentum": 0.9}))
    opt = keras.optimizers.get(config)
    var = keras.Variable(np.array([1.0, -2.0], np.float32))
    theta, v = np.array([1.0, -2.0]), np.zeros(2)
    for _ in range(10):
        opt.apply_gradients([(var.value, var)])  # grad of w^2/2 at the variable's value
        v = 0.9 * v - 0.1 * (theta + 0.9 * v)
        theta = theta + v
        np.testing.assert_allclose(np.asarray(var.value), theta + 0.9 * v, rtol=1e-5, atol=1e-6)


def test_ensemble_averages_independent_members(parts: list[tuple[np.ndarray, np.ndarray]]) -> None:
    m = model()
    run = run_threads("ensemble", m, parts, {"seed": 5}, epochs=1)
    results = [c.result for c in run.contexts if c.result is not None]
    assert len(results) == 2
    assert results[0] != results[1]  # different seeds and data: different members
    spec = registry.get("ensemble").spec
    assert spec.combine is not None
    ensemble = spec.combine(m, results)
    members = [layer for layer in ensemble.layers if layer.name.startswith("member_")]
    x = parts[0][0][:5]
    expected = np.mean([member.predict(x, verbose=0) for member in members], axis=0)
    np.testing.assert_allclose(ensemble.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)
    assert [c.steps for c in run.contexts] == total_steps(parts, 1)
