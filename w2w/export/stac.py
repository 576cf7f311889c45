"""The STAC Item of an export, built with pystac: the COG(s), quicklook and styles as
assets, with the projection, classification, raster, file and processing extensions.

What makes the Item usable as it is by a catalogue:

* **when**: ``datetime`` (or ``start_datetime``/``end_datetime``) is when the imagery was
  seen -- from ``--datetime``, else from the dates ingest recorded (STAC items' dates, or
  the tiles' GDAL ``ACQUISITIONDATETIME``) and predict carried into the mosaic. With neither,
  the export time is used and the Item says so (``w2w:datetime_source``) after a warning:
  never a silent guess. ``created`` is the export time.
* **where**: the footprint of the valid pixels (:mod:`w2w.export.footprint`), counter-
  clockwise, split at the antimeridian; ``proj:wkt2`` is WKT2 (2019), ``proj:code`` the
  EPSG code where there is one.
* **links**: ``self``, and ``derived_from`` the mosaic store and the model's own Item
  (:mod:`w2w.export.model_item`); asset hrefs are relative to the Item (``./map.tif``), and
  so are the links and the paths in ``w2w:provenance`` wherever the Item and the target are
  in the same place (the same local file system, or the same bucket).

Every Item is validated against the core and extension schemas (shipped with w2w, so no
network is needed: :mod:`w2w.export.stac_schemas`) before anything is published.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from w2w.core import storage
from w2w.core.classes import CLASS_NODATA, CONFIDENCE_NODATA
from w2w.core.provenance import find_bundle_hash, records, w2w_version
from w2w.core.store import MosaicStore
from w2w.core.store.cf import wkt2
from w2w.export.config import ExportConfig, iso_utc
from w2w.export.hrefs import absolute_url, file_fields, relative_href
from w2w.export.pam import sidecar_asset
from w2w.export.stac_schemas import EXTENSIONS
from w2w.export.styles import sld_asset
from w2w.export.vector import vector_asset

if TYPE_CHECKING:
    from w2w.export.config import ExportTargets

log = logging.getLogger("w2w")

COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
ITEM_EXTENSIONS = ("projection", "classification", "raster", "file", "processing")


def stac_item(
    cfg: ExportConfig,
    mosaic: MosaicStore,
    targets: ExportTargets,
    counts: np.ndarray,
    *,
    quicklook_shape: tuple[int, int],
    files: dict[str, Path | None],
    footprint: tuple[dict[str, Any] | None, list[float] | None],
    extra_assets: dict[str, dict[str, Any]] | None = None,
    model_item: str | None = None,
) -> dict[str, Any]:
    """The STAC Item of an export, as a dict ready to write (see the module notes);
    ``footprint`` is the GeoJSON geometry and bbox of :func:`footprint_wgs84`."""
    import pystac

    geometry, bbox = footprint
    when, dates = item_dates(cfg, mosaic.provenance)
    item = pystac.Item(
        id=_stem(targets.cog),
        geometry=geometry,
        bbox=bbox,
        datetime=when,
        properties=_properties(cfg, mosaic, targets, dates),
        stac_extensions=[EXTENSIONS[e] for e in ITEM_EXTENSIONS],
    )
    objects = _class_objects(mosaic, counts)
    for key, asset in _assets(cfg, mosaic, targets, objects, files).items():
        item.add_asset(key, _asset(asset))
    item.add_asset("quicklook", _asset(_quicklook_asset(targets, quicklook_shape)))
    item.add_asset(
        "style",
        _asset(
            {
                "href": relative_href(targets.style, targets.stac),
                "type": "application/xml",
                "title": "QGIS layer style: class colours and names",
                "roles": ["metadata", "style"],
            }
        ),
    )
    if targets.vector:
        item.add_asset(
            "vector", _asset(vector_asset(targets.vector, targets.stac, files.get("vector")))
        )
    item.add_asset("sidecar", _asset(sidecar_asset(relative_href(targets.sidecar, targets.stac))))
    item.add_asset("sld", _asset(sld_asset(relative_href(targets.sld, targets.stac))))
    for key, asset in (extra_assets or {}).items():
        item.add_asset(key, _asset(asset))
    item.set_self_href(absolute_url(targets.stac))
    item.add_link(
        pystac.Link(
            "derived_from",
            relative_href(absolute_url(cfg.input), targets.stac),
            title="Mosaic store the map was exported from (Zarr)",
            media_type="application/vnd+zarr",
        )
    )
    if model_item is not None:
        item.add_link(
            pystac.Link(
                "derived_from",
                relative_href(absolute_url(model_item), targets.stac),
                title="The model that predicted the map (STAC MLM Item)",
                media_type="application/geo+json",
            )
        )
    return item.to_dict(include_self_link=True, transform_hrefs=False)


def _asset(fields: dict[str, Any]) -> Any:
    """A pystac Asset from an asset dict (href, type, title, roles, and extension fields)."""
    import pystac

    extra = {k: v for k, v in fields.items() if k not in ("href", "type", "title", "roles")}
    return pystac.Asset(
        href=fields["href"],
        title=fields.get("title"),
        media_type=fields.get("type"),
        roles=fields.get("roles"),
        extra_fields=extra,
    )


# -- dates ------------------------------------------------------------------------------------


def imagery_dates(provenance: dict[str, Any]) -> dict[str, str] | None:
    """The imagery's ``{"start", "end"}`` recorded in a mosaic's provenance, or None."""
    for node in records(provenance):
        span = node.get("imagery_datetime")
        if isinstance(span, dict) and span.get("start") and span.get("end"):
            return {"start": str(span["start"]), "end": str(span["end"])}
    return None


def item_dates(
    cfg: ExportConfig, provenance: dict[str, Any]
) -> tuple[dt.datetime | None, dict[str, Any]]:
    """The Item's ``datetime`` and the date properties that go with it."""
    if cfg.datetime:
        return _parse(cfg.datetime), {"w2w:datetime_source": "--datetime"}
    span = imagery_dates(provenance)
    if span is not None:
        start, end = _parse(span["start"]), _parse(span["end"])
        source = {"w2w:datetime_source": "imagery"}
        if start == end:
            return start, source
        return None, {"start_datetime": iso_utc(start), "end_datetime": iso_utc(end), **source}
    log.warning(
        "the mosaic does not record when its imagery was seen (not ingested from dated tiles "
        "or STAC items); the STAC Item's datetime is the export time -- pass --datetime, "
        "e.g. --datetime 2024-06-30, to give the imagery's date"
    )
    return dt.datetime.now(dt.UTC).replace(microsecond=0), {
        "w2w:datetime_source": "export time (the imagery's date is unknown)"
    }


