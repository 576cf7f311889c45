"""The pixel grid of a scene and the windows (chips, blocks, halos) laid on it.

A :class:`Grid` is an immutable value: CRS, affine transform and shape. Windows are values
too (:class:`Window`), in pixel coordinates of the grid; a window may reach past the grid's
edges (a padded chip, a block's halo), and readers fill what lies outside.

Two tilings matter and both cover every pixel:

* the **chip grid**: chips of ``size`` every ``stride`` pixels, anchored at pixel (0, 0) of
  the scene -- never at the block being processed -- so that the prediction for a pixel
  depends only on the chips that cover it (ARCHITECTURE.md, "the chip grid is global").
  The last chip of a row or column reaches past the edge and is padded.
* the **block grid**: non-overlapping blocks that tile the grid, the last ones clipped at the
  edges; blocks are the unit of parallel work and each owns whole store chunks.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window as RioWindow

from w2w.errors import GridMismatchError, InputError


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

    def pad(self, n: int) -> Window:
        """This window grown by ``n`` pixels on every side (a halo); may reach past edges."""
        return Window(self.row - n, self.col - n, self.height + 2 * n, self.width + 2 * n)

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

    def to_rasterio(self) -> RioWindow:
        """The same window as a ``rasterio.windows.Window``."""
        return RioWindow(self.col, self.row, self.width, self.height)

    def to_dict(self) -> dict[str, int]:
        """Plain dict, for Ray rows and JSON."""
        return {"row": self.row, "col": self.col, "height": self.height, "width": self.width}


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


def _covering_range(start: int, stop: int, size: int, stride: int, count: int) -> range:
    """Indices of the chips (of ``count`` along the axis) that overlap pixels [start, stop)."""
    first = (start - size) // stride + 1
    last = -(-stop // stride)  # ceil(stop / stride), exclusive
    return range(max(first, 0), min(last, count))


@dataclass(frozen=True)
class Grid:
    """The pixel grid of a scene: CRS (as WKT), affine transform and shape (height, width)."""

    crs_wkt: str
    transform: Affine
    height: int
    width: int

    def __post_init__(self) -> None:
        if self.height <= 0 or self.width <= 0:
            raise InputError(
                f"raster has zero size ({self.height} x {self.width} px); "
                "give a raster with at least one pixel"
            )
        if not isinstance(self.transform, Affine):
            object.__setattr__(self, "transform", Affine(*self.transform[:6]))

    # -- construction and serialisation ---------------------------------------------------

    @classmethod
    def from_rasterio(cls, dataset: Any) -> Grid:
        """The grid of an open rasterio dataset."""
        if dataset.crs is None:
            raise InputError(
                f"{dataset.name}: the raster has no CRS; assign one (e.g. `gdal_edit.py -a_srs "
                "EPSG:xxxx`) before ingesting"
            )
        return cls(dataset.crs.to_wkt(), dataset.transform, dataset.height, dataset.width)

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> Grid:
        """Rebuild a grid from :meth:`to_attrs`."""
        height, width = attrs["shape"]
        return cls(attrs["crs_wkt"], Affine(*attrs["transform"]), int(height), int(width))

    def to_attrs(self) -> dict[str, Any]:
        """JSON-serialisable description: WKT2 CRS, 6 affine coefficients, shape."""
        return {
            "crs_wkt": self.crs_wkt,
            "transform": list(self.transform)[:6],
            "shape": [self.height, self.width],
        }

    # -- geometry --------------------------------------------------------------------------

    @cached_property
    def crs(self) -> CRS:
        """The CRS as a rasterio object."""
        return CRS.from_wkt(self.crs_wkt)

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return self.height, self.width

    @property
    def res(self) -> tuple[float, float]:
        """Pixel size (x, y) in CRS units, both positive."""
        return abs(self.transform.a), abs(self.transform.e)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in CRS units."""
        x0, y0 = self.transform @ (0, 0)
        x1, y1 = self.transform @ (self.width, self.height)
        return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)

    @property
    def full_window(self) -> Window:
        """The window covering the whole grid."""
        return Window(0, 0, self.height, self.width)

    @property
    def pixel_area_m2(self) -> float | None:
        """Area of one pixel in square metres, or ``None`` for a non-metric CRS."""
        crs = self.crs
        if not crs.is_projected:
            return None
        factor = crs.linear_units_factor[1] if crs.linear_units_factor else 1.0
        return abs(self.transform.a * self.transform.e - self.transform.b * self.transform.d) * (
            factor**2
        )

    def window_transform(self, window: Window) -> Affine:
        """The affine transform of a window's top-left pixel."""
        return self.transform @ Affine.translation(window.col, window.row)

    def window_grid(self, window: Window) -> Grid:
        """The grid of a sub-window (same CRS and resolution)."""
        return Grid(self.crs_wkt, self.window_transform(window), window.height, window.width)

    def describe(self) -> str:
        """A short human description, used in error messages that compare grids."""
        crs = self.crs
        epsg = crs.to_epsg(confidence_threshold=70)
        name = f"EPSG:{epsg}" if epsg else (crs.to_string()[:60] or "unnamed CRS")
        t = self.transform
        return (
            f"{name}, {self.width} x {self.height} px, pixel {t.a:g} x {t.e:g}, "
            f"origin ({t.c:.6f}, {t.f:.6f})"
        )

    # -- tilings ---------------------------------------------------------------------------

    def chip_windows(self, size: int, stride: int) -> list[Window]:
        """Every chip of the global chip grid, row-major; together they cover every pixel."""
        rows = chip_origins(self.height, size, stride)
        cols = chip_origins(self.width, size, stride)
        return [Window(int(r), int(c), size, size) for r in rows for c in cols]

    def chip_grid_shape(self, size: int, stride: int) -> tuple[int, int]:
        """Number of chips along (rows, columns)."""
        return (
            len(chip_origins(self.height, size, stride)),
            len(chip_origins(self.width, size, stride)),
        )

    def chips_touching(self, window: Window, size: int, stride: int) -> list[Window]:
        """The chips of the global chip grid that overlap ``window`` (row-major)."""
        n_rows, n_cols = self.chip_grid_shape(size, stride)
        rows = _covering_range(window.row, window.row_stop, size, stride, n_rows)
        cols = _covering_range(window.col, window.col_stop, size, stride, n_cols)
        return [Window(i * stride, j * stride, size, size) for i in rows for j in cols]

    def block_windows(self, block_height: int, block_width: int | None = None) -> list[Window]:
        """Non-overlapping blocks tiling the grid, row-major; edge blocks are clipped."""
        return list(self.iter_blocks(block_height, block_width))

    def iter_blocks(self, block_height: int, block_width: int | None = None) -> Iterator[Window]:
        """Like :meth:`block_windows`, lazily."""
        bw = block_width or block_height
        if block_height <= 0 or bw <= 0:
            raise ValueError(f"block size must be positive, got {block_height} x {bw}")
        for r in range(0, self.height, block_height):
            for c in range(0, self.width, bw):
                yield Window(r, c, min(block_height, self.height - r), min(bw, self.width - c))

    # -- comparison ------------------------------------------------------------------------

    def crs_relation(self, other: Grid) -> Literal["equal", "equivalent", "different"]:
        """How two grids' CRSs relate: identical, the same projection on another realisation
        of the same datum (e.g. NAD83 vs NAD83(HARN)), or different.
        """
        return crs_relation(self.crs_wkt, other.crs_wkt)

    def same_pixels(self, other: Grid, tolerance: float = 1e-6) -> bool:
        """Whether both grids have the same shape and transform (within ``tolerance`` px)."""
        if self.shape != other.shape:
            return False
        res = max(self.res)
        return all(
            abs(a - b) <= tolerance * res
            for a, b in zip(list(self.transform)[:6], list(other.transform)[:6], strict=True)
        )

    def check_matches(self, other: Grid, *, what: str, fix: str) -> str | None:
        """Raise :class:`GridMismatchError` unless ``other`` lies on this grid.

        Returns a warning text when the CRSs are only equivalent (same projection, another
        realisation of the datum), else ``None``.
        """
        relation = self.crs_relation(other)
        if relation == "different" or not self.same_pixels(other):
            raise GridMismatchError(
                f"{what} is on another grid: image grid is [{self.describe()}], {what} grid is "
                f"[{other.describe()}]; {fix}"
            )
        if relation == "equivalent":
            return (
                f"{what} CRS is an equivalent realisation of the image CRS "
                f"([{other.describe()}] vs [{self.describe()}]); using it as is"
            )
        return None


