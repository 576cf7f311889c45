"""Tiles in any CRS onto one target grid, block by block: the mosaic a scene store is made of.

:func:`plan_mosaic` (driver) makes the target grid (CRS, resolution, bounds from the boundary
snapped like ``gdalwarp -tap``), resolves and checks the tiles, indexes their footprints,
reads the boundary and vector labels, and lists the blocks to build: those the boundary
touches and some tile reaches. :class:`MosaicReader` (a block task) warps only the tiles that
meet its block (GDAL's exact transformer, so a block equals the same pixels of a whole-grid
warp), drops masked pixels (e.g. Sentinel-2 SCL cloud classes), and combines overlapping
tiles: the **first** valid pixel in the order given, the **last**, or the **median** of the
valid values per band (with several dates, a per-pixel composite; whole-number types are
rounded half up). Pixels outside the boundary are nodata; labels are warped with nearest
neighbour (mode when the labels are finer than the grid) or rasterised from vectors.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from w2w.core.errors import InputError
from w2w.core.grid import Grid, Window
from w2w.ingest.config import IngestConfig
from w2w.ingest.labels import LabelCodes
from w2w.ingest.stac import is_stac, stac_tiles
from w2w.ingest.target import parse_crs, snapped_grid
from w2w.ingest.tiles import (
    Asset,
    Tile,
    TileIndex,
    check_alike,
    expand,
    file_tiles,
    inspect_asset,
    warp,
    warp_tile_bands,
)
from w2w.ingest.vectors import AOI, VectorLabels, read_aoi, read_vector_labels

log = logging.getLogger("w2w")

#: Share of the boundary's area that the tiles may leave uncovered before ingest refuses.
UNCOVERED_TOLERANCE = 1e-3


@dataclass(frozen=True)
class MosaicPlan:
    """Everything a block task needs to build its block from the tiles."""

    grid: Grid
    tiles: tuple[Tile, ...]
    index: TileIndex
    band_names: tuple[str, ...]
    dtype: str
    nodata: float
    resampling: str
    overlap: str
    mask_values: tuple[int, ...]
    aoi: AOI | None
    label_asset: Asset | None
    vector_labels: VectorLabels | None
    codes: LabelCodes | None

    @property
    def has_label(self) -> bool:
        """Whether the store gets labels."""
        return self.label_asset is not None or self.vector_labels is not None


def resolve_tiles(cfg: IngestConfig) -> tuple[list[Tile], list[str]]:
    """The tiles named by ``cfg.tiles`` (files, globs, lists, STAC) and their band names."""
    assert cfg.tiles is not None
    tiles: list[Tile] = []
    names: list[str] | None = None
    for entry in expand(list(cfg.tiles)):
        if is_stac(entry):
            found, stac_names = stac_tiles(entry, cfg.bands, cfg.mask_asset)
            for k, t in enumerate(found):
                # Every band of every asset: a multi-band asset (e.g. 'visual') gives each.
                per_asset = [inspect_asset(h) for h in t.bands]
                mask = inspect_asset(t.mask, 1)[0] if t.mask else None
                tiles.append(
                    Tile(t.name, tuple(a for b in per_asset for a in b), mask, t.start, t.end)
                )
                if k == 0:
                    stac_names = _asset_band_names(stac_names, per_asset)
            names = names or stac_names
        else:
            tiles += file_tiles([entry], cfg.mask_band)
    if not tiles:
        raise InputError("no tile to ingest; check --tiles")
    check_alike(tiles)
    count = len(tiles[0].bands)
    if cfg.band_names is not None:
        if len(cfg.band_names) != count:
            raise InputError(f"{len(cfg.band_names)} band names given for {count} bands")
        names = list(cfg.band_names)
    described = [a.description for a in tiles[0].bands]
    if names is None and all(described) and len(set(described)) == count:
        names = [str(d) for d in described]
    return tiles, names or [f"band{i + 1}" for i in range(count)]


def _asset_band_names(names: list[str], per_asset: list[list[Any]]) -> list[str]:
    """Band names for the assets' bands: an asset's key for a one-band asset; for a
    multi-band asset its bands' descriptions when they are given, else ``key_1``, ``key_2``."""
    out = []
    for name, bands in zip(names, per_asset, strict=True):
        if len(bands) == 1:
            out.append(name)
            continue
        described = [b.description for b in bands]
        if all(described) and len(set(described)) == len(bands):
            out += [f"{name}_{d}" for d in described]
        else:
            out += [f"{name}_{i + 1}" for i in range(len(bands))]
    return out


