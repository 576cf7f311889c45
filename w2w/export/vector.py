"""The class map as polygons (GeoPackage or FlatGeobuf), made block by block and merged
across block borders so that no polygon has a seam.

Every 4-connected patch of one class becomes one polygon (holes where other classes or
nodata lie inside it) with the fields ``class_id`` (int), ``class_name`` (str) and
``area_ha`` (float), in the map's CRS; nodata (255) makes no polygon. The result is the same
set of polygons as GDAL's polygonize of the whole raster at once (``gdal_polygonize`` with
4-connectedness), which is how the tests check it.

How it is made without holding the map in memory. The exported class COG (in the export's
scratch folder) is read one block (a COG tile) at a time, row of blocks by row of blocks:

1. The block's patches are labelled (4-connected, per class) and the label image is
   polygonized by GDAL (``rasterio.features.shapes``) in *pixel* coordinates of the whole
   raster: every vertex is an integer pixel corner, so unions of pieces are exact in floating
   point. Map coordinates are applied only to finished polygons.
2. A polygon that touches no inner block border is finished: it goes to a batch that is
   appended to the output file when it is full (``pyogrio.raw.write(..., append=True)``).
3. A polygon that touches an inner border is a *piece*, kept. The labels along the block's
   edges are compared with the neighbours' (the last row of the block row above, the last
   column of the block to the left): pieces of one class whose pixels meet across a border
   are joined in a union-find.
4. After each row of blocks, every group of joined pieces that does not reach the row's
   bottom border can grow no more: its pieces are unioned and exploded into parts (one
   part: the group is 4-connected through shared edges), which are written. The pieces
   tile the patch without overlap, so the union is GEOS's coverage union (shared edges
   dropped, no overlay; see :func:`merge_pieces`).

Memory bound: one block and its labels, one row of edge labels (the raster's width), a
batch of finished polygons, and the pieces of the groups that are still open -- those that
reach the current row's bottom border. Their number is proportional to the length of the
block borders, not to the map's area; a patch that keeps reaching the next row is held
until it ends, so the largest patch is held whole once (any exact method has to: the file
stores it as one feature). A FlatGeobuf is written as a GeoPackage first and converted at
the end by GDAL (FlatGeobuf cannot be appended to); its spatial index keeps one small entry
per feature while it is built.

``area_ha``: on a projected grid, the polygon's pixel area (exact, from the pixel-corner
polygon) times the pixel's area from the CRS's linear unit; on a geographic grid, the
geodesic area on the CRS's ellipsoid (``pyproj.Geod``) of the polygon with a vertex at every
pixel corner along its edges, so the area does not depend on how many vertices a straight
edge keeps.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import pyogrio.raw
import rasterio
import rasterio.features
import shapely
from affine import Affine
from shapely.geometry.polygon import orient

from w2w.core.classes import CLASS_NODATA, ClassInfo
from w2w.core.errors import InputError
from w2w.core.grid import Grid
from w2w.core.patches import label_patches
from w2w.core.progress import progress_bar
from w2w.core.windows import Window
from w2w.export.config import VECTOR_DRIVERS
from w2w.export.hrefs import file_fields, relative_href

#: Media types of the vector formats (STAC asset ``type``), by file extension.
VECTOR_MEDIA_TYPES = {
    ".gpkg": "application/geopackage+sqlite3",
    ".fgb": "application/vnd.flatgeobuf",
}
FIELDS = ["class_id", "class_name", "area_ha"]
#: A batch of finished polygons is written when it holds this many polygons or vertices.
BATCH_POLYGONS = 50_000
BATCH_VERTICES = 2_000_000


@dataclass(frozen=True)
class VectorFile:
    """A finished vector file in the scratch folder, where it goes and how many polygons it
    holds."""

    target: str
    path: Path
    polygons: int


def split_name(url: str) -> tuple[str, str]:
    """A vector file's stem (its layer name) and lower-case extension (``.gpkg``, ``.fgb``)."""
    stem, dot, ext = url.rstrip("/").rsplit("/", 1)[-1].rpartition(".")
    return (stem, f".{ext.lower()}") if dot else (ext, "")


