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
* ``map_probabilities.tif`` -- with ``probabilities``, the probability of each class x 255 as a
  multi-band COG (:mod:`w2w.export.probabilities`; the mosaic must come from
  ``w2w predict --probabilities``);
* ``map.json`` -- a STAC Item (STAC 1.1, projection, classification, raster, file and
  processing extensions) describing the assets, with class counts, the imagery's dates, the
  footprint of the valid pixels and relative links (:mod:`w2w.export.stac`), validated
  offline before it is published;
* ``map_model.json`` -- the model that predicted the map as a STAC Item with the Machine
  Learning Model extension (:mod:`w2w.export.model_item`), when its bundle is readable;
* ``map_quicklook.png`` -- a picture of the map with a legend of class colours and names;
* ``map.qml`` -- a QGIS layer style (paletted renderer with class names), which QGIS applies
  on its own when it opens ``map.tif`` from a folder;
* ``map.tif.aux.xml`` -- a GDAL PAM sidecar with the class band's category names and raster
  attribute table (value, name, colour, pixel count), which GDAL (``gdalinfo``, QGIS,
  ArcGIS) reads whenever it opens ``map.tif`` (see :mod:`.pam`);
* ``map.sld`` -- an OGC SLD 1.0.0 style (class colours and names) for map servers.
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
from pathlib import Path
from typing import Any

import rasterio

from w2w.core import storage
from w2w.core.classes import CLASS_NODATA, ClassInfo
from w2w.core.errors import ConfigError, InputError
from w2w.core.grid import Grid
from w2w.core.outputs import publish_files, recover_files
from w2w.core.store import MosaicStore
from w2w.export.cog import (
    StagedFiles,
    check_cog,
    codec_available,
    overview_factors,
    scratch,
    to_cog,
    write_stages,
)
from w2w.export.config import ExportConfig, ExportTargets, export_targets
from w2w.export.footprint import footprint_wgs84
from w2w.export.model_item import model_item
from w2w.export.pam import pam_sidecar
from w2w.export.probabilities import write_probability_stage
from w2w.export.stac import stac_item
from w2w.export.stac_schemas import validate_item
from w2w.export.styles import qgis_style, render_quicklook, sld_style
from w2w.export.vector import export_vector

log = logging.getLogger("w2w")


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
    model: str | None = None  # the model's STAC MLM Item, where the bundle was readable


def export(cfg: ExportConfig, *, progress: bool = True) -> ExportResult:
    """Export a mosaic as COG(s), class sidecar, STAC Items, quicklook, styles and polygons;
    see the module notes."""
    mosaic = MosaicStore.open(cfg.input)
    classes = _check_mosaic(mosaic, cfg)
    targets = export_targets(cfg)
    _check_outputs(cfg, targets)
    grid = mosaic.grid
    factors = overview_factors(grid.height, grid.width, cfg.blocksize)
    env = {"GDAL_CACHEMAX": cfg.cache_mb, "GDAL_NUM_THREADS": "ALL_CPUS"}
    with scratch(cfg) as work, storage.writing_to(work), rasterio.Env(**env):
        stage, rasters = _make_rasters(mosaic, work, cfg, targets, factors, progress=progress)
        cog_path = rasters["cog"]
        assert cog_path is not None
        vector = export_vector(
            cog_path, work, targets.vector, classes, block=cfg.blocksize, progress=progress
        )
        png, ql_shape = render_quicklook(cog_path, classes, cfg.quicklook_size)
        geometry, bbox = footprint_wgs84(stage.footprint, grid)
        model = model_item(mosaic, targets.model, geometry, bbox)
        item = stac_item(
            cfg,
            mosaic,
            targets,
            stage.counts,
            quicklook_shape=ql_shape,
            files={**rasters, "vector": vector.path if vector else None},
            footprint=(geometry, bbox),
            model_item=targets.model if model else None,
        )
        validate_item(item, targets.stac)
        (work / "quicklook.png").write_bytes(png)
        (work / "style.qml").write_text(qgis_style(classes))
        (work / "classes.aux.xml").write_text(pam_sidecar(classes, stage.counts), encoding="utf-8")
        sld = sld_style(classes, layer=targets.sld.rsplit("/", 1)[-1].removesuffix(".sld"))
        (work / "style.sld").write_text(sld, encoding="utf-8")
        (work / "item.json").write_text(json.dumps(item, indent=2) + "\n")
        if model is not None:
            validate_item(model, targets.model)
            (work / "model.json").write_text(json.dumps(model, indent=2) + "\n")
        _publish_set(targets, work, rasters, vector, with_model=model is not None)
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
        model=targets.model if model is not None else None,
    )


def _publish_set(
    targets: ExportTargets,
    work: Path,
    rasters: dict[str, Path | None],
    vector: Any,
    *,
    with_model: bool,
) -> None:
    """Publish the finished files of the scratch folder as one set, the Item last (see
    :func:`publish_files`)."""
    cog_path = rasters["cog"]
    assert cog_path is not None
    files = [(targets.cog, cog_path), (targets.sidecar, work / "classes.aux.xml")]
    for key in ("confidence", "probabilities"):
        url, path = getattr(targets, key), rasters[key]
        if url and path is not None:
            files.append((url, path))
    files += [
        (targets.quicklook, work / "quicklook.png"),
        (targets.style, work / "style.qml"),
        (targets.sld, work / "style.sld"),
    ]
    if vector:
        files.append((vector.target, vector.path))
    if with_model:
        files.append((targets.model, work / "model.json"))
    files.append((targets.stac, work / "item.json"))
    publish_files(files)


def _check_outputs(cfg: ExportConfig, targets: ExportTargets) -> None:
    """Finish an earlier export killed while publishing; refuse a compression this GDAL
    cannot write (an existing export without ``overwrite``: the output guard)."""
    if not storage.is_remote(targets.cog):
        recover_files(targets.cog)  # an earlier export killed while publishing
    if not codec_available(cfg.compress):
        raise ConfigError(
            f"this GDAL ({rasterio.__gdal_version__}) cannot write {cfg.compress} "
            "compression; use compress=deflate"
        )


def _make_rasters(
    mosaic: MosaicStore,
    work: Path,
    cfg: ExportConfig,
    targets: ExportTargets,
    factors: list[int],
    *,
    progress: bool,
) -> tuple[StagedFiles, dict[str, Path | None]]:
    """The checked COGs in the scratch folder: classes, confidence and probabilities (the
    last two where asked), by role."""
    grid = mosaic.grid
    stage = write_stages(mosaic, work, cfg, factors, progress=progress)
    staged = {"cog": stage.classes, "confidence": stage.confidence}
    if cfg.probabilities:
        staged["probabilities"] = write_probability_stage(mosaic, work, cfg, factors)
    out: dict[str, Path | None] = {"cog": None, "confidence": None, "probabilities": None}
    for role, source in staged.items():
        if source is None:
            continue
        path = work / f"{role}.tif"
        to_cog(source, path, cfg, predictor=role != "cog")
        check_cog(path, grid, len(factors), getattr(targets, role) or "")
        out[role] = path
    return stage, out


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
    if cfg.probabilities and not mosaic.has_probabilities:
        raise InputError(
            f"mosaic {mosaic.url} has no probabilities; predict it with --probabilities, or "
            "export without --probabilities"
        )
    if cfg.confidence != "none" and not mosaic.has_confidence:
        raise InputError(
            f"mosaic {mosaic.url} has no confidence array; export with --confidence none"
        )
    return classes
