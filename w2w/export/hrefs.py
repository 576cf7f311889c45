"""Where the export's files are, as its STAC Items name them: absolute URLs, hrefs relative
to an Item, and the ``file`` extension's size and checksum of a finished file."""

from __future__ import annotations

import functools
import hashlib
import os
import posixpath
from pathlib import Path
from typing import Any

from w2w.core import storage


def absolute_url(url: str) -> str:
    """A local path made absolute; a URL as it is."""
    return url if storage.is_remote(url) else os.path.abspath(url)


def relative_href(target: str, item: str) -> str:
    """``target`` as seen from the Item at ``item``: relative where both are on the local
    file system or in the same bucket, else absolute."""
    target, item = absolute_url(target), absolute_url(item)
    if storage.is_remote(target) != storage.is_remote(item):
        return target
    if storage.is_remote(target):
        t_scheme, t_path = target.split("://", 1)
        i_scheme, i_path = item.split("://", 1)
        if t_scheme != i_scheme or t_path.split("/", 1)[0] != i_path.split("/", 1)[0]:
            return target
        rel = posixpath.relpath(t_path, posixpath.dirname(i_path))
    else:
        rel = os.path.relpath(target, os.path.dirname(item)).replace(os.sep, "/")
    return rel if rel.startswith("../") else f"./{rel}"


def file_fields(path: Path | None) -> dict[str, Any]:
    """``file:size`` and ``file:checksum`` (multihash SHA2-256) of a finished file."""
    if path is None:
        return {}
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(functools.partial(f.read, 1 << 20), b""):
            digest.update(chunk)
    return {"file:size": os.path.getsize(path), "file:checksum": "1220" + digest.hexdigest()}
