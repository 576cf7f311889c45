"""The STAC Item of an export: the COG(s), quicklook and style as assets, with the
projection, classification, raster, file and processing extensions."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from w2w.core.classes import CLASS_NODATA, CONFIDENCE_NODATA
from w2w.core.grid import Grid
from w2w.core.provenance import find_bundle_hash, w2w_version
from w2w.core.store import MosaicStore
from w2w.export.config import ExportConfig, iso_utc
from w2w.export.vector import vector_asset

if TYPE_CHECKING:
    from w2w.export.run import ExportTargets

log = logging.getLogger("w2w")

STAC_VERSION = "1.1.0"
STAC_EXTENSIONS = {
    "projection": "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
    "classification": "https://stac-extensions.github.io/classification/v2.0.0/schema.json",
    "raster": "https://stac-extensions.github.io/raster/v2.0.0/schema.json",
    "file": "https://stac-extensions.github.io/file/v2.1.0/schema.json",
    "processing": "https://stac-extensions.github.io/processing/v1.2.0/schema.json",
}
COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"


def stac_item(
    cfg: ExportConfig,
    mosaic: MosaicStore,
    targets: ExportTargets,
    counts: np.ndarray,
    *,
    quicklook_shape: tuple[int, int],
    files: dict[str, Path | None],
) -> dict[str, Any]:
    """The STAC Item of an export (assets referenced relative to the Item's folder)."""
    grid = mosaic.grid
    geometry, bbox = footprint_wgs84(grid)
    class_objects = _class_objects(mosaic, counts)
    return {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": sorted(STAC_EXTENSIONS.values()),
        "id": _stem(targets.cog),
        "geometry": geometry,
        "bbox": bbox,
        "properties": _properties(cfg, mosaic, targets),
        "links": [],
        "assets": _assets(cfg, grid, targets, class_objects, quicklook_shape, files),
    }


def _class_objects(mosaic: MosaicStore, counts: np.ndarray) -> list[dict[str, Any]]:
    """The classification extension's classes, with pixel counts and shares."""
    classes = mosaic.classes
    total = int(counts.sum())
    objects: list[dict[str, Any]] = [
        {
            "value": c.id,
            "name": slug(c.name),
            "title": c.name,
            "color_hint": c.hex_color(),
            "count": int(counts[c.id]),
            "percentage": round(100 * int(counts[c.id]) / total, 4),
        }
        for c in classes
    ]
    objects.append(
        {
            "value": CLASS_NODATA,
            "name": "nodata",
            "title": "No data",
            "nodata": True,
            "count": int(counts[CLASS_NODATA]),
            "percentage": round(100 * int(counts[CLASS_NODATA]) / total, 4),
        }
    )
    unknown = int(counts.sum() - counts[CLASS_NODATA] - sum(counts[c.id] for c in classes))
    if unknown:
        log.warning("%d mosaic pixels hold values outside the class table", unknown)
    return objects


def _assets(
    cfg: ExportConfig,
    grid: Grid,
    targets: ExportTargets,
    class_objects: list[dict[str, Any]],
    quicklook_shape: tuple[int, int],
    files: dict[str, Path | None],
) -> dict[str, Any]:
    """The COG(s), quicklook and style, with their bands (raster extension) and files."""
    class_band: dict[str, Any] = {"name": "class", "nodata": CLASS_NODATA, "data_type": "uint8"}
    if grid.crs.is_projected:
        class_band["raster:spatial_resolution"] = grid.res[0]
    confidence_band = {
        "name": "confidence",
        "nodata": CLASS_NODATA if cfg.confidence == "band" else CONFIDENCE_NODATA,
        "data_type": "uint8",
        "raster:scale": 1 / 255,
        "raster:offset": 0.0,
        "description": "probability of the mapped class, x 255; 1 = class set by the minimum "
        "mapping unit (probability unknown)",
    }
    classes_asset: dict[str, Any] = {
        "href": _relative(targets.cog),
        "type": COG_MEDIA_TYPE,
        "title": "Land-cover classes",
        "roles": ["data"],
        **_file_fields(files["cog"]),
    }
    if cfg.confidence == "band":
        class_band["classification:classes"] = class_objects
        classes_asset["bands"] = [class_band, confidence_band]
    else:
        classes_asset["classification:classes"] = class_objects
        classes_asset["bands"] = [class_band]
    assets: dict[str, Any] = {"classes": classes_asset}
    if targets.confidence:
        assets["confidence"] = {
            "href": _relative(targets.confidence),
            "type": COG_MEDIA_TYPE,
            "title": "Confidence (probability of the mapped class)",
            "roles": ["data", "confidence"],
            "bands": [confidence_band],
            **_file_fields(files["confidence"]),
        }
    assets["quicklook"] = {
        "href": _relative(targets.quicklook),
        "type": "image/png",
        "title": "Quicklook with legend",
        "roles": ["overview", "visual"],
        "proj:code": None,
        "proj:shape": list(quicklook_shape),
    }
    assets["style"] = {
        "href": _relative(targets.style),
        "type": "application/xml",
        "title": "QGIS layer style: class colours and names",
        "roles": ["metadata", "style"],
    }
    if targets.vector:
        assets["vector"] = vector_asset(targets.vector, targets.stac, files.get("vector"))
    return assets


def _properties(cfg: ExportConfig, mosaic: MosaicStore, targets: ExportTargets) -> dict[str, Any]:
    """The Item's properties: dates, projection, processing and w2w's provenance."""
    grid = mosaic.grid
    epsg = grid.crs.to_epsg(confidence_threshold=100)
    provenance = mosaic.provenance
    created = iso_utc(dt.datetime.now(dt.UTC))
    properties: dict[str, Any] = {
        "title": f"Land-cover map {_stem(targets.cog)}",
        "description": "Wall-to-wall land-cover classes predicted by w2w, one value per pixel.",
        "datetime": cfg.datetime or created,
        "created": created,
        "proj:code": f"EPSG:{epsg}" if epsg else None,
        "proj:wkt2": grid.crs_wkt,
        "proj:shape": [grid.height, grid.width],
        "proj:transform": [float(v) for v in list(grid.transform)[:6]],
        "proj:bbox": [float(v) for v in grid.bounds],
        "processing:software": {"w2w": w2w_version()},
        "processing:lineage": "mosaic store exported to a COG by `w2w export`; overviews of "
        f"classes by {cfg.overview_resampling}, of confidence by average",
        "w2w:mosaic": cfg.input,
        "w2w:provenance": provenance,
        "w2w:mosaic_identity": mosaic.identity,
    }
    if grid.crs.is_projected:
        properties["gsd"] = grid.res[0]
    bundle_hash = find_bundle_hash(provenance)
    if bundle_hash:
        properties["w2w:bundle_hash"] = bundle_hash
    return properties


def footprint_wgs84(grid: Grid, points_per_edge: int = 11) -> tuple[dict[str, Any], list[float]]:
    """The grid's outline in WGS84 (densified edges: straight in the map CRS, curved in
    longitude/latitude) as a GeoJSON Polygon, and its bounding box.
    """
    from rasterio.warp import transform as warp_transform

    h, w = grid.height, grid.width
    t = np.linspace(0.0, 1.0, points_per_edge)[:-1]
    cols = np.concatenate([t * w, np.full_like(t, w), (1 - t) * w, np.zeros_like(t)])
    rows = np.concatenate([np.zeros_like(t), t * h, np.full_like(t, h), (1 - t) * h])
    a = grid.transform
    xs = a.a * cols + a.b * rows + a.c
    ys = a.d * cols + a.e * rows + a.f
    if grid.crs.is_geographic and grid.crs.to_epsg() == 4326:
        lon, lat = list(xs), list(ys)
    else:
        lon, lat = warp_transform(grid.crs, "EPSG:4326", list(xs), list(ys))
    ring = [[round(float(x), 7), round(float(y), 7)] for x, y in zip(lon, lat, strict=True)]
    ring.append(ring[0])
    xs_, ys_ = [p[0] for p in ring], [p[1] for p in ring]
    return {"type": "Polygon", "coordinates": [ring]}, [min(xs_), min(ys_), max(xs_), max(ys_)]


def _file_fields(path: Path | None) -> dict[str, Any]:
    """``file:size`` and ``file:checksum`` (multihash SHA2-256) of a finished file."""
    if path is None:
        return {}
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(functools.partial(f.read, 1 << 20), b""):
            digest.update(chunk)
    return {"file:size": os.path.getsize(path), "file:checksum": "1220" + digest.hexdigest()}


def slug(name: str) -> str:
    """A machine-readable class name (letters, digits, ``-`` and ``_``)."""
    out = "".join(ch if ch.isascii() and (ch.isalnum() or ch in "-_") else "_" for ch in name)
    return out.strip("_") or "class"


def _stem(url: str) -> str:
    name = url.rstrip("/").rsplit("/", 1)[-1]
    return name[: name.rfind(".")] if "." in name else name


def _relative(url: str) -> str:
    """An asset href relative to the Item, which sits in the same folder."""
    return "./" + url.rstrip("/").rsplit("/", 1)[-1]