def crs_relation(wkt_a: str, wkt_b: str) -> Literal["equal", "equivalent", "different"]:
    """Compare two CRSs: ``equal``; ``equivalent`` when they share the projection (method and
    parameters), the ellipsoid and the units but name another datum realisation; else
    ``different``.
    """
    from pyproj import CRS as PyprojCRS  # noqa: N811 - rasterio owns the name CRS here

    a, b = PyprojCRS.from_wkt(wkt_a), PyprojCRS.from_wkt(wkt_b)
    if a.equals(b, ignore_axis_order=True):
        return "equal"
    if a.is_projected != b.is_projected or a.ellipsoid is None or b.ellipsoid is None:
        return "different"
    ea, eb = a.ellipsoid, b.ellipsoid
    if not (
        math.isclose(ea.semi_major_metre, eb.semi_major_metre, rel_tol=1e-12)
        and math.isclose(ea.inverse_flattening, eb.inverse_flattening, rel_tol=1e-9)
    ):
        return "different"
    if a.axis_info and b.axis_info and a.axis_info[0].unit_name != b.axis_info[0].unit_name:
        return "different"
    if a.is_projected:
        ca, cb = a.coordinate_operation, b.coordinate_operation
        if ca is None or cb is None or ca.method_name != cb.method_name:
            return "different"
        pa = {p.name: p.value for p in ca.params}
        pb = {p.name: p.value for p in cb.params}
        if pa.keys() != pb.keys() or any(
            not math.isclose(pa[k], pb[k], rel_tol=1e-12, abs_tol=1e-9) for k in pa
        ):
            return "different"
        if (
            a.prime_meridian
            and b.prime_meridian
            and (a.prime_meridian.longitude != b.prime_meridian.longitude)
        ):
            return "different"
    return "equivalent"
