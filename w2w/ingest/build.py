"""Build a scene store block by block from any reader of (image, labels) windows.

Used by ingest (a reader of the checked source rasters) and by the synthetic generator (a
reader that makes each window). Each block task reads one block, writes the store chunks it
alone owns and returns partial statistics; the driver merges them and records statistics,
class histogram and class table, then marks the store complete. Memory per task is one block,
whatever the size of the scene.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from w2w.core import storage
from w2w.core.classes import class_table
from w2w.core.errors import InputError
from w2w.core.grid import Grid, Window
from w2w.core.runtime import run_blocks
from w2w.core.stats import SceneAccumulator
from w2w.core.store import SceneStore, valid_pixels
from w2w.core.store.integrity import DIGEST_BYTES, block_digest
from w2w.core.store.scene import Nodata

log = logging.getLogger("w2w")

#: Reads one block: (image, labels or None), or (image, labels, names of the sources used).
BlockReader = Callable[[Window], tuple[Any, ...]]


@dataclass(frozen=True)
class BlockWritten:
    """What a block task reports: its window, partial statistics, the digest of what it
    wrote, its valid pixels per store chunk, and the sources (tiles) it read."""

    window: Window
    stats: SceneAccumulator
    digest: np.ndarray
    chunk_valid: np.ndarray
    sources: tuple[str, ...] = ()


class _BlockWriter:
    """One block task: read a block with ``reader``, write it, return its statistics."""

    def __init__(
        self,
        store_url: str,
        reader: BlockReader,
        dtype: str,
        nodata: Nodata,
        unlabelled: int,
        band_count: int,
        chunk: int,
    ) -> None:
        self.chunk = chunk
        self.store_url = store_url
        self.reader = reader
        self.dtype = dtype
        self.nodata = nodata
        self.unlabelled = unlabelled
        self.band_count = band_count

    def __call__(self, window: Window) -> BlockWritten:
        image, label, *rest = self.reader(window)
        sources = tuple(rest[0]) if rest else ()
        if image.dtype.kind == "f":
            infinite = np.isinf(image)
            if infinite.any():
                band = int(np.argwhere(infinite.any(axis=(1, 2)))[0, 0])
                raise InputError(
                    f"the imagery holds {int(infinite.sum()):,} infinite values (first in band "
                    f"{band + 1}, in the block at row {window.row}, col {window.col}); a "
                    "reflectance is never infinite: set those pixels to the nodata value or to "
                    "NaN (which w2w treats as nodata) and ingest again"
                )
        valid = valid_pixels(image, self.nodata)
        store = SceneStore.open(self.store_url, mode="r+")
        store.write("image", window, image)
        if label is not None:
            store.write("label", window, label)
        digest = block_digest(image, label)
        if label is not None:
            label = np.where(valid, label, self.unlabelled).astype(np.uint8)
        acc = SceneAccumulator(
            band_names=[str(i) for i in range(self.band_count)], dtype=self.dtype
        )
        acc.add_block(image, valid, label, seed=window.row * 1_000_003 + window.col)
        return BlockWritten(window, acc, digest, _per_chunk(valid, self.chunk), sources)


def _per_chunk(valid: np.ndarray, chunk: int) -> np.ndarray:
    """Valid pixels of each store chunk a block holds (the block starts on a chunk)."""
    h, w = valid.shape
    rows, cols = -(-h // chunk), -(-w // chunk)
    padded = np.zeros((rows * chunk, cols * chunk), dtype=np.int64)
    padded[:h, :w] = valid
    return padded.reshape(rows, chunk, cols, chunk).sum(axis=(1, 3))


def build_store(
    url: str,
    grid: Grid,
    reader: BlockReader,
    *,
    band_names: list[str],
    dtype: str,
    nodata: Nodata,
    with_label: bool,
    unlabelled: int,
    class_names: dict[int, str],
    chunk: int,
    block: int,
    engine: Literal["ray", "local"],
    source: dict[str, Any],
    overwrite: bool,
    progress: bool,
    what_nodata: str,
    blocks: list[Window] | None = None,
) -> SceneAccumulator:
    """Create a scene store at ``url`` and fill it block by block from ``reader``.

    Each block task writes only the chunks of its own block and returns partial statistics;
    the driver merges them and records statistics, class histogram, class table, block
    digests and valid pixels per chunk. With ``blocks``, only those blocks are built: the
    others (outside the state) are never written, their chunks stay absent and read as
    nodata, and every later stage skips them. On any failure the partial store is removed.
    """
    store = SceneStore.create(
        url,
        grid,
        band_names=band_names,
        dtype=dtype,
        nodata=nodata,
        chunk=chunk,
        block=block,
        with_label=with_label,
        unlabelled=unlabelled,
        source=source,
        overwrite=overwrite,
    )
    try:
        tiling = grid.blocks(block)
        todo = tiling.windows() if blocks is None else blocks
        task = _BlockWriter(url, reader, dtype, nodata, unlabelled, len(band_names), chunk)
        total = SceneAccumulator(band_names=band_names, dtype=dtype)
        record = BlockRecord.empty(tiling, grid.blocks(chunk).shape)
        for done in run_blocks(task, todo, engine=engine, what="ingest", progress=progress):
            total.merge(done.stats)
            record.add(tiling, chunk, done)
        if total.valid_count == 0:
            raise InputError(what_nodata)
        histogram = total.histogram(unlabelled) if with_label else {}
        if with_label and not histogram:
            log.warning("the labels have no labelled pixel on the image's valid area")
        named = {k for k in class_names if k != unlabelled}
        classes = class_table(sorted(set(histogram) | named), class_names)
        store.mark_complete(
            record.digests,
            written=record.written,
            chunk_valid=record.chunk_valid,
            stats={k: v.to_dict() for k, v in total.band_stats().items()},
            class_histogram={str(k): v for k, v in histogram.items()},
            classes=[c.to_dict() for c in classes],
            valid_pixels=total.valid_count,
            block_sources=record.sources,
        )
    except BaseException:
        storage.remove_tree(url)
        raise
    return total


@dataclass
class BlockRecord:
    """What the driver keeps of every block: digest, written or not, valid pixels per chunk,
    and the sources it read."""

    digests: np.ndarray
    written: np.ndarray
    chunk_valid: np.ndarray
    sources: dict[str, list[str]]

    @classmethod
    def empty(cls, tiling: Any, chunk_shape: tuple[int, int]) -> BlockRecord:
        """Nothing written yet."""
        return cls(
            np.zeros((*tiling.shape, DIGEST_BYTES), dtype=np.uint8),
            np.zeros(tiling.shape, dtype=bool),
            np.zeros(chunk_shape, dtype=np.int64),
            {},
        )

    def add(self, tiling: Any, chunk: int, done: BlockWritten) -> None:
        """Record a finished block."""
        key = tiling.index(done.window)
        self.digests[key] = done.digest
        self.written[key] = True
        r, c = done.window.row // chunk, done.window.col // chunk
        h, w = done.chunk_valid.shape
        self.chunk_valid[r : r + h, c : c + w] = done.chunk_valid
        if done.sources:
            self.sources[f"{key[0]},{key[1]}"] = list(done.sources)
