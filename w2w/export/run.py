"""Export: a mosaic store to a Cloud-Optimized GeoTIFF, a STAC Item and a quicklook.

What ``w2w export`` writes, beside each other (``map.tif`` named by ``output``):

* ``map.tif`` -- the classes as a COG: uint8, nodata 255, an embedded colour table built from
  the class table, class names in the band metadata (``CLASSES`` as JSON and one
  ``CLASS_<id>`` item per class, which ``gdalinfo`` lists), provenance in the dataset
  metadata (``W2W_PROVENANCE``, ``W2W_BUNDLE_HASH``), and internal overviews built with
  **mode** resampling, so a zoomed-out view shows the majority class of each cell instead of
  an arbitrary pixel (nearest) or a meaningless mean of class ids (average);
* ``map_confidence.tif`` -- the top-class probability x 255 as a COG (``confidence="file"``,
  the default), overviews by **average**, nodata 0 (a predicted pixel cannot have
  confidence 0: the top class of K has probability >= 1/K);
* ``map.json`` -- a STAC Item (STAC 1.1, projection, classification, raster, file and
  processing extensions) describing the assets, with class counts;
* ``map_quicklook.png`` -- a picture of the map with a legend of class colours and names;
* ``map.qml`` -- a QGIS layer style (paletted renderer with class names), which QGIS applies
  on its own when it opens ``map.tif`` from a folder;
* the ``vector`` file, when asked for (``--vector landcover.gpkg`` or ``.fgb``) -- the map as
  polygons (``class_id``, ``class_name``, ``area_ha``) in the map's CRS, polygonized block by
  block from the finished COG and merged across block borders (:mod:`.vector`).

How memory stays bounded whatever the size of the state: the mosaic is read one write unit
(chunk or shard) at a time and written window by window into a tiled GeoTIFF in a local
scratch folder, through GDAL's block cache (``cache_mb``); GDAL then builds the overviews
from that file and the COG driver copies file and overviews into the final layout. No step
holds the raster in memory; the quicklook is a decimated read that GDAL serves from an
overview level. The finished files are checked (COG layout, grid, overviews) and only then
moved into place -- atomically, one file at a time, the STAC Item last -- so an existing
export is never replaced by a broken one and an Item never points at missing files.

``confidence="band"`` writes confidence as a second band of the class COG instead. A GeoTIFF
colour table only goes with a single-sample image (GDAL turns a second band of a paletted
TIFF into alpha, and viewers would use confidence as transparency), so in that mode the COG
carries **no** colour table (colours still travel in the STAC Item and the QGIS style);
GeoTIFF has one nodata value for all bands, so confidence is clipped to 254 (255 means
nodata); and GeoTIFF overviews use one resampling for all bands, so confidence overviews
use the class resampling as well. Prefer the default ``file`` unless one file is a must.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import rasterio

from w2w.core import storage
from w2w.core.classes import CLASS_NODATA, ClassInfo
from w2w.core.errors import ConfigError, InputError, OutputError
from w2w.core.grid import Grid
from w2w.core.outputs import publish_files, recover_files
from w2w.core.store import MosaicStore
from w2w.export.cog import (
    check_cog,
    codec_available,
    overview_factors,
    scratch,
    to_cog,
    write_stages,
)
from w2w.export.config import ExportConfig
from w2w.export.stac import stac_item
from w2w.export.styles import qgis_style, render_quicklook
from w2w.export.vector import export_vector

log = logging.getLogger("w2w")


@dataclass(frozen=True)
class ExportTargets:
    """Where each exported file goes (local paths or URLs)."""

    cog: str
    confidence: str | None
    stac: str
    quicklook: str
    style: str
    vector: str | None = None

    def all(self) -> list[str]:
        """Every file the export writes."""
        files = (self.cog, self.confidence, self.quicklook, self.style, self.vector, self.stac)
        return [u for u in files if u]


@dataclass(frozen=True)
class ExportResult:
    """What ``w2w export`` wrote."""

    cog: str
    confidence: str | None
    stac: str
    quicklook: str
    style: str
    grid: Grid
    overviews: tuple[int, ...]
    class_counts: dict[str, int]
    nodata_pixels: int
    size_bytes: int
    vector: str | None = None
    vector_polygons: int = 0


def export_targets(cfg: ExportConfig) -> ExportTargets:
    """The file names an export writes: the COG and its siblings (same stem)."""
    cog = cfg.output
    stem = cog[: cog.rfind(".")]
    return ExportTargets(
        cog=cog,
        confidence=f"{stem}_confidence.tif" if cfg.confidence == "file" else None,
        stac=f"{stem}.json",
        quicklook=f"{stem}_quicklook.png",
        style=f"{stem}.qml",
        vector=cfg.vector,
    )


def export(cfg: ExportConfig, *, progress: bool = True) -> ExportResult:
    """Export a mosaic as COG(s), STAC Item, quicklook, QGIS style and polygons (module notes)."""
    mosaic = MosaicStore.open(cfg.input)
    classes = _check_mosaic(mosaic, cfg)
    targets = export_targets(cfg)
    if not storage.is_remote(targets.cog):
        recover_files(targets.cog)  # an earlier export killed while publishing
    existing = [u for u in targets.all() if storage.exists(u)]
    if existing and not cfg.overwrite:
        raise OutputError(
            f"{existing[0]} exists already; pass --overwrite to replace the export "
            "or choose another output name"
        )
    if not codec_available(cfg.compress):
        raise ConfigError(
            f"this GDAL ({rasterio.__gdal_version__}) cannot write {cfg.compress} "
            "compression; use compress=deflate"
        )
    grid = mosaic.grid
    factors = overview_factors(grid.height, grid.width, cfg.blocksize)
    env = {"GDAL_CACHEMAX": cfg.cache_mb, "GDAL_NUM_THREADS": "ALL_CPUS"}
    with scratch(cfg) as work, rasterio.Env(**env):
        stage = write_stages(mosaic, work, cfg, factors, progress=progress)
        cog_path = work / "map.tif"
        to_cog(stage.classes, cog_path, cfg, predictor=False)
        check_cog(cog_path, grid, len(factors), targets.cog)
        conf_path = None
        if stage.confidence is not None:
            conf_path = work / "confidence.tif"
            to_cog(stage.confidence, conf_path, cfg, predictor=True)
            check_cog(conf_path, grid, len(factors), targets.confidence or "")
        vector = export_vector(
            cog_path, work, targets.vector, classes, block=cfg.blocksize, progress=progress
        )
        png, ql_shape = render_quicklook(cog_path, classes, cfg.quicklook_size)
        made = {"cog": cog_path, "confidence": conf_path, "vector": vector.path if vector else None}
        item = stac_item(
            cfg,
            mosaic,
            targets,
            stage.counts,
            quicklook_shape=ql_shape,
            files=made,
        )
        (work / "quicklook.png").write_bytes(png)
        (work / "style.qml").write_text(qgis_style(classes))
        (work / "item.json").write_text(json.dumps(item, indent=2) + "\n")
        # Published as one set, the Item last (see publish_files).
        files = [(targets.cog, cog_path)]
        if conf_path is not None and targets.confidence:
            files.append((targets.confidence, conf_path))
        files += [
            (targets.quicklook, work / "quicklook.png"),
            (targets.style, work / "style.qml"),
            *([(vector.target, vector.path)] if vector else []),
            (targets.stac, work / "item.json"),
        ]
        publish_files(files)
        size = cog_path.stat().st_size
    stale = f"{targets.stac[: -len('.json')]}_confidence.tif"
    if targets.confidence is None and storage.exists(stale):
        log.warning("%s is left from an earlier export and is not part of this one", stale)
    names = {c.id: c.name for c in classes}
    return ExportResult(
        cog=targets.cog,
        confidence=targets.confidence,
        stac=targets.stac,
        quicklook=targets.quicklook,
        style=targets.style,
        grid=grid,
        overviews=tuple(factors),
        class_counts={names[i]: int(stage.counts[i]) for i in names},
        nodata_pixels=int(stage.counts[CLASS_NODATA]),
        size_bytes=size,
        vector=targets.vector,
        vector_polygons=vector.polygons if vector else 0,
    )


def _check_mosaic(mosaic: MosaicStore, cfg: ExportConfig) -> tuple[ClassInfo, ...]:
    """Refuse a mosaic that cannot be exported as asked; returns its class table."""
    mosaic.require_complete(allow_incomplete=cfg.allow_incomplete, then="export it")
    mosaic.require_whole()
    classes = mosaic.classes
    if not classes:
        raise InputError(f"mosaic {mosaic.url} has an empty class table; nothing to export")
    bad = [c.id for c in classes if not 0 <= c.id < CLASS_NODATA]
    if bad:
        raise InputError(f"mosaic {mosaic.url} has class ids {bad} outside 0..254 (255 is nodata)")
    if cfg.confidence != "none" and not mosaic.has_confidence:
        raise InputError(
            f"mosaic {mosaic.url} has no confidence array; export with --confidence none"
        )
    return classes
