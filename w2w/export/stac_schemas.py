"""Offline validation of the STAC Items an export writes.

pystac validates against the JSON Schemas named in an Item's ``stac_extensions``, fetching
them over the network by default. w2w ships the schemas of every extension it declares
(``w2w/export/schemas``, see its README) and hands them to pystac's validator, so an export
checks its Items before publishing them, on a machine without network as on any other.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

from w2w.core.errors import StageFailedError

#: The extensions w2w declares, by short name.
EXTENSIONS = {
    "projection": "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
    "classification": "https://stac-extensions.github.io/classification/v1.1.0/schema.json",
    "raster": "https://stac-extensions.github.io/raster/v2.0.0/schema.json",
    "file": "https://stac-extensions.github.io/file/v2.1.0/schema.json",
    "processing": "https://stac-extensions.github.io/processing/v1.2.0/schema.json",
    "mlm": "https://stac-extensions.github.io/mlm/v1.4.0/schema.json",
    # MLM 1.4 finds a model's named input bands in ``raster:bands`` of raster 1.x.
    "raster-v1": "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
}


@functools.lru_cache(maxsize=1)
def local_schemas() -> dict[str, dict[str, Any]]:
    """The vendored extension schemas by URI (``$id`` without its ``#``)."""
    schemas = {}
    for entry in resources.files("w2w.export").joinpath("schemas").iterdir():
        if entry.name.endswith(".json"):
            schema = json.loads(entry.read_text())
            schemas[schema["$id"].rstrip("#")] = schema
    return schemas


def validator() -> Any:
    """A pystac JSON Schema validator that resolves w2w's extension schemas locally."""
    from pystac.validation import JsonSchemaSTACValidator

    v = JsonSchemaSTACValidator()
    v.schema_cache.update(local_schemas())
    return v


def validate_item(item: dict[str, Any], name: str) -> None:
    """Validate a STAC Item (as a dict) against core and extension schemas, offline;
    raise :class:`StageFailedError` naming ``name`` if it does not validate."""
    import pystac.validation
    from jsonschema.exceptions import ValidationError

    missing = [u for u in item.get("stac_extensions", []) if u not in local_schemas()]
    if missing:
        raise StageFailedError(f"no local schema for {missing[0]} to validate {name}")
    try:
        pystac.validation.validate_dict(_light(item), validator=validator())
    except (pystac.errors.STACValidationError, ValidationError) as exc:
        cause = getattr(exc, "source", None) or exc
        raise StageFailedError(
            f"the STAC Item made for {name} does not validate ({_first_line(cause)}); nothing "
            "was published -- please report this as a w2w bug"
        ) from exc


def _light(item: dict[str, Any]) -> dict[str, Any]:
    """The Item with its footprint replaced by the footprint's bounding box: JSON Schema
    checks a GeoJSON geometry coordinate by coordinate (a second for a state's outline),
    and the footprint is GeoJSON by construction (shapely's mapping, tested whole in
    tests/test_export_stac.py). Everything else is validated as written."""
    bbox = item.get("bbox")
    if not item.get("geometry") or not bbox:
        return item
    w, s, e, n = bbox
    ring = [[w, s], [e, s], [e, n], [w, n], [w, s]]
    return {**item, "geometry": {"type": "Polygon", "coordinates": [ring]}}


def _first_line(exc: Any) -> str:
    """The most telling schema error, as ``where: what`` on one line."""
    from jsonschema.exceptions import ValidationError, best_match

    if isinstance(exc, list) and exc:
        exc = exc[0]
    if isinstance(exc, ValidationError):
        if exc.context:
            exc = best_match(exc.context) or exc
        where = "/".join(str(p) for p in exc.absolute_path) or "item"
        return f"{where}: {exc.message[:200]}"
    return str(exc).splitlines()[0][:300]