def export_vector(
    cog: Path,
    work: Path,
    target: str | None,
    classes: Sequence[ClassInfo],
    *,
    block: int,
    progress: bool,
) -> VectorFile | None:
    """Polygonize the exported class COG into ``work`` for the vector target ``target``;
    nothing (``None``) without a target."""
    if target is None:
        return None
    stem, ext = split_name(target)
    path = work / f"vector{ext}"
    count = write_vector(cog, path, classes, block=block, layer=stem, progress=progress)
    return VectorFile(target, path, count)


def vector_asset(vector: str, item: str, path: Path | None = None) -> dict[str, Any]:
    """The STAC asset of the vector file ``vector``, its href relative to the Item ``item``;
    with the finished file's ``path``, its ``file:size`` and ``file:checksum`` too."""
    asset: dict[str, Any] = {
        "href": relative_href(vector, item),
        "type": VECTOR_MEDIA_TYPES[split_name(vector)[1]],
        "title": "Land-cover polygons: class_id, class_name, area_ha",
        "roles": ["data"],
    }
    asset.update(file_fields(path))
    return asset


def write_vector(
    src: Path,
    dst: Path,
    classes: Sequence[ClassInfo],
    *,
    block: int,
    layer: str,
    progress: bool = False,
    batch: int = BATCH_POLYGONS,
) -> int:
    """Polygonize band 1 of the class raster ``src`` (nodata 255) into ``dst`` (GeoPackage or
    FlatGeobuf, by extension), ``block`` x ``block`` pixels at a time (see the module notes),
    writing ``batch`` polygons at a time; returns the number of polygons."""
    driver = VECTOR_DRIVERS[dst.suffix.lower()]
    gpkg = dst if driver == "GPKG" else dst.with_name(f"{dst.stem}.part.gpkg")
    with rasterio.open(src) as ds:
        grid = Grid.from_rasterio(ds)
        sink = _Sink(gpkg, layer, grid, {c.id: c.name for c in classes}, batch)
        tiling = grid.blocks(block)
        rows, cols = tiling.shape
        polygonizer = _Polygonizer(grid, sink, block)
        with progress_bar("vector", total=len(tiling), enabled=progress) as advance:
            for i in range(rows):
                for j in range(cols):
                    window = tiling.window(i, j)
                    polygonizer.add_block(ds.read(1, window=window.to_rasterio()), window)
                    advance(1)
                polygonizer.end_row(last=i == rows - 1)
        sink.close()
    if driver != "GPKG":
        _convert(gpkg, dst, layer, driver)
        gpkg.unlink()
    return sink.count


