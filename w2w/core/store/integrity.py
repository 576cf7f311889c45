"""Content identity and integrity of stores: what a store is, and whether it is whole.

* A **block digest** (BLAKE2b, 128 bits) of every block's bytes is computed by the task that
  writes the block and recorded by the driver in a small ``block_digests`` array.
* A store's **identity** is a SHA-256 over what defines its content -- for a scene: grid,
  bands, pixel type, nodata, statistics, classes and every block digest; for a mosaic: the
  identities of its inputs and the settings that decide its pixels. Resume and provenance
  compare identities, never paths: re-ingesting other imagery under the same path gives
  another identity.
* Every chunk carries a CRC32C checksum (a codec after compression), so a damaged chunk
  fails to decode instead of reading as data; a chunk that should exist but does not (an
  interrupted copy) is found by listing the store, and named.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

DIGEST_BYTES = 16


def block_digest(*arrays: np.ndarray | None) -> np.ndarray:
    """The digest of a block's arrays (shape, type and bytes of each), as 16 uint8."""
    h = hashlib.blake2b(digest_size=DIGEST_BYTES)
    for a in arrays:
        if a is None:
            h.update(b"-")
            continue
        c = np.ascontiguousarray(a)
        h.update(f"{c.dtype.str}{c.shape}".encode())
        h.update(c.tobytes())
    return np.frombuffer(h.digest(), dtype=np.uint8).copy()


def identity(parts: dict[str, Any], digests: np.ndarray | None = None) -> str:
    """``sha256:...`` over a canonical JSON of ``parts`` and the bytes of ``digests``."""
    h = hashlib.sha256(json.dumps(parts, sort_keys=True, separators=(",", ":")).encode())
    if digests is not None:
        h.update(np.ascontiguousarray(digests, dtype=np.uint8).tobytes())
    return "sha256:" + h.hexdigest()


def short(ident: str | None) -> str:
    """An identity shortened for messages (``sha256:1a2b3c4d5e6f``), or 'none recorded'."""
    return ident[:19] if ident else "none recorded (made by an older w2w)"


@dataclass(frozen=True)
class ChunkProblem:
    """A chunk that is missing, or whose content does not match what was recorded."""

    array: str
    chunk: tuple[int, int]
    what: str  # "missing" or "damaged"

    def describe(self) -> str:
        """``image chunk (3, 4) is missing``."""
        return f"{self.array} chunk {self.chunk} is {self.what}"
