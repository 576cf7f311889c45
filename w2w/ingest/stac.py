"""STAC inputs: the Items of an ItemCollection or a catalog, their assets picked as bands.

Read with pystac from a local file or an ``s3://`` URL (no other network): an ItemCollection
(a FeatureCollection of Items), a Catalog or Collection (every Item below it), or one Item.
A band is picked by **asset key** (``B04``), or by the **common name** of its ``eo:bands``
(STAC 1.0) or ``bands`` (1.1) entry (``red``); bands come in the order asked. Every Item is
one tile, and its datetime (or start/end) tells when its pixels were seen.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from w2w.core import storage
from w2w.core.errors import InputError


@dataclass(frozen=True)
class StacTile:
    """An Item as a tile: the hrefs of its band assets (in order), of its mask asset, when."""

    name: str
    bands: tuple[str, ...]
    mask: str | None
    start: str | None
    end: str | None


def is_stac(path: str) -> bool:
    """Whether ``path`` names a STAC JSON document (by its suffix)."""
    return path.lower().endswith(".json")


def read_items(path: str) -> list[Any]:
    """The Items of a STAC file: an ItemCollection, a catalog or collection, or an Item."""
    import pystac

    try:
        data = json.loads(storage.read_bytes(path))
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{path} is not JSON ({exc}); give a STAC ItemCollection or catalog"
        ) from None
    try:
        return _parse_items(path, data)
    except InputError:
        raise
    except (pystac.STACError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(
            f"{path} is not valid STAC ({type(exc).__name__}: {exc}); fix the document (an "
            "Item needs a datetime, or a start_datetime and end_datetime)"
        ) from None


def _parse_items(path: str, data: Any) -> list[Any]:
    import pystac

    kind = data.get("type") if isinstance(data, dict) else None
    href = storage.normalize(path)
    if kind == "FeatureCollection":
        return list(pystac.ItemCollection.from_dict(data, preserve_dict=False).items)
    if kind == "Feature":
        return [pystac.Item.from_dict(data, href=href)]
    if kind in ("Catalog", "Collection"):
        stac_io = _io()
        root = pystac.read_file(href, stac_io=stac_io)
        return list(root.get_items(recursive=True))  # type: ignore[union-attr]
    raise InputError(
        f"{path} is not a STAC ItemCollection, Catalog, Collection or Item (type {kind!r})"
    )


def _io() -> Any:
    """A pystac reader that goes through w2w's storage (local files and ``s3://``)."""
    import pystac

    class StorageIO(pystac.StacIO):
        def read_text(self, source: Any, *args: Any, **kwargs: Any) -> str:
            return storage.read_bytes(str(source)).decode()

        def write_text(self, dest: Any, txt: str, *args: Any, **kwargs: Any) -> None:
            storage.atomic_write_bytes(str(dest), txt.encode())

    return StorageIO()


def _names(asset: Any) -> set[str]:
    """The names an asset answers to: its common names and band names."""
    names: set[str] = set()
    for key in ("eo:bands", "bands"):
        for band in asset.extra_fields.get(key, []) or []:
            for field in ("common_name", "eo:common_name", "name"):
                if isinstance(band, dict) and band.get(field):
                    names.add(str(band[field]))
    return names


def _href(asset: Any, base: str) -> str:
    """An asset's location: absolute as given, or relative to the document it came from."""
    href = asset.get_absolute_href() or asset.href
    if "://" in href or href.startswith("/"):
        return storage.normalize(href)
    return storage.join(base, href)


def asset_hrefs(path: str) -> list[str]:
    """The href of every asset of every Item in a STAC document (what an ingest reads)."""
    found = []
    for item in read_items(path):
        base = (item.get_self_href() or storage.normalize(path)).rsplit("/", 1)[0]
        found += [_href(a, base) for a in item.assets.values()]
    return found


def stac_tiles(
    path: str, bands: list[str] | None, mask_asset: str | None = None
) -> tuple[list[StacTile], list[str]]:
    """Tiles (one per Item) and the band names, picking ``bands`` by asset key or common
    name; without ``bands``, every asset with a raster media type, in the first Item's
    order."""
    items = read_items(path)
    if not items:
        raise InputError(f"{path} holds no STAC Item")
    base = storage.normalize(path).rsplit("/", 1)[0]
    wanted = bands or [
        k
        for k, a in items[0].assets.items()
        if "tiff" in (a.media_type or "") or "jp2" in (a.media_type or "")
    ]
    if not wanted:
        raise InputError(f"{path}: the first Item has no raster asset; pick them with --bands")
    tiles = []
    for item in items:
        hrefs = []
        for band in wanted:
            asset = item.assets.get(band) or next(
                (a for a in item.assets.values() if band in _names(a)), None
            )
            if asset is None:
                keys = ", ".join(sorted({k for i in items for k in i.assets}))
                raise InputError(
                    f"STAC Item {item.id} in {path} has no asset '{band}' (by key or common "
                    f"name); the Items' assets are: {keys}"
                )
            hrefs.append(_href(asset, base))
        mask = None
        if mask_asset:
            if mask_asset not in item.assets:
                raise InputError(f"STAC Item {item.id} in {path} has no mask asset '{mask_asset}'")
            mask = _href(item.assets[mask_asset], base)
        props = item.properties
        start = props.get("start_datetime") or props.get("datetime")
        end = props.get("end_datetime") or props.get("datetime")
        tiles.append(StacTile(item.id, tuple(hrefs), mask, start, end))
    return tiles, list(wanted)
