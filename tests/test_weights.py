"""Mapping a Keras-style weight list to the flat buffer and back."""

from __future__ import annotations

import numpy as np
import pytest

from distkeras_plus import FlatWeights, Layout, LayoutMismatchError


def weight_list() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.standard_normal(s).astype(np.float32) for s in [(4, 3), (3,), (3, 2), (2,), ()]]


def test_round_trip_through_views() -> None:
    ws = weight_list()
    flat = FlatWeights.from_arrays(ws)
    assert flat.layout.num_params == sum(w.size for w in ws)
    assert flat.layout.shapes == [list(w.shape) for w in ws]
    np.testing.assert_array_equal(flat.flat, np.concatenate([w.ravel() for w in ws]))
    for view, w in zip(flat.views, ws, strict=True):
        np.testing.assert_array_equal(view, w)


def test_views_follow_the_buffer() -> None:
    flat = FlatWeights.from_arrays(weight_list())
    flat.flat[:] = 7.0  # what a pull into the buffer does
    assert all(np.all(v == 7.0) for v in flat.views)
    assert all(np.shares_memory(v, flat.flat) for v in flat.views if v.size)


def test_load_converts_and_checks() -> None:
    ws = weight_list()
    flat = FlatWeights(Layout([list(w.shape) for w in ws]))
    flat.load([w.astype(np.float64) for w in ws])
    np.testing.assert_allclose(flat.views[0], ws[0])
    flat.load([np.asfortranarray(ws[0]), *ws[1:]])  # non-contiguous input is copied correctly
    np.testing.assert_array_equal(flat.views[0], ws[0])
    with pytest.raises(LayoutMismatchError, match="tensor 0"):
        flat.load([ws[0].T, *ws[1:]])
    with pytest.raises(LayoutMismatchError, match="got 4 tensors"):
        flat.load(ws[:4])


def test_layout_hash_depends_on_shapes_only() -> None:
    assert Layout([[2, 3]]).hash == Layout([[2, 3]]).hash
    assert Layout([[2, 3]]).hash != Layout([[3, 2]]).hash
    assert Layout([[2, 3]]) == Layout([[2, 3]])
    with pytest.raises(ValueError):
        Layout([])
