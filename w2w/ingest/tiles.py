"""Image tiles in any CRS, resolved, checked and indexed by where they fall on the target grid.

A **tile** is a set of band assets that were seen together: one multi-band raster (a file
given by path, glob or list), or one STAC Item whose band assets are separate files. Every
asset is opened once on the driver (header only) to learn its CRS, grid, pixel type and
nodata, and its footprint on the target grid is kept: a block task then opens only the tiles
whose footprint meets its block, so memory does not grow with the number of tiles and no
mosaic of the whole state is ever built.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.errors import RasterioError

from w2w.core import storage
from w2w.core.errors import InputError
from w2w.core.grid import Grid, Window
from w2w.ingest.sources import IMAGE_DTYPES, first_line, open_raster

log = logging.getLogger("w2w")

#: Extra target pixels around a tile's transformed footprint: the transformed bounds are
#: approximate, and a resampling kernel reaches beyond a pixel's centre.
FOOTPRINT_PAD = 3


@dataclass(frozen=True)
class Asset:
    """One band of a tile: a file, the band in it (1-based), and that file's grid."""

    path: str
    band: int
    crs_wkt: str
    transform: tuple[float, ...]
    width: int
    height: int
    dtype: str
    nodata: float | None
    description: str | None = None
    acquired: str | None = None

    @property
    def res(self) -> float:
        """The file's pixel size (the coarser axis)."""
        return max(abs(self.transform[0]), abs(self.transform[4]))


@dataclass(frozen=True)
class Tile:
    """Band assets seen together, in band order, with an optional mask asset."""

    name: str
    bands: tuple[Asset, ...]
    mask: Asset | None = None
    start: str | None = None
    end: str | None = None


def expand(entries: list[str]) -> list[str]:
    """Paths from entries that are paths, globs, or list files (``@list.txt`` or ``*.txt``:
    one path or glob a line), in the order given; a glob's matches are sorted."""
    out: list[str] = []
    for entry in entries:
        if entry.startswith("@") or entry.lower().endswith(".txt"):
            text = storage.read_bytes(entry.removeprefix("@")).decode()
            lines = [
                ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")
            ]
            out += expand(lines)
        elif any(ch in entry for ch in "*?["):
            found = _glob(entry)
            if not found:
                raise InputError(f"no file matches {entry}; check the pattern")
            out += found
        else:
            out.append(entry)
    return out


def _glob(pattern: str) -> list[str]:
    return storage.glob(pattern)


def inspect_asset(path: str, band: int | None = None) -> list[Asset]:
    """The bands of a raster file as assets (all of them, or ``band``), checked."""
    with open_raster(path, role="tile") as ds:
        if ds.crs is None:
            raise InputError(
                f"tile {path} has no CRS; assign one (e.g. `gdal_edit.py -a_srs EPSG:xxxx`)"
            )
        if ds.transform.is_identity:
            raise InputError(
                f"tile {path} has no geotransform; re-export it with its georeferencing"
            )
        dtypes = set(ds.dtypes)
        bad = sorted(d for d in dtypes if d not in IMAGE_DTYPES)
        if bad:
            raise InputError(
                f"tile {path} has unsupported pixel type {bad[0]}; supported: "
                f"{', '.join(IMAGE_DTYPES)}"
            )
        missing = [f for f in ds.files[1:] if "://" not in f and not f.startswith("/vsi")]
        missing = [f for f in missing if not Path(f).exists()]
        if missing:
            raise InputError(
                f"tile {path} reads from {missing[0]}, which does not exist; fix the VRT or "
                "put its source files back"
            )
        indexes = [band] if band is not None else list(range(1, ds.count + 1))
        acquired = acquisition_time(ds.tags(ns="IMAGERY").get("ACQUISITIONDATETIME"), path)
        return [
            Asset(
                storage.normalize(path) if not storage.is_remote(path) else path,
                i,
                ds.crs.to_wkt(),
                tuple(ds.transform)[:6],
                ds.width,
                ds.height,
                ds.dtypes[i - 1],
                ds.nodatavals[i - 1],
                ds.descriptions[i - 1],
                acquired,
            )
            for i in indexes
        ]


def acquisition_time(text: str | None, path: str) -> str | None:
    """GDAL's ``ACQUISITIONDATETIME`` imagery metadata as ISO 8601 UTC (``...Z``), or None
    (absent or unreadable: the tile's date is then unknown, with a warning)."""
    if not text:
        return None
    try:
        when = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        log.warning("tile %s: ACQUISITIONDATETIME %r is not a date; ignored", path, text)
        return None
    when = when if when.tzinfo else when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def file_tiles(paths: list[str], mask_band: int | None = None) -> list[Tile]:
    """One tile per multi-band file; ``mask_band`` (1-based) is a mask, not an image band."""
    tiles = []
    for path in paths:
        assets = inspect_asset(path)
        mask = None
        if mask_band is not None:
            if not 1 <= mask_band <= len(assets):
                raise InputError(f"tile {path} has {len(assets)} bands, no mask band {mask_band}")
            mask = assets.pop(mask_band - 1)
        when = assets[0].acquired if assets else None
        tiles.append(Tile(Path(path).name, tuple(assets), mask, when, when))
    return tiles


