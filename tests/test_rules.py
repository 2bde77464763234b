"""Every update rule, driven over loopback by several workers, against a NumPy model of its formula
(docs/rules.md). The workers' operations are interleaved by hypothesis."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distkeras_plus import Centre, Client, CommitRejectedError, Layout, ParameterServer
from distkeras_plus.ps.serve import new_secret

N = 257
WORKERS = 3
ops = st.lists(
    st.tuples(st.integers(0, WORKERS - 1), st.sampled_from(["pull", "commit"])), min_size=1, max_size=30
)

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


@dataclass
class Model:
    """The NumPy side: centre `C` (float64), clock `u`, and per worker (clock, centre) of its last pull."""

    C: F64
    u: int = 0
    pulled: dict[int, tuple[int, F64]] = field(default_factory=dict)

    def staleness(self, w: int) -> int:
        return self.u - self.pulled[w][0]


Rule = Callable[[F64, F32, int, Model], tuple[F64, F64 | None]]


def run_script(
    rule: str, params: dict[str, float], script: list[tuple[int, str]], model_commit: Rule
) -> None:
    """Plays `script` against a real server and against `model_commit`, comparing after every step."""
    rng = np.random.default_rng(len(script))
    init = rng.standard_normal(N).astype(np.float32)
    secret = new_secret()
    model = Model(init.astype(np.float64))
    model.pulled = {w: (0, model.C.copy()) for w in range(WORKERS)}
    with ParameterServer(Centre(init, rule, params), Layout.flat(N), secret) as server:
        clients = [Client(f"127.0.0.1:{server.port}", secret, Layout.flat(N), w) for w in range(WORKERS)]
        buf = np.zeros(N, dtype=np.float32)
        reply = np.zeros(N, dtype=np.float32)
        for w, op in script:
            if op == "pull":
                clock = clients[w].pull(buf)
                assert clock == model.u
                np.testing.assert_allclose(buf, model.C, rtol=1e-5, atol=1e-5)
                model.pulled[w] = (model.u, model.C.copy())
            else:
                d = (rng.standard_normal(N) * 0.1).astype(np.float32)
                kwargs = {"out": reply} if clients[w].replies_with_vector else {}
                clock, staleness = clients[w].commit(d, **kwargs)
                expected_tau = model.staleness(w)
                model.C, expected_reply = model_commit(model.C, d, w, model)
                model.u += 1
                assert (clock, staleness) == (model.u, expected_tau)
                if expected_reply is not None:
                    np.testing.assert_allclose(reply, expected_reply, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(server.centre.to_numpy(), model.C, rtol=1e-5, atol=1e-5)
        for c in clients:
            c.close()


@settings(max_examples=20, deadline=None)
@given(ops, st.sampled_from([1.0, 0.25]))
def test_add_with_scale(script: list[tuple[int, str]], scale: float) -> None:
    run_script("add", {"scale": scale}, script, lambda C, d, w, m: (C + scale * d, None))


@settings(max_examples=20, deadline=None)
@given(ops)
def test_dynsgd_divides_by_staleness_plus_one(script: list[tuple[int, str]]) -> None:
    def rule(C: F64, d: F32, w: int, m: Model) -> tuple[F64, None]:
        return C + d / (m.staleness(w) + 1), None

    run_script("dynsgd", {}, script, rule)


@settings(max_examples=20, deadline=None)
@given(ops)
def test_adaptive_scales_each_weight_by_its_drift(script: list[tuple[int, str]]) -> None:
    gamma = 0.01
    # The adaptive rule needs each worker to have pulled once: start every script with pulls.
    script = [(w, "pull") for w in range(WORKERS)] + script

    def rule(C: F64, d: F32, w: int, m: Model) -> tuple[F64, None]:
        sent = m.pulled[w][1]
        return C + d / ((C - sent) ** 2 / gamma + 1), None

    run_script("adaptive", {"gamma": gamma}, script, rule)


@settings(max_examples=20, deadline=None)
@given(ops, st.sampled_from([0.5, 0.1]))
def test_elastic_moves_the_centre_toward_the_worker(script: list[tuple[int, str]], alpha: float) -> None:
    def rule(C: F64, w_weights: F32, w: int, m: Model) -> tuple[F64, F64]:
        e = alpha * (w_weights - C)
        return C + e, e

    run_script("elastic", {"alpha": alpha}, script, rule)


def test_adaptive_refuses_a_commit_before_any_pull() -> None:
    secret = new_secret()
    with ParameterServer(Centre(np.zeros(N, np.float32), "adaptive"), Layout.flat(N), secret) as server:
        with Client(f"127.0.0.1:{server.port}", secret, Layout.flat(N), 0) as c:
            with pytest.raises(CommitRejectedError, match="pull"):
                c.commit(np.ones(N, np.float32))


def sync_rounds(
    rule_scale: float, rounds: int, make_delta: Callable[[int, int, F32], F32]
) -> tuple[list[F32], F32]:
    """Runs `rounds` synchronous rounds with WORKERS threads; returns each worker's final reply."""
    secret = new_secret()
    init = (np.arange(N) / N).astype(np.float32)
    centre = Centre(init, "sync", {"workers": WORKERS, "scale": rule_scale})
    finals: list[F32] = [np.zeros(N, np.float32) for _ in range(WORKERS)]
    errors: list[BaseException] = []
    with ParameterServer(centre, Layout.flat(N), secret) as server:

        def worker(w: int) -> None:
            try:
                with Client(f"127.0.0.1:{server.port}", secret, Layout.flat(N), w) as c:
                    current = init.copy()
                    for r in range(rounds):
                        clock, _ = c.commit(make_delta(w, r, current), out=finals[w])
                        assert clock == r + 1
                        current = finals[w].copy()
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(w,)) for w in range(WORKERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors
    return finals, init


def worker_weights(w: int, r: int) -> F32:
    return np.random.default_rng(100 * r + w).standard_normal(N).astype(np.float32)


def test_sync_averaging_is_the_mean_every_round() -> None:
    # Model averaging: each worker sends W_i - C with scale 1/n, so C becomes mean_i W_i each round
    # (the original never reset its buffer: from round 2 its "mean" included the previous one).
    rounds = 4
    finals, _ = sync_rounds(1 / WORKERS, rounds, lambda w, r, c: worker_weights(w, r) - c)
    expected = np.mean([worker_weights(w, rounds - 1) for w in range(WORKERS)], axis=0)
    for f in finals:
        np.testing.assert_allclose(f, expected, rtol=1e-5, atol=1e-5)


def test_sync_easgd_sums_the_elastic_differences() -> None:
    alpha, rounds = 0.3, 3
    finals, init = sync_rounds(1.0, rounds, lambda w, r, c: alpha * (worker_weights(w, r) - c))
    C = init.astype(np.float64)
    for r in range(rounds):
        C = C + sum(alpha * (worker_weights(w, r) - C) for w in range(WORKERS))
    for f in finals:
        np.testing.assert_allclose(f, C, rtol=1e-4, atol=1e-5)


def test_local_centre_commit_matches_numpy() -> None:
    init = np.linspace(-1, 1, N).astype(np.float32)
    centre = Centre(init, "add", {"scale": 0.5})
    d = np.full(N, 2.0, dtype=np.float32)
    assert centre.commit(d) == (1, 0)
    assert centre.commit(d, last_pull_clock=1) == (2, 0)
    np.testing.assert_allclose(centre.to_numpy(), init + 2.0, rtol=1e-6)
    assert centre.rule == "add" and centre.rule_params == {"scale": 0.5}


@pytest.mark.parametrize(
    ("rule", "params", "message"),
    [
        ("nesterov", {}, "valid rules"),
        ("add", {"alpha": 1.0}, "scale"),
        ("elastic", {}, "alpha"),
        ("sync", {"workers": 2.5}, "whole number"),
        ("adaptive", {"gamma": -1.0}, "> 0"),
    ],
)
def test_bad_rules_are_clear_errors(rule: str, params: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Centre(np.zeros(3, np.float32), rule, params)
