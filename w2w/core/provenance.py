"""Where an output came from: the w2w version that made it and the model bundle behind it."""

from __future__ import annotations

from typing import Any


def w2w_version() -> str:
    """The installed w2w version."""
    from w2w import __version__

    return __version__


def find_bundle_hash(provenance: dict[str, Any]) -> str | None:
    """The model bundle's content hash recorded in a mosaic's provenance, if any (a sieved
    mosaic records its input's provenance inside its own)."""
    stack: list[Any] = [provenance]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key in ("bundle_hash", "content_hash", "bundle_content_hash"):
                if isinstance(node.get(key), str):
                    return str(node[key])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return None