def check_alike(tiles: list[Tile]) -> None:
    """Every tile holds the same bands: as many, of the same pixel types."""
    first = tiles[0]
    for t in tiles[1:]:
        if len(t.bands) != len(first.bands):
            raise InputError(
                f"tile {t.name} has {len(t.bands)} bands but tile {first.name} has "
                f"{len(first.bands)}; every tile must hold the same bands"
            )
        kinds = [np.dtype(a.dtype).kind for a in t.bands]
        if kinds != [np.dtype(a.dtype).kind for a in first.bands]:
            raise InputError(
                f"tile {t.name} has pixel types {[a.dtype for a in t.bands]} but tile "
                f"{first.name} has {[a.dtype for a in first.bands]}; every tile must hold "
                "the same bands"
            )


def footprint(tile: Tile, grid: Grid) -> tuple[float, float, float, float]:
    """(left, bottom, right, top) of a tile on ``grid``'s CRS, padded by a few pixels."""
    from affine import Affine
    from rasterio.warp import transform_bounds

    boxes = []
    for a in (*tile.bands, *([tile.mask] if tile.mask else [])):
        t = Affine(*a.transform)
        xs = [t.c, t.c + t.a * a.width]
        ys = [t.f, t.f + t.e * a.height]
        boxes.append(
            transform_bounds(
                a.crs_wkt, grid.crs_wkt, min(xs), min(ys), max(xs), max(ys), densify_pts=21
            )
        )
    pad = FOOTPRINT_PAD * max(grid.res)
    return (
        min(b[0] for b in boxes) - pad,
        min(b[1] for b in boxes) - pad,
        max(b[2] for b in boxes) + pad,
        max(b[3] for b in boxes) + pad,
    )


@dataclass(frozen=True)
class TileIndex:
    """Tile footprints on the target grid, to find the tiles that meet a block."""

    footprints: np.ndarray  # (tiles, 4): left, bottom, right, top

    @classmethod
    def build(cls, tiles: list[Tile], grid: Grid) -> TileIndex:
        """Footprints of every tile on ``grid``."""
        return cls(np.asarray([footprint(t, grid) for t in tiles], dtype=np.float64))

    def meeting(self, grid: Grid, window: Window) -> list[int]:
        """Indices of the tiles whose footprint meets ``window`` (in the given order)."""
        t = grid.window_transform(window)
        left, top = t.c, t.f
        right, bottom = left + t.a * window.width, top + t.e * window.height
        f = self.footprints
        hit = (f[:, 0] < right) & (f[:, 2] > left) & (f[:, 1] < top) & (f[:, 3] > bottom)
        return [int(i) for i in np.flatnonzero(hit)]

    def part(self, i: int, grid: Grid, window: Window) -> Window | None:
        """The pixels of ``window`` that tile ``i``'s footprint covers (rounded outwards), or
        ``None``: a block task warps only these, not the whole block, for each tile."""
        left, bottom, right, top = self.footprints[i]
        inv = ~grid.transform
        c0, r0 = inv @ (left, top)
        c1, r1 = inv @ (right, bottom)
        box = Window(
            math.floor(min(r0, r1)),
            math.floor(min(c0, c1)),
            math.ceil(max(r0, r1)) - math.floor(min(r0, r1)),
            math.ceil(max(c0, c1)) - math.floor(min(c0, c1)),
        )
        return window.intersect(box)

    def uncovered(self, area: Any) -> Any:
        """The part of ``area`` (a shapely geometry) that no tile footprint covers."""
        import shapely

        boxes = [shapely.box(*f) for f in self.footprints]
        return area.difference(shapely.union_all(boxes))


def warp(
    asset: Asset, target: Grid, resampling: str, *, bands: list[int] | None = None
) -> np.ndarray:
    """Bands of an asset's file (``bands``, default the asset's one band) on ``target``'s
    pixels, as float (NaN where the tile has no data: its nodata, or outside it); one band
    gives (h, w), several (n, h, w).

    Warped with GDAL's exact transformer and a fixed kernel scale (the resolution ratio), so
    a block's pixels equal those of a warp of the whole grid, whatever the block.
    """
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    k = min(asset.res / max(target.res), 1.0)
    dtype = "float64" if np.dtype(asset.dtype).itemsize > 2 else "float32"
    with (
        open_raster(asset.path, role="tile") as src,
        WarpedVRT(
            src,
            crs=target.crs,
            transform=target.transform,
            width=target.width,
            height=target.height,
            resampling=Resampling[resampling],
            src_nodata=asset.nodata,
            nodata=math.nan,
            dtype=dtype,
            # rasterio needs a positive tolerance to set a transformer; this small is exact.
            tolerance=1e-9,
            XSCALE=k,
            YSCALE=k,
        ) as vrt,
    ):
        try:
            return vrt.read(bands if bands is not None else asset.band)
        except RasterioError as exc:
            raise InputError(
                f"cannot read tile {asset.path} ({first_line(exc)}); check the file (a VRT's "
                "source files must exist where it names them)"
            ) from None


def warp_tile_bands(tile: Tile, target: Grid, resampling: str) -> np.ndarray:
    """(bands, h, w) float: a tile's bands on ``target``, one warp per file (the bands of a
    multi-band file share its transformation)."""
    out = []
    i = 0
    while i < len(tile.bands):
        a = tile.bands[i]
        same = [a.band]
        while (
            i + len(same) < len(tile.bands)
            and tile.bands[i + len(same)].path == a.path
            and tile.bands[i + len(same)].nodata == a.nodata
        ):
            same.append(tile.bands[i + len(same)].band)
        data = warp(a, target, resampling, bands=same)
        out.append(data)
        i += len(same)
    return np.concatenate(out, axis=0)
