"""Where an output came from: the w2w version that made it and the model bundle behind it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def w2w_version() -> str:
    """The installed w2w version."""
    from w2w import __version__

    return __version__


def records(provenance: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every record (dict) in a provenance, itself first: a sieved mosaic records its input's
    provenance inside its own, so what predict recorded may sit a level or more down."""
    stack: list[Any] = [provenance]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            yield node
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def find_bundle_hash(provenance: dict[str, Any]) -> str | None:
    """The model bundle's content hash recorded in a mosaic's provenance, if any."""
    for node in records(provenance):
        for key in ("bundle_hash", "content_hash", "bundle_content_hash"):
            if isinstance(node.get(key), str):
                return str(node[key])
    return None