def _store_type(tiles: list[Tile], cfg: IngestConfig, warnings: list[str]) -> tuple[str, float]:
    """The store's pixel type and its one nodata value."""
    dtype = str(np.result_type(*[np.dtype(a.dtype) for t in tiles for a in t.bands]))
    if cfg.nodata:
        return dtype, float(cfg.nodata[0])
    declared = {a.nodata for t in tiles for a in t.bands}
    if len(declared) == 1 and None not in declared:
        return dtype, float(declared.pop())  # type: ignore[arg-type]
    if np.dtype(dtype).kind == "f":
        return dtype, float("nan")
    value = float(np.iinfo(np.dtype(dtype)).max)
    warnings.append(
        f"the tiles declare no common nodata value; the store marks nodata with {value:g} "
        "(give another with --nodata)"
    )
    return dtype, value


def plan_mosaic(cfg: IngestConfig) -> tuple[MosaicPlan, list[Window], list[str]]:
    """Check every input and plan the mosaic: (plan, blocks to build, warnings)."""
    import shapely

    warnings: list[str] = []
    crs_wkt = parse_crs(str(cfg.crs))
    aoi = read_aoi(cfg.aoi, crs_wkt, where=cfg.aoi_where) if cfg.aoi else None
    bounds = tuple(cfg.bounds) if cfg.bounds else aoi.bounds  # type: ignore[union-attr]
    grid = snapped_grid(crs_wkt, float(cfg.resolution or 0), bounds)  # type: ignore[arg-type]
    tiles, band_names = resolve_tiles(cfg)
    index = TileIndex.build(tiles, grid)
    area = shapely.geometry.shape(aoi.geometry) if aoi else shapely.box(*grid.bounds)
    missing = index.uncovered(area)
    if missing.area > UNCOVERED_TOLERANCE * area.area:
        raise InputError(_uncovered_message(missing, area, crs_wkt))
    dtype, nodata = _store_type(tiles, cfg, warnings)
    tiling = grid.blocks(cfg.block)
    where = tiling.meeting(grid, [aoi.geometry]) if aoi else None
    blocks = [w for w in tiling.windows(where) if index.meeting(grid, w)]
    label_asset = vectors = codes = None
    if cfg.label:
        if cfg.vector_labels:
            vectors = read_vector_labels(
                cfg.label, str(cfg.label_field), crs_wkt, classes=dict(cfg.classes)
            )
        else:
            label_asset = inspect_asset(cfg.label, 1)[0]
        nodata_label = (
            cfg.label_nodata
            if cfg.label_nodata is not None
            else (label_asset.nodata if label_asset else None)
        )
        codes = LabelCodes.from_map(
            cfg.label_map, nodata_label, cfg.unlabelled, cfg.label, cfg.label_map_rest
        )
    plan = MosaicPlan(
        grid=grid,
        tiles=tuple(tiles),
        index=index,
        band_names=tuple(band_names),
        dtype=dtype,
        nodata=nodata,
        resampling=cfg.resampling,
        overlap=cfg.overlap,
        mask_values=tuple(cfg.mask_values),
        aoi=aoi,
        label_asset=label_asset,
        vector_labels=vectors,
        codes=codes,
    )
    return plan, blocks, warnings


