"""The footprint of an export: the outline of its valid pixels, for the STAC Item.

:class:`FootprintBuilder` is fed the class raster window by window while the export streams
the mosaic (:func:`w2w.export.cog.write_stages`): a window with no valid pixel adds nothing, a
window whose pixels are all valid adds its rectangle, and a partly valid window is split
into tiles of the same kind, so that only tiles the valid area's border crosses are
polygonized (GDAL's polygonize through ``rasterio.features.shapes``). Pieces are kept in
pixel coordinates, whose corners are whole numbers, so their union is exact.
:meth:`FootprintBuilder.outline` then grows the union by a tolerance and simplifies it with
the same tolerance (Douglas-Peucker moves no edge further than the tolerance), so the
outline covers every valid pixel and reaches at most two tolerances beyond them (and never
beyond the raster). The tolerance is half a pixel -- at most one pixel beyond the valid
pixels -- up to rasters of 2000 px; on larger ones a 4000th of the long edge, so a state's
footprint keeps a catalogue-sized number of vertices (:func:`simplify_tolerance`).

:func:`footprint_wgs84` takes that outline to longitude/latitude as STAC wants it: edges
densified so that they stay true after reprojection, rings counter-clockwise (RFC 7946),
and cut at the antimeridian into a MultiPolygon where the map crosses it (the
``antimeridian`` package, as stactools does).

Memory: the pieces of partly valid windows are kept until the end, so memory follows the
length of the valid area's border (the state's boundary and holes of no data), not its area.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import shapely
from affine import Affine
from shapely.geometry import box, mapping, shape
from shapely.geometry.base import BaseGeometry

from w2w.core.grid import Grid, Window

#: The edge of the tiles a partly valid window is polygonized in.
TILE = 256


class FootprintBuilder:
    """Collects the valid area of a raster fed to it window by window, in pixel units."""

    def __init__(self) -> None:
        self._pieces: list[BaseGeometry] = []

    def add(self, window: Window, valid: np.ndarray) -> None:
        """Add one window's valid-pixel mask (``valid`` has the window's shape).

        A partly valid window larger than :data:`TILE` is split into tiles, so that only the
        tiles the valid area's border crosses are polygonized (the rest add a rectangle or
        nothing): the same union, for a cost that follows the border, not the window.
        """
        if not valid.any():
            return
        if valid.all():
            self._pieces.append(
                box(window.col, window.row, window.col + window.width, window.row + window.height)
            )
            return
        if window.height > TILE or window.width > TILE:
            for r in range(0, window.height, TILE):
                for c in range(0, window.width, TILE):
                    h, w = min(TILE, window.height - r), min(TILE, window.width - c)
                    part = Window(window.row + r, window.col + c, h, w)
                    self.add(part, valid[r : r + h, c : c + w])
            return
        from rasterio import features

        offset = Affine.translation(window.col, window.row)
        mask = valid.astype(np.uint8)
        for geom, _ in features.shapes(mask, mask=valid, connectivity=4, transform=offset):
            self._pieces.append(shape(geom))

    def outline(self, height: int, width: int) -> BaseGeometry | None:
        """The valid area grown by half a pixel, simplified, and cut to the raster's
        ``height`` x ``width`` (pixel units); None if no pixel is valid."""
        if not self._pieces:
            return None
        union = shapely.union_all(self._pieces)
        tol = simplify_tolerance(height, width)
        grown = union.buffer(tol, join_style="mitre", mitre_limit=2.0)
        simple = shapely.make_valid(grown.simplify(tol, preserve_topology=True))
        return simple.intersection(box(0, 0, width, height))


def simplify_tolerance(height: int, width: int) -> float:
    """Half a pixel, or a 4000th of the raster's long edge where that is more: a footprint
    of a few thousand vertices at most, whatever the size of the state."""
    return max(0.5, max(height, width) / 4000)


def to_map(geom: BaseGeometry, grid: Grid) -> BaseGeometry:
    """A geometry in pixel units (column, row) in the grid's map coordinates."""
    a = grid.transform
    return shapely.affinity.affine_transform(geom, [a.a, a.b, a.d, a.e, a.c, a.f])


def footprint_wgs84(
    outline: BaseGeometry | None, grid: Grid
) -> tuple[dict[str, Any] | None, list[float] | None]:
    """The outline (pixel units) as a GeoJSON geometry in WGS84, and its bounding box.

    Edges are densified to a tenth of the grid's extent (at least every 64 pixels) before
    reprojection, rings are oriented counter-clockwise, and a footprint that crosses the
    antimeridian is split there.
    """
    if outline is None or outline.is_empty:
        return None, None
    import antimeridian
    from pyproj import Transformer

    step = max(64.0, max(grid.height, grid.width) / 10)
    dense = shapely.segmentize(outline, step)
    # Counter-clockwise in map coordinates stays so in longitude/latitude (both axes keep
    # their sense); oriented here because wrapped longitudes would confuse the test later.
    mapped = shapely.orient_polygons(to_map(dense, grid), exterior_cw=False)
    if not _is_wgs84(grid):
        transformer = Transformer.from_crs(grid.crs_wkt, "EPSG:4326", always_xy=True)
        mapped = shapely.transform(mapped, lambda xy: np.column_stack(transformer.transform(*xy.T)))
    # Longitudes jump from +180 to -180 across the antimeridian: fix_shape splits the
    # polygon there (its rings are already counter-clockwise). A footprint less than 180
    # degrees wide cannot have such a jump, and skips that (pure Python) pass.
    lon = shapely.get_coordinates(mapped)[:, 0]
    if lon.max() - lon.min() < 180:
        fixed = mapped
    else:
        fixed = shape(antimeridian.fix_shape(mapping(mapped), fix_winding=False))
    rounded = shapely.transform(fixed, lambda xy: np.round(xy, 7))
    geometry = shapely.orient_polygons(rounded, exterior_cw=False)
    bbox = (
        list(antimeridian.bbox(mapping(geometry))) if fixed is not mapped else list(geometry.bounds)
    )
    return mapping(geometry), [round(float(v), 7) for v in bbox]


def _is_wgs84(grid: Grid) -> bool:
    crs = grid.crs
    return bool(crs.is_geographic and crs.to_epsg() == 4326)
