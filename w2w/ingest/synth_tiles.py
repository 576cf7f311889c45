"""The synthetic state as an agency receives a real one: overlapping tiles in two UTM zones,
a boundary polygon, and field labels as polygons and points.

From the state written as GeoTIFFs on its own grid (:mod:`w2w.ingest.synth`):

* ``tiles/tile_<row>_<col>.tif`` -- overlapping tiles (like MGRS tiles, scaled down), those
  west of the state's middle in UTM zone 12N and the others in 13N, each the state's imagery
  warped onto the tile's own grid (bilinear, nodata 0);
* ``boundary.gpkg`` -- the state's outline, a polygon in WGS84 longitude/latitude;
* ``labels.gpkg`` -- training data in the state's CRS, field ``class``: polygons of some
  patches of the true land cover, and points on single pixels.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from w2w.core import storage
from w2w.core.grid import Grid, Window

#: The CRSs of the tiles: west and east of the state's middle.
ZONES = (32612, 32613)
#: The synthetic acquisition time of each zone's tiles: two passes two days apart.
ACQUIRED = {ZONES[0]: "2024-06-28T17:41:00Z", ZONES[1]: "2024-06-30T17:29:00Z"}


def tile_windows(grid: Grid, size: int, overlap: int) -> list[tuple[int, int, Window]]:
    """(row, col, window) of overlapping tiles over the state's grid."""
    step = max(1, size - overlap)
    out = []
    for i, r in enumerate(range(0, max(1, grid.height - overlap), step)):
        for j, c in enumerate(range(0, max(1, grid.width - overlap), step)):
            h, w = min(size, grid.height - r), min(size, grid.width - c)
            out.append((i, j, Window(r, c, h, w)))
    return out


def write_tiles(
    image: Path,
    truth: Path,
    grid: Grid,
    folder: Path,
    *,
    size: int,
    overlap: int,
    seed: int,
    inside: np.ndarray | None = None,
) -> list[tuple[str, Path]]:
    """Cut the state's imagery into tiles in two zones; write its boundary (the outline of
    ``inside``, default: of the labelled area) and labels.

    Everything is written under staging names beside where it goes in ``folder``, and
    returned as ``(destination, staged)`` for :func:`w2w.core.outputs.publish_files`: the
    ``tiles`` folder is one entry, replaced whole, so tiles of an earlier, other-sized state
    never stay beside the new ones; its record (``FILESET_FILE``) lists them."""
    from w2w.core.outputs import FILESET_FILE, staging_tag

    tag = staging_tag()
    tiles_dir = folder / f".tiles.w2w-tmp-{tag}"
    storage.ensure_writable_dir(tiles_dir)
    names = []
    for i, j, window in tile_windows(grid, size, overlap):
        centre = window.col + window.width / 2
        epsg = ZONES[0] if centre < grid.width / 2 else ZONES[1]
        name = f"tile_{i:02d}_{j:02d}.tif"
        _warp_tile(image, grid, window, epsg, tiles_dir / name)
        names.append(name)
    (tiles_dir / FILESET_FILE).write_text(
        json.dumps({"made_by": "w2w synth", "tiles": names}, indent=2) + "\n"
    )
    boundary = folder / f".boundary.gpkg.w2w-tmp-{tag}.gpkg"
    labels = folder / f".labels.gpkg.w2w-tmp-{tag}.gpkg"
    _write_boundary(truth, grid, boundary, inside)
    _write_labels(truth, grid, labels, seed)
    return [
        (str(folder / "tiles"), tiles_dir),
        (str(folder / "boundary.gpkg"), boundary),
        (str(folder / "labels.gpkg"), labels),
    ]


def _warp_tile(image: Path, grid: Grid, window: Window, epsg: int, path: Path) -> None:
    import rasterio
    from rasterio.crs import CRS
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT
    from rasterio.warp import transform_bounds

    from w2w.ingest.target import snapped_grid

    crs = CRS.from_epsg(epsg)
    sub = grid.window_grid(window)
    bounds = transform_bounds(grid.crs, crs, *sub.bounds, densify_pts=21)
    tile = snapped_grid(crs.to_wkt(), grid.res[0], bounds)
    with (
        rasterio.open(image) as src,
        WarpedVRT(
            src,
            crs=crs,
            transform=tile.transform,
            width=tile.width,
            height=tile.height,
            resampling=Resampling.bilinear,
            src_nodata=0,
            nodata=0,
        ) as vrt,
    ):
        data = vrt.read()
        profile = {
            "driver": "GTiff",
            "width": tile.width,
            "height": tile.height,
            "count": data.shape[0],
            "dtype": data.dtype,
            "crs": crs,
            "transform": tile.transform,
            "nodata": 0,
            "tiled": True,
            "blockxsize": 256,
            "blockysize": 256,
            "compress": "deflate",
        }
        with storage.writing_to(path.parent), rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
            # When the pixels were seen (GDAL's imagery metadata), as a sensor's file has it.
            dst.update_tags(ns="IMAGERY", ACQUISITIONDATETIME=ACQUIRED[epsg])
            for b, name in enumerate(src.descriptions, start=1):
                if name:
                    dst.set_band_description(b, name)


def _write_vector(
    path: Path, layer: str, geoms: list[Any], values: list[int] | None, crs: str
) -> None:
    import pyogrio.raw
    import shapely

    fields = ["class"] if values is not None else []
    data = [np.asarray(values, dtype=np.int32)] if values is not None else []
    pyogrio.raw.write(
        str(path),
        shapely.to_wkb(np.asarray(geoms, dtype=object)),
        data,
        fields,
        driver="GPKG",
        geometry_type="Unknown",
        crs=crs,
        layer=layer,
    )


def _write_boundary(truth: Path, grid: Grid, path: Path, inside: np.ndarray | None) -> None:
    """The outline of the state (``inside``, or the labelled area), simplified, in WGS84."""
    import rasterio
    import shapely
    from rasterio.features import shapes
    from rasterio.warp import transform_geom

    if inside is None:
        with rasterio.open(truth) as src:
            inside = src.read(1) != 0
    mask = inside.astype(np.uint8)
    polys = [shapely.geometry.shape(g) for g, v in shapes(mask, transform=grid.transform) if v]
    outline = shapely.union_all(polys).simplify(grid.res[0], preserve_topology=True)
    geo = transform_geom(grid.crs, "EPSG:4326", shapely.geometry.mapping(outline))
    _write_vector(path, "boundary", [shapely.geometry.shape(geo)], None, "EPSG:4326")


def _write_labels(truth: Path, grid: Grid, path: Path, seed: int) -> None:
    """Some patches of the true land cover as polygons, and single pixels as points."""
    import rasterio
    import shapely
    from rasterio.features import shapes

    rng = np.random.default_rng(seed + 101)
    with rasterio.open(truth) as src:
        classes = src.read(1)
    geoms: list[Any] = []
    values: list[int] = []
    for g, v in shapes(classes, mask=classes != 0, transform=grid.transform):
        poly = shapely.geometry.shape(g)
        if poly.area >= 16 * grid.res[0] ** 2 and rng.random() < 0.8:
            geoms.append(poly)
            values.append(int(v))
    rows, cols = np.nonzero(classes)
    pick = rng.choice(len(rows), size=min(400, len(rows)), replace=False)
    for r, c in zip(rows[pick], cols[pick], strict=True):
        x, y = grid.transform @ (c + 0.5, r + 0.5)
        geoms.append(shapely.Point(x, y))
        values.append(int(classes[r, c]))
    _write_vector(path, "labels", geoms, values, grid.crs.to_wkt())
