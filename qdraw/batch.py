"""StrokeBatch: the public batch protocol between datasets, transforms and render stages (plain arrays, no torch).

A dataset's ``__getitems__(indices)`` returns one (qdraw.dataset); a transform maps one to another, as a pure
function of ``(batch, seed, epoch)`` and each item's key (qdraw.augment); a render stage turns one into the model's
input tensor (qdraw.render: pictures for CNNs, padded point sequences for models that read strokes). Arrays:

    xy        uint8 (P, 2)    point coordinates in the store's 0..255 frame, drawing after drawing
    t         int32 (P,)      ms since the drawing's first point (raw stores), or None (simplified)
    strokes   int64 (S + 1,)  point offsets of each stroke (strokes[0] = 0, strokes[-1] = P)
    drawings  int64 (B + 1,)  stroke offsets of each drawing (drawings[0] = 0, drawings[-1] = S)
    labels    int64 (B,)      class index, -1 for an unlabelled test drawing
    keys      int64 (B,)      each item's key: its index in the dataset's epoch, which transforms hash with
                              (seed, epoch), so an item is augmented alike in any batch, thread or process

Example (one drawing of two strokes, a 3-point line and a dot)::

    StrokeBatch(xy=np.array([[0, 0], [10, 0], [10, 10], [5, 5]], np.uint8), t=None,
                strokes=np.array([0, 3, 4]), drawings=np.array([0, 2]), labels=np.array([0]), keys=np.array([0]))
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .raster import check_packed


@dataclass
class StrokeBatch:
    """A batch of packed drawings with labels and item keys (module docstring)."""

    xy: np.ndarray
    t: np.ndarray | None
    strokes: np.ndarray
    drawings: np.ndarray
    labels: np.ndarray
    keys: np.ndarray

    def __len__(self) -> int:
        return len(self.drawings) - 1

    def with_points(self, xy: np.ndarray, t: np.ndarray | None, strokes: np.ndarray,
                    drawings: np.ndarray) -> "StrokeBatch":
        """The same items (labels, keys) with new packed strokes: what a transform returns."""
        return replace(self, xy=xy, t=t, strokes=strokes, drawings=drawings)

    def check(self) -> "StrokeBatch":
        """ValueError unless the arrays hold together (offsets inside the arrays, one label and key per drawing)."""
        check_packed(self.xy, self.t, self.strokes, self.drawings)
        if len(self.labels) != len(self) or len(self.keys) != len(self):
            raise ValueError(f"a batch of {len(self)} drawings needs as many labels and keys, got "
                             f"{len(self.labels)} and {len(self.keys)}")
        return self
