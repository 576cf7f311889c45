"""Pixel geometry with no georeferencing: windows, write-unit alignment and the chip grid.

Pure (numpy only), so that the per-block prediction path and the GPU benchmark can use it
on a machine with nothing but PyTorch. :mod:`w2w.core.grid` puts these on a georeferenced
grid and adds the block tiling.

* a :class:`Window` is a rectangle of pixels, a value; it may reach past a raster's edges
  (a padded chip, a block's halo), and readers fill what lies outside;
* the **chip grid** (:class:`ChipGrid`): chips of ``size`` every ``stride`` pixels, anchored
  at pixel (0, 0) of the scene -- never at the block being processed -- so that the
  prediction for a pixel depends only on the chips that cover it (ARCHITECTURE.md, "the chip
  grid is global"). The count is rounded up: the last chip of a row or column reaches past
  the edge and is padded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

BlockKey = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Window:
    """A rectangle of pixels: top-left ``(row, col)`` and ``height`` x ``width``."""

    row: int
    col: int
    height: int
    width: int

    def __post_init__(self) -> None:
        if self.height < 0 or self.width < 0:
            raise ValueError(f"window size must not be negative: {self}")

    @property
    def row_stop(self) -> int:
        """One past the last row."""
        return self.row + self.height

    @property
    def col_stop(self) -> int:
        """One past the last column."""
        return self.col + self.width

    @property
    def size(self) -> int:
        """Number of pixels."""
        return self.height * self.width

    @property
    def slices(self) -> tuple[slice, slice]:
        """(row slice, column slice) for indexing an array laid on the same grid."""
        return slice(self.row, self.row_stop), slice(self.col, self.col_stop)

    def intersect(self, other: Window) -> Window | None:
        """The pixels shared with ``other``, or ``None`` when they do not overlap."""
        r0, c0 = max(self.row, other.row), max(self.col, other.col)
        r1, c1 = min(self.row_stop, other.row_stop), min(self.col_stop, other.col_stop)
        if r1 <= r0 or c1 <= c0:
            return None
        return Window(r0, c0, r1 - r0, c1 - c0)

    def relative_to(self, outer: Window) -> Window:
        """This window in the pixel coordinates of ``outer`` (whose top-left becomes 0, 0)."""
        return Window(self.row - outer.row, self.col - outer.col, self.height, self.width)

    def contains(self, other: Window) -> bool:
        """Whether ``other`` lies wholly inside this window."""
        return (
            self.row <= other.row
            and self.col <= other.col
            and other.row_stop <= self.row_stop
            and other.col_stop <= self.col_stop
        )

    def to_rasterio(self) -> Any:
        """The same window as a ``rasterio.windows.Window``."""
        from rasterio.windows import Window as RioWindow

        return RioWindow(self.col, self.row, self.width, self.height)

    def to_dict(self) -> dict[str, int]:
        """Plain dict, for Ray rows and JSON."""
        return {"row": self.row, "col": self.col, "height": self.height, "width": self.width}


def aligned(window: Window, unit: tuple[int, int], shape: tuple[int, int]) -> bool:
    """Whether ``window`` lies inside a raster of ``shape`` and is made of whole write units
    (chunks or shards) of size ``unit``; units at the raster's edge may be partial."""
    uh, uw = unit
    height, width = shape
    return (
        window.row >= 0
        and window.col >= 0
        and window.row_stop <= height
        and window.col_stop <= width
        and window.row % uh == 0
        and window.col % uw == 0
        and (window.row_stop % uh == 0 or window.row_stop == height)
        and (window.col_stop % uw == 0 or window.col_stop == width)
    )


def chip_origins(length: int, size: int, stride: int) -> np.ndarray:
    """Origins of the chips along one axis of ``length`` pixels; the last may pass the edge.

    Chips start at multiples of ``stride`` from pixel 0 and the count is rounded *up*, so that
    every pixel lies in at least one chip (no dropped last row or column).
    """
    if size <= 0 or stride <= 0:
        raise ValueError(f"chip size and stride must be positive, got {size} and {stride}")
    if stride > size:
        raise ValueError(f"chip stride {stride} exceeds chip size {size}: pixels would be skipped")
    if length <= 0:
        return np.zeros(0, dtype=np.int64)
    count = 1 if length <= size else math.ceil((length - size) / stride) + 1
    return np.arange(count, dtype=np.int64) * stride


@dataclass(frozen=True)
class ChipGrid:
    """The global chip grid of a ``height`` x ``width`` raster: chip ``(i, j)`` starts at pixel
    ``(i * stride, j * stride)`` and is ``size`` px square; the count is rounded up, so every
    pixel lies in a chip and the last chips reach past the edges."""

    height: int
    width: int
    size: int
    stride: int

    def __post_init__(self) -> None:
        chip_origins(1, self.size, self.stride)  # validates size and stride

    @property
    def shape(self) -> tuple[int, int]:
        """Number of chips along (rows, columns)."""
        return (
            len(chip_origins(self.height, self.size, self.stride)),
            len(chip_origins(self.width, self.size, self.stride)),
        )

    @property
    def reach(self) -> int:
        """How many chip steps apart two chips may start and still overlap, minus one: chips
        whose indices differ by at most this along both axes overlap."""
        return math.ceil(self.size / self.stride) - 1

    @property
    def halo(self) -> int:
        """Pixels before a window's start from which chips that reach into it may start."""
        return self.reach * self.stride

    def window(self, i: int, j: int) -> Window:
        """The pixel window of chip ``(i, j)`` (may reach past the raster's edges)."""
        return Window(i * self.stride, j * self.stride, self.size, self.size)

    def windows(self) -> list[Window]:
        """Every chip, row-major; together they cover every pixel."""
        rows, cols = self.shape
        return [self.window(i, j) for i in range(rows) for j in range(cols)]

    def span(self, i0: int, j0: int, i1: int, j1: int) -> Window:
        """The pixels covered by chips ``i0 <= i < i1``, ``j0 <= j < j1``."""
        s, c = self.stride, self.size
        return Window(i0 * s, j0 * s, (i1 - i0 - 1) * s + c, (j1 - j0 - 1) * s + c)

    def covering(self, window: Window) -> tuple[range, range]:
        """The chip rows and columns that overlap ``window``."""
        rows, cols = self.shape
        return (
            _overlapping(window.row, window.row_stop, self.size, self.stride, rows),
            _overlapping(window.col, window.col_stop, self.size, self.stride, cols),
        )

    def touching(self, window: Window) -> list[Window]:
        """The chips that overlap ``window``, row-major."""
        rows, cols = self.covering(window)
        return [self.window(i, j) for i in rows for j in cols]


def _overlapping(start: int, stop: int, size: int, stride: int, count: int) -> range:
    """Indices of the chips (of ``count`` along an axis) that overlap pixels [start, stop)."""
    first = (start - size) // stride + 1
    last = -(-stop // stride)  # ceil(stop / stride), exclusive
    return range(max(first, 0), min(last, count))