def _parse(text: str) -> dt.datetime:
    when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


# -- properties and assets --------------------------------------------------------------------


def _properties(
    cfg: ExportConfig, mosaic: MosaicStore, targets: ExportTargets, dates: dict[str, Any]
) -> dict[str, Any]:
    """The Item's properties: dates, projection, processing and w2w's provenance."""
    grid = mosaic.grid
    epsg = grid.crs.to_epsg(confidence_threshold=100)
    provenance = mosaic.provenance
    properties: dict[str, Any] = {
        "title": f"Land-cover map {_stem(targets.cog)}",
        "description": "Wall-to-wall land-cover classes predicted by w2w, one value per pixel.",
        "created": iso_utc(dt.datetime.now(dt.UTC)),
        **dates,
        "proj:code": f"EPSG:{epsg}" if epsg else None,
        "proj:wkt2": wkt2(grid.crs_wkt),
        "proj:shape": [grid.height, grid.width],
        "proj:transform": [float(v) for v in list(grid.transform)[:6]],
        "proj:bbox": [float(v) for v in grid.bounds],
        "processing:software": {"w2w": w2w_version()},
        "processing:lineage": "mosaic store exported to a COG by `w2w export`; overviews of "
        f"classes by {cfg.overview_resampling}, of confidence by average",
        "w2w:mosaic": relative_href(absolute_url(cfg.input), targets.stac),
        "w2w:provenance": relative_paths(provenance, targets.stac),
        "w2w:mosaic_identity": mosaic.identity,
    }
    if grid.crs.is_projected:
        properties["gsd"] = grid.res[0]
    bundle_hash = find_bundle_hash(provenance)
    if bundle_hash:
        properties["w2w:bundle_hash"] = bundle_hash
    return properties


def _class_objects(mosaic: MosaicStore, counts: np.ndarray) -> list[dict[str, Any]]:
    """The classification extension's classes, with pixel counts and shares."""
    classes = mosaic.classes
    total = max(1, int(counts.sum()))
    objects: list[dict[str, Any]] = [
        {
            "value": c.id,
            "name": slug(c.name),
            "title": c.name,
            "description": c.name,
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
            "description": "not mapped (outside the state or no valid input)",
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
    mosaic: MosaicStore,
    targets: ExportTargets,
    class_objects: list[dict[str, Any]],
    files: dict[str, Path | None],
) -> dict[str, Any]:
    """The COG(s) with their bands (raster extension) and files."""
    grid, classes = mosaic.grid, mosaic.classes
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
        "href": relative_href(targets.cog, targets.stac),
        "type": COG_MEDIA_TYPE,
        "title": "Land-cover classes",
        "roles": ["data"],
        **file_fields(files["cog"]),
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
            "href": relative_href(targets.confidence, targets.stac),
            "type": COG_MEDIA_TYPE,
            "title": "Confidence (probability of the mapped class)",
            "roles": ["data", "confidence"],
            "bands": [confidence_band],
            **file_fields(files["confidence"]),
        }
    if targets.probabilities:
        assets["probabilities"] = {
            "href": relative_href(targets.probabilities, targets.stac),
            "type": COG_MEDIA_TYPE,
            "title": "Probability of each class",
            "roles": ["data"],
            "bands": [
                {
                    "name": slug(c.name),
                    "description": f"probability of {c.name} (class {c.id}) x 255",
                    "data_type": "uint8",
                    "raster:scale": 1 / 255,
                    "raster:offset": 0.0,
                }
                for c in classes
            ],
            **file_fields(files.get("probabilities")),
        }
    return assets


def _quicklook_asset(targets: ExportTargets, shape: tuple[int, int]) -> dict[str, Any]:
    return {
        "href": relative_href(targets.quicklook, targets.stac),
        "type": "image/png",
        "title": "Quicklook with legend",
        "roles": ["overview", "visual"],
        "proj:code": None,
        "proj:shape": list(shape),
    }


def slug(name: str) -> str:
    """A machine-readable class name (letters, digits, ``-`` and ``_``)."""
    out = "".join(ch if ch.isascii() and (ch.isalnum() or ch in "-_") else "_" for ch in name)
    return out.strip("_") or "class"


def _stem(url: str) -> str:
    name = url.rstrip("/").rsplit("/", 1)[-1]
    return name[: name.rfind(".")] if "." in name else name


def relative_paths(value: Any, item: str) -> Any:
    """A copy of provenance with every absolute local path (or URL) made relative to the
    Item where :func:`relative_href` can."""
    if isinstance(value, dict):
        return {k: relative_paths(v, item) for k, v in value.items()}
    if isinstance(value, list):
        return [relative_paths(v, item) for v in value]
    if isinstance(value, str) and (
        (value.startswith("/") and not storage.is_remote(item)) or storage.is_remote(value)
    ):
        return relative_href(value, item)
    return value