class _Polygonizer:
    """Polygons of the blocks of one raster, fed row-major: finished ones to the sink,
    border pieces joined across block borders and written when their patch is closed."""

    def __init__(self, grid: Grid, sink: _Sink, block: int) -> None:
        self.height, self.width = grid.shape
        self.sink = sink
        self.pieces = _Pieces(block)
        self.next_id = 1  # global piece ids; 0 stands for nodata
        # The last pixel row of the block row above / being read: piece ids and classes.
        self.above = (np.zeros(self.width, np.int64), np.full(self.width, CLASS_NODATA, np.uint8))
        self.below = (np.zeros(self.width, np.int64), np.full(self.width, CLASS_NODATA, np.uint8))
        # The last pixel column of the block to the left.
        self.left = (np.zeros(0, np.int64), np.zeros(0, np.uint8))

    def add_block(self, cls: np.ndarray, window: Window) -> None:
        """Polygonize one block: finished polygons out, border pieces kept and joined."""
        labels, label_class = label_patches(cls, 4)  # as GDAL polygonizes
        offset = self.next_id - 1  # label k of this block is piece offset + k
        ids = np.where(labels > 0, labels.astype(np.int64) + offset, 0)
        self.next_id += len(label_class) - 1
        cols = slice(window.col, window.col_stop)
        if window.col > 0:
            self.pieces.join(*self.left, ids[:, 0], cls[:, 0])
        if window.row > 0:
            self.pieces.join(self.above[0][cols], self.above[1][cols], ids[0], cls[0])
        self.left = (ids[:, -1].copy(), cls[:, -1].copy())
        self.below[0][cols], self.below[1][cols] = ids[-1], cls[-1]
        border = _inner_edge_labels(labels, window, self.height, self.width)
        if len(label_class) == 1:
            return  # nodata only
        done_classes: list[int] = []
        done: list[shapely.Polygon] = []
        to_pixels = Affine.translation(window.col, window.row)
        for geom, value in rasterio.features.shapes(
            labels, mask=labels > 0, connectivity=4, transform=to_pixels
        ):
            label = int(value)
            polygon = _polygon(geom["coordinates"])
            if border[label]:
                self.pieces.add(offset + label, int(label_class[label]), polygon)
            else:
                done_classes.append(int(label_class[label]))
                done.append(polygon)
        self.sink.add(done_classes, done)

    def end_row(self, *, last: bool) -> None:
        """Write the patches that do not reach below this row of blocks."""
        ids, cls = self.below
        still_open = np.zeros(0, np.int64) if last else ids[cls != CLASS_NODATA]
        for class_id, polygons in self.pieces.close(still_open):
            self.sink.add([class_id] * len(polygons), polygons)
        self.above, self.below = self.below, self.above


def _inner_edge_labels(labels: np.ndarray, window: Window, height: int, width: int) -> np.ndarray:
    """Whether each label of a block touches one of its edges that lies inside the raster."""
    edges = []
    if window.row > 0:
        edges.append(labels[0])
    if window.row_stop < height:
        edges.append(labels[-1])
    if window.col > 0:
        edges.append(labels[:, 0])
    if window.col_stop < width:
        edges.append(labels[:, -1])
    touches = np.zeros(int(labels.max()) + 1, dtype=bool)
    if edges:
        touches[np.concatenate(edges)] = True
    return touches


class _Pieces:
    """Border pieces (pixel-coordinate polygons) and a union-find that joins the pieces of one
    patch across block borders."""

    def __init__(self, block: int) -> None:
        self.block = block
        self.parent: dict[int, int] = {}
        self.pieces: dict[int, tuple[int, shapely.Polygon]] = {}

    def add(self, piece: int, class_id: int, polygon: shapely.Polygon) -> None:
        """Keep a piece until its patch is closed."""
        self.pieces[piece] = (class_id, polygon)

    def join(
        self, ids_a: np.ndarray, cls_a: np.ndarray, ids_b: np.ndarray, cls_b: np.ndarray
    ) -> None:
        """Join the pieces of facing pixels (``a`` across the border from ``b``) of one class."""
        same = (cls_a == cls_b) & (cls_a != CLASS_NODATA)
        if not same.any():
            return
        pairs = np.unique(np.stack([ids_a[same], ids_b[same]], axis=1), axis=0)
        for a, b in pairs.tolist():
            root_a, root_b = self._find(a), self._find(b)
            if root_a != root_b:
                self.parent[root_b] = root_a

    def close(self, still_open: np.ndarray) -> Iterator[tuple[int, list[shapely.Polygon]]]:
        """The patches none of whose pieces is in ``still_open``, each as its class and its
        polygons (the union of its pieces, exploded); their pieces are dropped."""
        open_roots = {self._find(p) for p in np.unique(still_open).tolist()}
        groups: dict[int, list[int]] = {}
        for piece in self.pieces:
            root = self._find(piece)
            if root not in open_roots:
                groups.setdefault(root, []).append(piece)
        for members in groups.values():
            class_id = self.pieces[members[0]][0]
            merged = merge_pieces([self.pieces[m][1] for m in members], self.block)
            for m in members:
                del self.pieces[m]
                self.parent.pop(m, None)
            yield class_id, merged

    def _find(self, x: int) -> int:
        parent = self.parent
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while x != root:  # path compression
            parent[x], x = root, parent[x]
        return root


