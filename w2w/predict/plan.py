"""The geometry of a prediction block: its read window and the global chips that cover it.

A block's read window is the block plus every chip of the global chip grid that touches it,
padded to one fixed size, so that every row of the Ray dataset has the same tensor shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from w2w.core.windows import ChipGrid, Window


@dataclass(frozen=True)
class BlockPlan:
    """Grid size, block size and chip grid: what every prediction stage needs to agree on."""

    height: int
    width: int
    block: int
    chip: int
    stride: int

    @property
    def chip_grid(self) -> ChipGrid:
        """The scene's global chip grid."""
        return ChipGrid(self.height, self.width, self.chip, self.stride)

    @property
    def halo_before(self) -> int:
        """Pixels read before a block's start: chips that start there still reach the block."""
        return self.chip_grid.halo

    @property
    def window_size(self) -> int:
        """Edge of the read window of every block (edge blocks are padded to it)."""
        return self.halo_before + self.block - self.stride + self.chip

    def window(self, block: Window) -> Window:
        """The read window of a block (may reach past the scene's edges)."""
        return Window(
            block.row - self.halo_before,
            block.col - self.halo_before,
            self.window_size,
            self.window_size,
        )

    def chips(self, block: Window) -> list[Window]:
        """The chips of the global grid that touch ``block``, row-major (in scene pixels)."""
        return self.chip_grid.touching(block)


def batch_windows(batch: dict[str, np.ndarray]) -> list[Window]:
    """The block windows of a Ray Data batch (columns ``row``, ``col``, ``height``,
    ``width``)."""
    return [
        Window(int(r), int(c), int(h), int(w))
        for r, c, h, w in zip(
            batch["row"], batch["col"], batch["height"], batch["width"], strict=True
        )
    ]


def batch_column(arrays: list[np.ndarray]) -> np.ndarray:
    """A batch column from the blocks' arrays, one row per block. A batch of one block (the
    usual case) gets a view with a leading axis, not a copy: a read block with its halo is
    ~20 MB, and stacking it cost ~8 ms of CPU before Ray copied it again into the object
    store."""
    if len(arrays) == 1:
        return arrays[0][np.newaxis]
    return np.stack(arrays)


def blend_weights(size: int) -> np.ndarray:
    """(size, size) smooth weights: a separable Hann window with a small floor, so chip edges
    count little but pixels covered by a single chip (the scene's border) still count."""
    i = (np.arange(size) + 0.5) / size
    w1 = np.maximum(np.sin(np.pi * i) ** 2, 1e-3)
    return np.outer(w1, w1).astype(np.float32)