def _uncovered_message(missing: Any, area: Any, crs_wkt: str) -> str:
    from rasterio.warp import transform

    share = missing.area / area.area
    point = missing.representative_point()
    lon, lat = transform(crs_wkt, "EPSG:4326", [point.x], [point.y])
    x0, y0, x1, y1 = missing.bounds
    return (
        f"the tiles do not cover {share:.1%} of the area to map (for example around "
        f"lon {lon[0]:.4f}, lat {lat[0]:.4f}; the gap spans x {x0:.0f}..{x1:.0f}, y "
        f"{y0:.0f}..{y1:.0f} on the target grid); add the tiles that cover it, or a smaller "
        "--aoi / --bounds"
    )


class MosaicReader:
    """The block task's reader: one block of the mosaic, (image, labels, tiles used)."""

    def __init__(self, plan: MosaicPlan) -> None:
        self.plan = plan

    def __call__(self, window: Window) -> tuple[np.ndarray, np.ndarray | None, tuple[str, ...]]:
        plan = self.plan
        target = plan.grid.window_grid(window)
        inside = (
            plan.aoi.mask(plan.grid, window)
            if plan.aoi
            else np.ones((window.height, window.width), bool)
        )
        order = plan.index.meeting(plan.grid, window)
        if plan.overlap == "last":
            order = order[::-1]
        image, used = self._combine(order, window, inside)
        label = self._labels(window, target, inside) if plan.has_label else None
        return image, label, used

    def _tile(self, tile: Tile, target: Grid) -> tuple[np.ndarray, np.ndarray]:
        """(bands, h, w) float pixels of one tile on ``target`` and where they are valid."""
        data = warp_tile_bands(tile, target, self.plan.resampling)
        valid = ~np.isnan(data).any(axis=0)
        if tile.mask is not None and self.plan.mask_values:
            m = warp(tile.mask, target, "nearest")
            valid &= ~np.isin(m, self.plan.mask_values)
        return data, valid

    def _combine(
        self, order: list[int], window: Window, inside: np.ndarray
    ) -> tuple[np.ndarray, tuple[str, ...]]:
        plan = self.plan
        shape = (len(plan.band_names), window.height, window.width)
        out = np.full(shape, np.nan, dtype=np.float64)
        filled = ~inside  # outside the boundary: nothing to fill
        used: list[str] = []
        stack: list[np.ndarray] = []
        for i in order:
            if plan.overlap != "median" and filled.all():
                break
            # Only the part of the block the tile's footprint covers is warped.
            part = plan.index.part(i, plan.grid, window)
            if part is None:
                continue
            rel = part.relative_to(window).slices
            tile = plan.tiles[i]
            data, valid = self._tile(tile, plan.grid.window_grid(part))
            valid &= inside[rel]
            if not valid.any():
                continue
            used.append(tile.name)
            if plan.overlap == "median":
                layer = np.full(shape, np.nan, dtype=np.float64)
                layer[(slice(None), *rel)] = np.where(valid[None], data, np.nan)
                stack.append(layer)
                continue
            take = valid & ~filled[rel]
            view = out[(slice(None), *rel)]
            view[:, take] = data[:, take]
            filled[rel] |= take
        if stack:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN: no tile valid there
                out = np.nanmedian(np.stack(stack), axis=0)
        return _to_dtype(out, plan.dtype, plan.nodata), tuple(used)

    def _labels(self, window: Window, target: Grid, inside: np.ndarray) -> np.ndarray:
        plan = self.plan
        assert plan.codes is not None
        if plan.vector_labels is not None:
            raw = plan.vector_labels.rasterize(plan.grid, window, np.nan)
        else:
            assert plan.label_asset is not None
            finer = plan.label_asset.res < max(plan.grid.res)
            raw = warp(plan.label_asset, target, "mode" if finer else "nearest").astype(np.float64)
        raw[~inside] = np.nan
        return plan.codes.apply(raw, window)


def _to_dtype(values: np.ndarray, dtype: str, nodata: float) -> np.ndarray:
    """Float pixels (NaN = no data) in the store's type: whole-number types rounded half up
    (as GDAL's warper rounds) and clipped to their range; NaN becomes ``nodata``."""
    dt = np.dtype(dtype)
    missing = np.isnan(values)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        values = np.clip(np.floor(values + 0.5), info.min, info.max)
    out = np.where(missing, nodata, values).astype(dt)
    return out