def merge_pieces(pieces: list[shapely.Polygon], block: int) -> list[shapely.Polygon]:
    """The union of the pieces of one patch (pixel coordinates, cut by the borders of
    ``block`` x ``block`` blocks), exploded into polygons.

    The pieces do not overlap and meet only along block borders, but GDAL keeps only the
    corners of a straight edge, so two pieces facing each other across a border rarely share
    vertices there. With a vertex at every pixel corner on the border lines they form a
    coverage with matching edges, whose union GEOS builds by dropping the shared edges
    (``coverage_union_all``: no overlay, several times faster than ``union_all``); the
    vertices that are left on straight edges are removed again.
    """
    if len(pieces) == 1:
        return pieces
    lines = functools.partial(_densify_on_borders, block=block)
    dense = np.array([_map_rings(p, lines) for p in pieces], dtype=object)
    merged = shapely.coverage_union_all(dense)
    return [_map_rings(p, _drop_straight) for p in shapely.get_parts(merged)]


def _map_rings(polygon: shapely.Polygon, f: Callable[[np.ndarray], np.ndarray]) -> shapely.Polygon:
    """``polygon`` with ``f`` applied to the coordinates of each of its rings."""
    holes = [f(np.asarray(r.coords)) for r in polygon.interiors]
    return shapely.Polygon(f(np.asarray(polygon.exterior.coords)), holes)


def _densify_on_borders(ring: np.ndarray, block: int) -> np.ndarray:
    """A closed ring of pixel corners with a vertex at every pixel corner of its edges that
    lie on a block border (a line x or y = a multiple of ``block``)."""
    start, step = ring[:-1], np.diff(ring, axis=0)
    on = ((step[:, 0] == 0) & (start[:, 0] % block == 0)) | (
        (step[:, 1] == 0) & (start[:, 1] % block == 0)
    )
    if not on.any():
        return ring
    counts = np.where(on, np.abs(step).sum(axis=1).astype(np.int64), 1)
    edge = np.repeat(np.arange(len(start)), counts)
    k = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    unit = step / counts[:, None]  # whole pixel steps on the borders: exact
    return np.vstack([start[edge] + unit[edge] * k[:, None], ring[-1:]])


def _drop_straight(ring: np.ndarray) -> np.ndarray:
    """A closed ring of axis-parallel edges without the vertices in the middle of a straight
    run (what GDAL's polygonize keeps: corners only)."""
    points = ring[:-1]
    before, after = np.roll(points, 1, axis=0), np.roll(points, -1, axis=0)
    straight = ((before[:, 0] == points[:, 0]) & (points[:, 0] == after[:, 0])) | (
        (before[:, 1] == points[:, 1]) & (points[:, 1] == after[:, 1])
    )
    kept = points[~straight]
    return np.vstack([kept, kept[:1]])


