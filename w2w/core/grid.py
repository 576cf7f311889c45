"""The pixel grid of a scene, the windows laid on it, and the two tilings every stage shares.

A :class:`Grid` is an immutable value: CRS, affine transform and shape. Windows
(:class:`Window`, from the pure :mod:`w2w.core.windows`) are values too, in pixel
coordinates of the grid; a window may reach past the grid's edges (a padded chip, a block's
halo), and readers fill what lies outside.

Two tilings cover every pixel, and every stage goes through them (odc-geo's ``GeoboxTiles``
is the model): no stage does its own ``row // block`` arithmetic.

* the **block tiling** (:class:`BlockTiling`, ``grid.blocks(size)``): non-overlapping blocks
  that tile the grid, the last ones clipped at the edges. Blocks are the unit of parallel
  work; each owns whole store chunks (:meth:`BlockTiling.check_one_writer`). Blocks are
  indexed ``(i, j)`` and can be iterated only where a mask of blocks, or a polygon, is set.
* the **chip grid** (:class:`ChipGrid`, ``grid.chips(size, stride)``): chips of ``size``
  every ``stride`` pixels, anchored at pixel (0, 0) of the scene -- never at the block being
  processed -- so that the prediction for a pixel depends only on the chips that cover it
  (ARCHITECTURE.md, "the chip grid is global"). The count is rounded up: the last chip of a
  row or column reaches past the edge and is padded.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from affine import Affine
from rasterio.crs import CRS

from w2w.core.crs import Relation, crs_relation
from w2w.core.errors import ConfigError, GridMismatchError, InputError
from w2w.core.windows import BlockKey, ChipGrid, Window, aligned, chip_origins

__all__ = [
    "BlockKey",
    "BlockTiling",
    "ChipGrid",
    "Grid",
    "Window",
    "aligned",
    "chip_origins",
]


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
        """JSON-serialisable description: WKT CRS, 6 affine coefficients, shape."""
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
        """The grid of a sub-window (same CRS and resolution): what a block task warps onto."""
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

    def blocks(self, block_height: int, block_width: int | None = None) -> BlockTiling:
        """The block tiling of this grid (square blocks unless ``block_width`` is given)."""
        return BlockTiling(self.height, self.width, block_height, block_width or block_height)

    def chips(self, size: int, stride: int) -> ChipGrid:
        """The global chip grid: chips of ``size`` px every ``stride`` px from pixel (0, 0)."""
        return ChipGrid(self.height, self.width, size, stride)

    # -- comparison ------------------------------------------------------------------------

    def crs_relation(self, other: Grid) -> Relation:
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


@dataclass(frozen=True)
class BlockTiling:
    """Non-overlapping blocks of ``block_height`` x ``block_width`` that tile a raster of
    ``height`` x ``width``, indexed ``(i, j)`` (block row, block column), row-major; the last
    row and column of blocks are clipped at the raster's edges."""

    height: int
    width: int
    block_height: int
    block_width: int

    def __post_init__(self) -> None:
        if self.block_height <= 0 or self.block_width <= 0:
            raise ValueError(
                f"block size must be positive, got {self.block_height} x {self.block_width}"
            )

    @property
    def shape(self) -> tuple[int, int]:
        """Number of blocks along (rows, columns)."""
        return -(-self.height // self.block_height), -(-self.width // self.block_width)

    def __len__(self) -> int:
        rows, cols = self.shape
        return rows * cols

    def __getitem__(self, key: BlockKey) -> Window:
        return self.window(*key)

    def window(self, i: int, j: int) -> Window:
        """The pixel window of block ``(i, j)``."""
        rows, cols = self.shape
        if not (0 <= i < rows and 0 <= j < cols):
            raise IndexError(f"block ({i}, {j}) lies outside the {rows} x {cols} blocks")
        r, c = i * self.block_height, j * self.block_width
        return Window(
            r, c, min(self.block_height, self.height - r), min(self.block_width, self.width - c)
        )

    def index(self, window: Window) -> BlockKey:
        """The index ``(i, j)`` of the block that ``window`` starts in."""
        return window.row // self.block_height, window.col // self.block_width

    def keys(self, where: np.ndarray | None = None) -> list[BlockKey]:
        """Block indices, row-major; with ``where`` (bool, of :attr:`shape`) only those it
        marks."""
        rows, cols = self.shape
        if where is None:
            return [(i, j) for i in range(rows) for j in range(cols)]
        if where.shape != (rows, cols):
            raise ValueError(f"a block mask of shape {where.shape} for {rows} x {cols} blocks")
        return [(int(i), int(j)) for i, j in np.argwhere(where)]

    def windows(self, where: np.ndarray | None = None) -> list[Window]:
        """Block windows, row-major; with ``where``, only the blocks it marks."""
        return [self.window(i, j) for i, j in self.keys(where)]

    def __iter__(self) -> Iterator[Window]:
        rows, cols = self.shape
        return (self.window(i, j) for i in range(rows) for j in range(cols))

    def meeting(self, grid: Grid, geometries: list[dict[str, Any]]) -> np.ndarray:
        """(rows, cols) bool: the blocks that GeoJSON ``geometries`` (in ``grid``'s CRS) touch."""
        from rasterio.features import geometry_mask

        coarse = grid.transform @ Affine.scale(self.block_width, self.block_height)
        return ~geometry_mask(geometries, self.shape, coarse, all_touched=True)

    def check_one_writer(
        self,
        unit: tuple[int, int],
        windows: list[Window] | None = None,
        *,
        what: str = "the store's",
    ) -> None:
        """Check that blocks (all of them, or ``windows``) give every write unit (chunk or
        shard, of size ``unit``) exactly one writer (Zarr has no locks: two writers of one
        chunk silently lose data); raises ``ConfigError`` naming ``what`` units."""
        uh, uw = unit
        owners = np.zeros((-(-self.height // uh), -(-self.width // uw)), dtype=np.int64)
        for b in self if windows is None else windows:
            if not aligned(b, unit, (self.height, self.width)):
                raise ConfigError(
                    f"block {b.to_dict()} is not aligned to {what} {uh} x {uw} write units: two "
                    "tasks would write parts of one chunk and lose data; use a block size "
                    "that is a multiple of the chunk (or shard) size"
                )
            owners[b.row // uh : -(-b.row_stop // uh), b.col // uw : -(-b.col_stop // uw)] += 1
        if not (owners == 1).all():
            bad = np.argwhere(owners != 1)[:3].tolist()
            raise ConfigError(
                f"write units {bad} have {owners[tuple(bad[0])]} writers, not one; every chunk "
                "needs exactly one writer"
            )
