"""The COG of an export, streamed: mosaic chunks -> tiled scratch GeoTIFF -> overviews
built by GDAL -> GDAL's COG driver, checked before anything is published.

The mosaic is read one write unit (chunk or shard) at a time and written window by window
through GDAL's block cache (``cache_mb``); no step holds the raster in memory. Class
overviews use **mode** resampling (a zoomed-out view shows the majority class of each
cell), confidence overviews the average.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import ColorInterp, Resampling
from shapely.geometry.base import BaseGeometry

from w2w.core import storage
from w2w.core.classes import CLASS_NODATA, CONFIDENCE_NODATA, ClassInfo
from w2w.core.errors import ConfigError, StageFailedError
from w2w.core.grid import Grid
from w2w.core.progress import progress_bar
from w2w.core.provenance import find_bundle_hash, w2w_version
from w2w.core.store import MosaicStore
from w2w.export.config import ExportConfig
from w2w.export.footprint import FootprintBuilder

#: In ``confidence="band"`` the file has one nodata (255) for both bands: confidence <= 254.
CONFIDENCE_BAND_MAX = 254


@functools.lru_cache(maxsize=8)
def codec_available(name: str) -> bool:
    """Whether this GDAL can write a GeoTIFF with compression ``name``."""
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.io import MemoryFile

    profile = {"driver": "GTiff", "width": 16, "height": 16, "count": 1, "dtype": "uint8"}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with MemoryFile() as mem, mem.open(**profile, compress=name) as ds:
                ds.write(np.zeros((1, 16, 16), dtype="uint8"))
    except Exception:  # noqa: BLE001 - GDAL reports a missing codec as a generic error
        return False
    return True


def overview_factors(height: int, width: int, blocksize: int) -> list[int]:
    """Decimation factors 2, 4, 8, ... until the smallest level fits in one tile."""
    factors: list[int] = []
    f = 1
    while max(height, width) / f > blocksize:
        f *= 2
        factors.append(f)
    return factors


# -- staging: mosaic -> tiled GeoTIFF with overviews ------------------------------------------


@dataclass(frozen=True)
class StagedFiles:
    classes: Path
    confidence: Path | None
    counts: np.ndarray  # (256,) pixels per stored value, 255 = nodata
    footprint: BaseGeometry | None  # outline of the valid pixels, pixel units


@contextlib.contextmanager
def scratch(cfg: ExportConfig) -> Iterator[Path]:
    base = None
    if cfg.workdir is not None:
        if storage.is_remote(cfg.workdir):
            raise ConfigError("workdir must be a local folder (it holds scratch GeoTIFFs)")
        storage.ensure_writable_dir(cfg.workdir)
        base = cfg.workdir
    with tempfile.TemporaryDirectory(prefix="w2w-export-", dir=base) as tmp:
        yield Path(tmp)


def stage_profile(grid: Grid, count: int, nodata: int | None, blocksize: int) -> dict[str, Any]:
    """A tiled GeoTIFF profile for scratch files: fast compression, tiles as in the COG."""
    codec = "zstd" if codec_available("zstd") else "lzw"
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": grid.width,
        "height": grid.height,
        "count": count,
        "dtype": "uint8",
        "crs": grid.crs,
        "transform": grid.transform,
        "nodata": nodata,
        "tiled": True,
        "blockxsize": blocksize,
        "blockysize": blocksize,
        "compress": codec,
        "interleave": "band",
        "BIGTIFF": "IF_SAFER",
        # Tiles never written (blocks outside the state) read as nodata.
        "SPARSE_OK": "TRUE",
    }
    if codec == "zstd":
        profile["ZSTD_LEVEL"] = 1
    return profile


def write_stages(
    mosaic: MosaicStore, work: Path, cfg: ExportConfig, factors: list[int], *, progress: bool
) -> StagedFiles:
    """Stream the mosaic into tiled scratch GeoTIFFs, count classes, outline the valid
    pixels, build the overviews."""
    grid = mosaic.grid
    classes = mosaic.classes
    band_mode = cfg.confidence == "band"
    class_path = work / "stage_classes.tif"
    conf_path = work / "stage_confidence.tif" if cfg.confidence == "file" else None
    counts = np.zeros(256, dtype=np.int64)
    footprint = FootprintBuilder()
    rows, cols = mosaic.chunk_shape("class")
    windows = grid.blocks(rows, cols).windows()

    with contextlib.ExitStack() as stack:
        dst = stack.enter_context(
            rasterio.open(
                class_path,
                "w",
                **stage_profile(grid, 2 if band_mode else 1, CLASS_NODATA, cfg.blocksize),
            )
        )
        conf_dst = None
        if conf_path is not None:
            conf_dst = stack.enter_context(
                rasterio.open(
                    conf_path,
                    "w",
                    **stage_profile(grid, 1, CONFIDENCE_NODATA, cfg.blocksize),
                )
            )
        _describe_class_dataset(dst, mosaic, classes, band_mode=band_mode)
        if conf_dst is not None:
            _describe_confidence_band(conf_dst, 1)
        advance = stack.enter_context(progress_bar("export", total=len(windows), enabled=progress))
        empty = mosaic.empty_blocks()
        for window in windows:
            if empty[mosaic.tiling.index(window)]:  # outside the state: left sparse (nodata)
                counts[CLASS_NODATA] += window.size
                advance(1)
                continue
            cls = mosaic.read_class(window)
            counts += np.bincount(cls.ravel(), minlength=256)
            footprint.add(window, cls != CLASS_NODATA)
            rw = window.to_rasterio()
            dst.write(cls, 1, window=rw)
            if band_mode:
                conf = np.minimum(mosaic.read_confidence(window), CONFIDENCE_BAND_MAX)
                conf[cls == CLASS_NODATA] = CLASS_NODATA
                dst.write(conf, 2, window=rw)
            elif conf_dst is not None:
                conf = mosaic.read_confidence(window)
                conf[cls == CLASS_NODATA] = CONFIDENCE_NODATA
                conf_dst.write(conf, 1, window=rw)
            advance(1)
        if factors:
            dst.build_overviews(factors, Resampling[cfg.overview_resampling])
            if conf_dst is not None:
                conf_dst.build_overviews(factors, Resampling.average)
        dst.update_tags(ns="rio_overview", resampling=cfg.overview_resampling)
        if conf_dst is not None:
            conf_dst.update_tags(ns="rio_overview", resampling="average")
    return StagedFiles(class_path, conf_path, counts, footprint.outline(grid.height, grid.width))


def _describe_class_dataset(
    dst: Any, mosaic: MosaicStore, classes: tuple[ClassInfo, ...], *, band_mode: bool
) -> None:
    """Colour table, class names, band description and provenance of the class raster."""
    table = [{"value": c.id, "name": c.name, "color": c.hex_color("#")} for c in classes]
    dst.set_band_description(1, "land-cover class")
    dst.update_tags(
        1,
        CLASSES=json.dumps(table, separators=(",", ":")),
        NODATA_MEANING="not mapped (outside the state or no valid input)",
        **{f"CLASS_{c.id}": c.name for c in classes},
    )
    if band_mode:
        _describe_confidence_band(dst, 2)
        dst.colorinterp = [ColorInterp.gray, ColorInterp.undefined]
    else:
        colormap = {c.id: (*c.color, 255) for c in classes}
        colormap[CLASS_NODATA] = (0, 0, 0, 0)
        dst.write_colormap(1, colormap)
    provenance = mosaic.provenance
    now = dt.datetime.now(dt.UTC)
    tags = {
        "TIFFTAG_SOFTWARE": f"w2w {w2w_version()}",
        "TIFFTAG_DATETIME": now.strftime("%Y:%m:%d %H:%M:%S"),
        "TIFFTAG_IMAGEDESCRIPTION": "Land-cover classes mapped wall to wall by w2w",
        "W2W_PROVENANCE": json.dumps(provenance, sort_keys=True, separators=(",", ":")),
    }
    bundle_hash = find_bundle_hash(provenance)
    if bundle_hash:
        tags["W2W_BUNDLE_HASH"] = bundle_hash
    dst.update_tags(**tags)


def _describe_confidence_band(dst: Any, band: int) -> None:
    dst.set_band_description(
        band, "confidence: top-class probability x 255; 1 = class set by the minimum mapping unit"
    )
    dst.scales = tuple(1 / 255 if b == band else s for b, s in enumerate(dst.scales, start=1))
    dst.offsets = tuple(0.0 for _ in dst.offsets)


# -- COG ------------------------------------------------------------------------------------


def to_cog(src: Path, dst: Path, cfg: ExportConfig, *, predictor: bool) -> None:
    """Copy a tiled GeoTIFF and its overviews into the COG layout (GDAL's COG driver)."""
    from rasterio.shutil import copy as rio_copy

    options: dict[str, Any] = {
        "driver": "COG",
        "COMPRESS": cfg.compress.upper(),
        "BLOCKSIZE": cfg.blocksize,
        "OVERVIEWS": "FORCE_USE_EXISTING",
        "BIGTIFF": "IF_SAFER",
        "NUM_THREADS": "ALL_CPUS",
    }
    if predictor:
        options["PREDICTOR"] = "YES"
    rio_copy(str(src), str(dst), **options)


def check_cog(path: Path, grid: Grid, n_overviews: int, name: str) -> None:
    """Refuse to publish a file that is not a COG on the mosaic's grid with its overviews."""
    problems = []
    with rasterio.open(path) as ds:
        if ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") != "COG":
            problems.append("the file does not have the COG layout")
        got = Grid.from_rasterio(ds)
        if not grid.same_pixels(got, tolerance=0) or grid.crs_relation(got) == "different":
            problems.append(f"grid [{got.describe()}] differs from the mosaic's")
        if len(ds.overviews(1)) != n_overviews:
            problems.append(f"{len(ds.overviews(1))} overview levels instead of {n_overviews}")
    if problems:
        raise StageFailedError(
            f"the COG made for {name} failed its checks ({'; '.join(problems)}); nothing was "
            "published -- please report this as a w2w bug"
        )