class _Sink:
    """Finished polygons (pixel coordinates) appended to a GeoPackage in batches, in map
    coordinates, with their class id, class name and area."""

    def __init__(
        self, path: Path, layer: str, grid: Grid, names: dict[int, str], batch: int
    ) -> None:
        self.path, self.layer, self.crs, self.batch = path, layer, grid.crs_wkt, batch
        self.names = np.array([names.get(i, "unknown") for i in range(256)], dtype=object)
        self.to_map = _affine(grid.transform)
        self.area_ha = area_function(grid)
        self.classes: list[int] = []
        self.polygons: list[shapely.Polygon] = []
        self.vertices = 0
        self.count = 0
        self.started = False

    def add(self, classes: list[int], polygons: list[shapely.Polygon]) -> None:
        """Queue finished polygons; writes a batch when the queue is full."""
        if not polygons:
            return
        self.classes += classes
        self.polygons += polygons
        self.vertices += int(shapely.get_num_coordinates(np.asarray(polygons, dtype=object)).sum())
        if len(self.polygons) >= self.batch or self.vertices >= BATCH_VERTICES:
            self._flush()

    def close(self) -> None:
        """Write what is queued (and the layer, if nothing was written yet)."""
        self._flush()

    def _flush(self) -> None:
        if self.started and not self.polygons:
            return
        pixels = np.asarray(self.polygons, dtype=object)
        class_ids = np.asarray(self.classes, dtype=np.int32)
        pyogrio.raw.write(
            str(self.path),
            shapely.to_wkb(shapely.transform(pixels, self.to_map)),
            [class_ids, self.names[class_ids], self.area_ha(pixels)],
            FIELDS,
            layer=self.layer,
            driver="GPKG",
            geometry_type="Polygon",
            crs=self.crs,
            promote_to_multi=False,
            append=self.started,
        )
        self.started = True
        self.count += len(pixels)
        self.classes, self.polygons, self.vertices = [], [], 0


def area_function(grid: Grid) -> Callable[[np.ndarray], np.ndarray]:
    """Areas in hectares of pixel-coordinate polygons of ``grid``: planar from the CRS's
    linear unit on a projected grid, geodesic on its ellipsoid on a geographic one."""
    crs = grid.crs
    pixel_m2 = grid.pixel_area_m2
    if pixel_m2 is not None:
        pixel_ha = pixel_m2 / 1e4
        return lambda pixels: shapely.area(pixels) * pixel_ha
    if not crs.is_geographic:
        raise InputError(
            "the map's CRS is neither projected nor geographic, so polygon areas cannot be "
            "computed; export it without --vector"
        )
    import pyproj

    geographic = pyproj.CRS.from_wkt(grid.crs_wkt)
    unit = geographic.axis_info[0].unit_name
    geod = geographic.get_geod()
    if unit not in ("degree", "degrees") or geod is None:
        raise InputError(
            f"the map's geographic CRS (angles in {unit}) has no ellipsoid in degrees to "
            "measure polygon areas on; export it without --vector"
        )
    to_lonlat = _affine(grid.transform)

    def geodesic_ha(pixels: np.ndarray) -> np.ndarray:
        dense = shapely.transform(shapely.segmentize(pixels, 1.0), to_lonlat)
        return np.array([abs(geod.geometry_area_perimeter(orient(p))[0]) for p in dense]) / 1e4

    return geodesic_ha


def _polygon(rings: list[list[tuple[float, float]]]) -> shapely.Polygon:
    """A polygon from GeoJSON-like rings (``rasterio.features.shapes``' output)."""
    return shapely.Polygon(np.array(rings[0]), [np.array(r) for r in rings[1:]])


def _affine(a: Affine) -> Callable[[np.ndarray], np.ndarray]:
    """Pixel (column, row) coordinates -> map coordinates, for ``shapely.transform``; the
    arithmetic in GDAL's order, so the coordinates are those GDAL would give."""

    def to_map(xy: np.ndarray) -> np.ndarray:
        x, y = xy[:, 0], xy[:, 1]
        return np.column_stack([a.c + x * a.a + y * a.b, a.f + x * a.d + y * a.e])

    return to_map


def _convert(gpkg: Path, dst: Path, layer: str, driver: str) -> None:
    """Copy the GeoPackage's layer into another format, streamed by GDAL."""
    with pyogrio.raw.open_arrow(str(gpkg), layer=layer, use_pyarrow=False) as (meta, reader):
        pyogrio.write_arrow(
            reader,
            str(dst),
            layer=layer,
            driver=driver,
            geometry_name=meta["geometry_name"] or "geom",
            geometry_type="Polygon",
            crs=meta["crs"],
        )
