"""A model's weight list as one flat float32 buffer, and back, without copying per tensor in Python."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from distkeras_plus._core import Layout

F32 = npt.NDArray[np.float32]


class FlatWeights:
    """One flat float32 buffer with a view per tensor.

    The views are made once; pulling into `flat` updates every view in place, so handing
    `views` to `model.set_weights` needs no copying or reshaping on the hot path.
    """

    def __init__(self, layout: Layout, flat: F32 | None = None) -> None:
        if flat is None:
            flat = np.zeros(layout.num_params, dtype=np.float32)
        if flat.dtype != np.float32 or flat.shape != (layout.num_params,):
            raise ValueError(f"flat buffer must be float32 of shape ({layout.num_params},)")
        self.layout = layout
        self.flat = flat
        ends = [*layout.offsets[1:], layout.num_params]
        self.views: list[F32] = [
            flat[start:end].reshape(shape)
            for start, end, shape in zip(layout.offsets, ends, layout.shapes, strict=True)
        ]

    @classmethod
    def from_arrays(cls, arrays: Sequence[npt.ArrayLike]) -> FlatWeights:
        """Builds the layout from the arrays' shapes and copies them in."""
        tensors = [np.asarray(a) for a in arrays]
        weights = cls(Layout([list(t.shape) for t in tensors]))
        weights.load(tensors)
        return weights

    def load(self, arrays: Sequence[npt.ArrayLike]) -> None:
        """Copies a weight list (e.g. `model.get_weights()`) into the flat buffer."""
        try:
            self.layout.flatten_into(arrays, self.flat)  # type: ignore[arg-type]
        except TypeError:
            # Not all float32 (mixed precision, float64 inputs): convert, then copy.
            self.layout.flatten_into([np.asarray(a, dtype=np.float32) for a in arrays], self.flat)
