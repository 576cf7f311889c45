"""Ingest: GeoTIFF image(s) and an optional label raster into a scene store.

The image is either one multi-band raster or several rasters whose bands are stacked in the
order given. Everything is checked before the first byte is written: files readable, grids
identical (an equivalent CRS realisation only warns), pixel types supported, band names
matching the band count. Then the scene is processed block by block -- on Ray tasks, or in
this process with ``engine="local"`` -- each block task reading its window from the sources
and writing the store chunks it alone owns, and returning partial statistics that the
driver merges. Memory per task is one block, whatever the size of the scene.

A new store is built under a temporary name beside the output and moved into place only
when complete, so a failed ingest never damages an existing store.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from w2w.core.errors import ConfigError, InputError
from w2w.core.grid import Grid, Window
from w2w.core.outputs import replace_store
from w2w.core.store.scene import Nodata
from w2w.ingest.build import build_store
from w2w.ingest.config import IngestConfig
from w2w.ingest.labels import LabelCodes
from w2w.ingest.mosaic import MosaicPlan, MosaicReader, plan_mosaic
from w2w.ingest.sources import (
    IMAGE_DTYPES,
    LABEL_DTYPES,
    RasterSource,
    inspect_source,
    read_window,
)

log = logging.getLogger("w2w")


@dataclass(frozen=True)
class IngestPlan:
    """Everything a block task needs, checked on the driver; sent to every task."""

    sources: tuple[RasterSource, ...]
    label: RasterSource | None
    grid: Grid
    dtype: str
    #: One value for all bands, or one per band when the stacked files differ.
    nodata: Nodata
    label_lut_keys: tuple[int, ...]
    label_map_rest: str
    label_lut_values: tuple[int, ...]
    label_nodata: float | None
    unlabelled: int
    reproject_labels: bool

    @property
    def band_count(self) -> int:
        """Number of stacked bands."""
        return sum(s.count for s in self.sources)


@dataclass(frozen=True)
class IngestReport:
    """What ingest wrote."""

    output: str
    grid: Grid
    band_names: tuple[str, ...]
    valid_pixels: int
    class_histogram: dict[int, int]
    warnings: tuple[str, ...]


def plan_ingest(cfg: IngestConfig) -> tuple[IngestPlan, list[str], list[str]]:
    """Check every input and build the plan; returns (plan, band names, warnings)."""
    warnings: list[str] = []
    nodatas = cfg.nodata or [None]  # type: ignore[list-item]
    if len(nodatas) == 1:
        nodatas = nodatas * len(cfg.images)
    sources = tuple(
        inspect_source(p, role="image", allowed_dtypes=IMAGE_DTYPES, nodata=nd)
        for p, nd in zip(cfg.images, nodatas, strict=True)
    )
    grid = sources[0].grid
    for src in sources[1:]:
        msg = grid.check_matches(
            src.grid,
            what=f"image {src.path}",
            fix="image bands must share one pixel grid; resample them onto one grid first",
        )
        if msg:
            warnings.append(msg)

    band_names = _band_names(cfg, sources)
    dtype, nodata = _stacked_type(sources, warnings)

    label = None
    if cfg.label is not None:
        label = inspect_source(
            cfg.label, role="label", allowed_dtypes=LABEL_DTYPES, nodata=cfg.label_nodata
        )
        if label.count != 1:
            raise InputError(
                f"label file {cfg.label} has {label.count} bands; give a single-band label raster"
            )
        if not cfg.reproject_labels:
            msg = grid.check_matches(
                label.grid,
                what=f"label {cfg.label}",
                fix="pass --reproject-labels to warp the labels onto the image grid "
                "(nearest neighbour), or fix the label raster",
            )
            if msg:
                warnings.append(msg)
    keys = tuple(sorted(cfg.label_map))
    plan = IngestPlan(
        sources=sources,
        label=label,
        grid=grid,
        dtype=dtype,
        nodata=nodata,
        label_lut_keys=keys,
        label_map_rest=cfg.label_map_rest,
        label_lut_values=tuple(cfg.label_map[k] for k in keys),
        label_nodata=label.nodata if label is not None and label.nodata is not None else None,  # type: ignore[arg-type]
        unlabelled=cfg.unlabelled,
        reproject_labels=label is not None
        and cfg.reproject_labels
        and not _on_grid(grid, label.grid),
    )
    return plan, band_names, warnings


def _stacked_type(sources: tuple[RasterSource, ...], warnings: list[str]) -> tuple[str, Nodata]:
    """The pixel type of the stack, and its nodata: one value, or one per band when the files
    mark nodata differently (each file keeps its own, so a valid 0 in one file never becomes
    nodata because another file uses 0 for nodata)."""
    dtypes = [np.dtype(s.dtype) for s in sources]
    dtype = str(np.result_type(*dtypes))
    if len(set(dtypes)) > 1:
        kinds = ", ".join(f"{Path(s.path).name}: {s.dtype}" for s in sources)
        warnings.append(
            f"the stacked files have different pixel types ({kinds}); they are stored as "
            f"{dtype}, which holds every value of each exactly"
        )
    per_band = [s.nodata for s in sources for _ in range(s.count)]
    for src in sources:
        if src.nodata is not None and not _representable(src.nodata, dtype):
            raise InputError(
                f"nodata value {src.nodata} of {src.path} cannot be stored as {dtype}; "
                "pass --nodata with a value of that type"
            )
    distinct = {"nan" if isinstance(v, float) and math.isnan(v) else v for v in per_band}
    nodata: Nodata = per_band[0] if len(distinct) == 1 else per_band
    return dtype, nodata


def _on_grid(grid: Grid, other: Grid) -> bool:
    """Whether ``other`` can be read pixel for pixel as ``grid`` (no warp needed)."""
    return grid.same_pixels(other) and grid.crs_relation(other) != "different"


def _band_names(cfg: IngestConfig, sources: tuple[RasterSource, ...]) -> list[str]:
    n = sum(s.count for s in sources)
    if cfg.band_names is not None:
        if len(cfg.band_names) != n:
            raise ConfigError(
                f"{len(cfg.band_names)} band names given for {n} bands "
                f"({', '.join(f'{Path(s.path).name}: {s.count}' for s in sources)}); "
                "give one name per band"
            )
        if len(set(cfg.band_names)) != n:
            raise ConfigError(f"band names must be unique, got {cfg.band_names}")
        return list(cfg.band_names)
    names: list[str] = []
    for s in sources:
        for d in s.descriptions:
            if s.count == 1 and len(sources) > 1:
                names.append(d or Path(s.path).stem)
            else:
                names.append(d or f"band{len(names) + 1}")
    if len(set(names)) != len(names):
        names = [f"band{i + 1}" for i in range(n)]
    return names


def _representable(value: float, dtype: str) -> bool:
    dt = np.dtype(dtype)
    if np.issubdtype(dt, np.floating):
        return True
    info = np.iinfo(dt)
    return float(value).is_integer() and info.min <= value <= info.max


class SourceReader:
    """Reads one block of stacked image bands and mapped labels from the checked sources."""

    def __init__(self, plan: IngestPlan) -> None:
        self.plan = plan

    def __call__(self, window: Window) -> tuple[np.ndarray, np.ndarray | None]:
        plan = self.plan
        parts = []
        for src in plan.sources:
            parts.append(read_window(src, window, role="image").astype(plan.dtype, copy=False))
        image = np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
        label = map_labels(plan, window) if plan.label is not None else None
        return image, label


def map_labels(plan: IngestPlan, window: Window) -> np.ndarray:
    """Read a block of labels (warped onto the image grid if asked) and map them to class ids."""
    assert plan.label is not None
    float_labels = np.dtype(plan.label.dtype).kind == "f"
    warp_nodata = plan.label_nodata if plan.label_nodata is not None else _warp_fill(plan)
    raw = read_window(
        plan.label,
        window,
        role="label",
        target=plan.grid if plan.reproject_labels else None,
        warp_nodata=warp_nodata,
    )[0]
    missing = raw == warp_nodata if plan.reproject_labels and not float_labels else None
    codes = LabelCodes(
        plan.label_lut_keys,
        plan.label_lut_values,
        plan.label_nodata,
        plan.unlabelled,
        f"file {plan.label.path}",
        plan.label_map_rest,
    )
    return codes.apply(raw, window, missing)


def _warp_fill(plan: IngestPlan) -> float:
    """A value outside the label's range, for pixels a warp leaves uncovered (NaN for float
    labels)."""
    assert plan.label is not None
    dt = np.dtype(plan.label.dtype)
    if dt.kind == "f":
        return float("nan")
    info = np.iinfo(dt)
    return int(info.max) if plan.unlabelled != info.max else int(info.min)


def ingest(cfg: IngestConfig, *, progress: bool = True) -> IngestReport:
    """Run ingest end to end and report what was written; bad input raises a W2WError."""
    if cfg.tiles:
        return ingest_tiles(cfg, progress=progress)
    output = cfg.output  # refused when it exists, unless overwrite: the output guard
    plan, band_names, warnings = plan_ingest(cfg)
    for w in warnings:
        log.warning(w)
    with replace_store(output, overwrite=cfg.overwrite) as work_url:
        stats = build_store(
            work_url,
            plan.grid,
            SourceReader(plan),
            band_names=band_names,
            dtype=plan.dtype,
            nodata=plan.nodata,
            with_label=plan.label is not None,
            unlabelled=cfg.unlabelled,
            class_names=cfg.classes,
            chunk=cfg.chunk,
            block=cfg.block,
            engine=cfg.engine,
            source=_provenance(cfg, plan),
            overwrite=cfg.overwrite,
            progress=progress,
            what_nodata=f"every pixel of {', '.join(cfg.images)} is nodata (nodata={plan.nodata}); "
            "check the --nodata value or the input files",
        )
    return IngestReport(
        output=output,
        grid=plan.grid,
        band_names=tuple(band_names),
        valid_pixels=stats.valid_count,
        class_histogram=stats.histogram(cfg.unlabelled) if plan.label is not None else {},
        warnings=tuple(warnings),
    )


def _provenance(cfg: IngestConfig, plan: IngestPlan) -> dict[str, Any]:
    return {
        "images": list(cfg.images),
        "label": cfg.label,
        "label_map": {str(k): v for k, v in cfg.label_map.items()},
        "label_map_rest": cfg.label_map_rest,
        "reprojected_labels": plan.reproject_labels,
    }


def ingest_tiles(cfg: IngestConfig, *, progress: bool = True) -> IngestReport:
    """Tiles on any grids mosaicked onto the state's grid, inside its boundary."""
    output = cfg.output  # refused when it exists, unless overwrite: the output guard
    plan, blocks, warnings = plan_mosaic(cfg)
    for w in warnings:
        log.warning(w)
    tiling = plan.grid.blocks(cfg.block)
    log.info(
        "target grid %s; %d tiles; %d of %d blocks meet the area to map",
        plan.grid.describe(),
        len(plan.tiles),
        len(blocks),
        len(tiling),
    )
    with replace_store(output, overwrite=cfg.overwrite) as work_url:
        stats = build_store(
            work_url,
            plan.grid,
            MosaicReader(plan),
            band_names=list(plan.band_names),
            dtype=plan.dtype,
            nodata=plan.nodata,
            with_label=plan.has_label,
            unlabelled=cfg.unlabelled,
            class_names=cfg.classes,
            chunk=cfg.chunk,
            block=cfg.block,
            engine=cfg.engine,
            source=_mosaic_provenance(cfg, plan),
            overwrite=cfg.overwrite,
            progress=progress,
            what_nodata="no tile holds a valid pixel inside the area to map; check the tiles, "
            "their nodata and masks, and the boundary",
            blocks=blocks,
        )
    return IngestReport(
        output=output,
        grid=plan.grid,
        band_names=plan.band_names,
        valid_pixels=stats.valid_count,
        class_histogram=stats.histogram(cfg.unlabelled) if plan.has_label else {},
        warnings=tuple(warnings),
    )


def _mosaic_provenance(cfg: IngestConfig, plan: MosaicPlan) -> dict[str, Any]:
    """What a mosaicked scene was made from: tiles, dates, boundary, rules."""
    starts = sorted(t.start for t in plan.tiles if t.start)
    ends = sorted(t.end for t in plan.tiles if t.end)
    return {
        "mode": "tiles",
        "tiles": [{"name": t.name, "bands": [a.path for a in t.bands]} for t in plan.tiles],
        "datetime": {"start": starts[0], "end": ends[-1]} if starts and ends else None,
        "aoi": {"path": plan.aoi.source, "area": plan.aoi.area(), "where": cfg.aoi_where}
        if plan.aoi
        else None,
        "resampling": plan.resampling,
        "overlap": plan.overlap,
        "mask_values": list(plan.mask_values),
        "label": cfg.label,
        "label_field": cfg.label_field,
        "label_map": {str(k): v for k, v in cfg.label_map.items()},
        "label_map_rest": cfg.label_map_rest,
    }
