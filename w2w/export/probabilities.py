"""The per-class probabilities of a mosaic (``w2w predict --probabilities``) as a multi-band
COG: one uint8 band per class (probability x 255, scale 1/255 recorded), named after the
class, with an internal mask that hides the pixels the map leaves as nodata -- a probability
of 0 is a value, so no nodata value is used. Streamed like the class COG: one write unit at a
time into a tiled scratch GeoTIFF, overviews by average, then GDAL's COG driver.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling

from w2w.core.classes import CLASS_NODATA
from w2w.core.store import MosaicStore
from w2w.export.cog import stage_profile
from w2w.export.config import ExportConfig


def write_probability_stage(
    mosaic: MosaicStore, work: Path, cfg: ExportConfig, factors: list[int]
) -> Path:
    """Stream the mosaic's probabilities into a tiled scratch GeoTIFF with a mask and
    overviews; returns its path."""
    grid, classes = mosaic.grid, mosaic.classes
    path = work / "stage_probabilities.tif"
    profile = stage_profile(grid, len(classes), None, cfg.blocksize)
    rows, cols = mosaic.chunk_shape("class")
    empty = mosaic.empty_blocks()
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as dst:
        for band, c in enumerate(classes, start=1):
            dst.set_band_description(band, f"probability of {c.name} (class {c.id}) x 255")
        dst.scales = (1 / 255,) * len(classes)
        dst.offsets = (0.0,) * len(classes)
        for window in grid.blocks(rows, cols).windows():
            rw = window.to_rasterio()
            if empty[mosaic.tiling.index(window)]:
                dst.write_mask(np.zeros((window.height, window.width), np.uint8), window=rw)
                continue
            valid = mosaic.read_class(window) != CLASS_NODATA
            probs = mosaic.read_probabilities(window)
            probs[:, ~valid] = 0
            dst.write(probs, window=rw)
            dst.write_mask(np.where(valid, 255, 0).astype(np.uint8), window=rw)
        if factors:
            dst.build_overviews(factors, Resampling.average)
        dst.update_tags(ns="rio_overview", resampling="average")
    return path
