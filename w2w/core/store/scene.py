"""The scene store: imagery (band, y, x) in its source dtype and optional labels (y, x).

Written by ingest (and the synthetic generator) block by block; read by training and
prediction. ``image`` keeps all bands in one chunk so that a chip is one read, and a ``band``
coordinate array holds the band names (xarray labels the band axis by name); ``label`` is
uint8 class ids. Bookkeeping recorded at ingest (block digests, blocks written, valid pixels
per chunk) lives in the ``_w2w`` sub-group. The ``w2w`` attributes record band names,
nodata, per-band statistics, the class table and histogram, and ``complete: true`` once
ingest finished; readers refuse an incomplete store.

A pixel is *valid* when every band is finite and none equals nodata.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np

from w2w.core import storage
from w2w.core.classes import ClassInfo
from w2w.core.errors import InputError
from w2w.core.grid import BlockTiling, Grid, Window
from w2w.core.stats import BandStats
from w2w.core.store.base import GeoStore, StoreKind
from w2w.core.store.integrity import ChunkProblem, identity

#: One nodata value for every band, or one per band (None: the band has none).
Nodata = float | None | list[float | None]
#: Bookkeeping arrays recorded at ingest: per-block digests, which blocks were written, and
#: the valid pixels of every chunk.
DIGESTS = "block_digests"
WRITTEN = "blocks_written"
CHUNK_VALID = "chunk_valid_pixels"


@dataclass(frozen=True)
class SceneInfo:
    """What a scene store says about itself (its ``w2w`` attributes)."""

    grid: Grid
    band_names: tuple[str, ...]
    dtype: str
    nodata: Nodata
    chunk: int
    has_label: bool
    unlabelled: int | None = None
    classes: tuple[ClassInfo, ...] = ()
    stats: dict[str, BandStats] = field(default_factory=dict)
    class_histogram: dict[int, int] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def n_bands(self) -> int:
        """Number of image bands."""
        return len(self.band_names)


class SceneStore(GeoStore):
    """Scene store: ``image`` (band, y, x) and optional ``label`` (y, x)."""

    kind: ClassVar[StoreKind] = "scene"

    @classmethod
    def create(
        cls,
        url: str,
        grid: Grid,
        *,
        band_names: list[str],
        dtype: str,
        nodata: Nodata,
        chunk: int = 512,
        block: int | None = None,
        with_label: bool = False,
        unlabelled: int | None = None,
        classes: list[ClassInfo] | None = None,
        source: dict[str, Any] | None = None,
        overwrite: bool = False,
    ) -> SceneStore:
        """Create an empty scene store (metadata and empty arrays) ready for block writes.

        ``nodata`` is one value for every band, or one per band (a stack of files that mark
        nodata differently); ``block`` is the edge of the blocks its writers write (a
        multiple of ``chunk``), over which block digests are taken.
        """
        fills = band_fills(nodata, len(band_names))
        meta = {
            "band_names": list(band_names),
            "dtype": str(np.dtype(dtype)),
            "nodata": nodata,
            "chunk": chunk,
            "block": block or chunk,
            "has_label": with_label,
            "unlabelled": unlabelled,
            "classes": [c.to_dict() for c in classes or []],
            "stats": {},
            "class_histogram": {},
            "source": source or {},
            "complete": False,
        }
        group = cls._create_group(url, grid, meta, overwrite=overwrite)
        store = cls(storage.normalize(url), group, writable=True)
        store._create_raster(
            "image",
            dtype=dtype,
            fill_value=fills[0],
            chunk=chunk,
            bands=len(band_names),
            attrs={"band_names": list(band_names), "nodata": nodata},
        )
        store._create_band_coordinate(list(band_names))
        if with_label:
            lab_fill = unlabelled if unlabelled is not None else 0
            store._create_raster("label", dtype="uint8", fill_value=lab_fill, chunk=chunk)
        return store

    @property
    def info(self) -> SceneInfo:
        """The store's metadata as a typed object."""
        m = self.meta
        return SceneInfo(
            grid=self.grid,
            band_names=tuple(m["band_names"]),
            dtype=m["dtype"],
            nodata=m["nodata"],
            chunk=int(m["chunk"]),
            has_label=bool(m["has_label"]),
            unlabelled=m.get("unlabelled"),
            classes=tuple(ClassInfo.from_dict(c) for c in m.get("classes", [])),
            stats={k: BandStats(**v) for k, v in m.get("stats", {}).items()},
            class_histogram={int(k): int(v) for k, v in m.get("class_histogram", {}).items()},
            source=dict(m.get("source", {})),
        )

    def read_image(self, window: Window) -> np.ndarray:
        """(band, h, w) pixels of ``window``; outside the grid they are nodata (or 0)."""
        return self.read(
            "image", window, band_fills(self.meta["nodata"], len(self.meta["band_names"]))
        )

    def read_label(self, window: Window) -> np.ndarray:
        """(h, w) labels of ``window``; outside the grid, and where absent, the unlabelled value."""
        unl = self.meta.get("unlabelled")
        fill = unl if unl is not None else 0
        if not self.meta["has_label"]:
            raise InputError(
                f"{self.url} has no labels; ingest a label raster with `w2w ingest --label ...`"
            )
        return self.read("label", window, fill)

    def valid_mask(self, image: np.ndarray, window: Window | None = None) -> np.ndarray:
        """(h, w) bool: pixels whose every band is finite and not nodata (and inside the grid)."""
        valid = valid_pixels(image, self.meta["nodata"])
        if window is not None:
            inside = np.zeros(valid.shape, dtype=bool)
            inner = window.intersect(self.grid.full_window)
            if inner is not None:
                inside[inner.relative_to(window).slices] = True
            valid &= inside
        return valid

    def mark_complete(
        self,
        digests: np.ndarray | None = None,
        *,
        written: np.ndarray | None = None,
        chunk_valid: np.ndarray | None = None,
        **meta: Any,
    ) -> None:
        """Record final metadata (statistics, histogram), the block digests and the store's
        identity computed from them, which blocks were written (the others lie outside the
        state: their chunks stay absent) and the valid pixels of every chunk; mark the store
        complete and consolidate."""
        merged = {**self.meta, **meta}
        if digests is not None:
            self._put_book(DIGESTS, digests, ["block_row", "block_col", "byte"])
            merged["identity"] = identity(_identity_parts(self.grid, merged), digests)
        if written is not None:
            self._put_book(WRITTEN, written.astype(np.uint8), ["block_row", "block_col"])
            merged["blocks_skipped"] = int((~written).sum())
        if chunk_valid is not None:
            self._put_book(CHUNK_VALID, chunk_valid.astype(np.int64), ["chunk_row", "chunk_col"])
        self.update_meta(**{k: v for k, v in merged.items() if k != "complete"}, complete=True)
        self.finalize()

    def written_blocks(self) -> np.ndarray:
        """(block rows, block cols) bool: blocks ingest wrote (all, for an older store)."""
        if not self.has_book(WRITTEN):
            return np.ones(self.tiling.shape, dtype=bool)
        return np.asarray(self._book(WRITTEN)[...]).astype(bool)

    def valid_pixels_in(self, window: Window) -> int | None:
        """Valid pixels in the store chunks ``window`` overlaps (at least those of the
        window itself): 0 means the window holds none. None when not recorded."""
        if not self.has_book(CHUNK_VALID):
            return None
        counts = self._chunk_valid()
        chunk = int(self.meta["chunk"])
        inner = window.intersect(self.grid.full_window)
        if inner is None:
            return 0
        r0, c0 = inner.row // chunk, inner.col // chunk
        r1, c1 = -(-inner.row_stop // chunk), -(-inner.col_stop // chunk)
        return int(counts[r0:r1, c0:c1].sum())

    def _chunk_valid(self) -> np.ndarray:
        cached = getattr(self, "_chunk_valid_cache", None)
        if cached is None:
            cached = np.asarray(self._book(CHUNK_VALID)[...])
            self._chunk_valid_cache = cached
        return cached

    @property
    def identity(self) -> str | None:
        """The content identity recorded at ingest (None for a store made before w2w
        recorded one)."""
        value = self.meta.get("identity")
        return str(value) if value else None

    @property
    def tiling(self) -> BlockTiling:
        """The blocks its writers wrote: the unit of its digests."""
        return self.grid.blocks(int(self.meta.get("block") or self.meta["chunk"]))

    def digests(self) -> np.ndarray | None:
        """(block rows, block cols, 16) digests recorded at ingest, or None."""
        if not self.has_book(DIGESTS):
            return None
        return np.asarray(self._book(DIGESTS)[...])

    def missing_chunks(self, arrays: tuple[str, ...] = ("image", "label")) -> list[ChunkProblem]:
        """Chunks of ``arrays`` that a complete store must hold but storage does not (an
        interrupted copy, a lost object): one listing per array."""
        problems: list[ChunkProblem] = []
        written = self.tiling.windows(self.written_blocks())
        for name in arrays:
            if not self.has_array(name):
                continue
            uh, uw = self.chunk_shape(name)
            stored = self.stored_chunks(name)
            for w in written:  # a block is whole chunks
                for r in range(w.row // uh, -(-w.row_stop // uh)):
                    for c in range(w.col // uw, -(-w.col_stop // uw)):
                        if (r, c) not in stored:
                            problems.append(ChunkProblem(name, (r, c), "missing"))
        return problems

    def require_whole(self, arrays: tuple[str, ...] = ("image", "label")) -> None:
        """Refuse a store one of whose chunks (of ``arrays``) is missing, naming the chunk."""
        problems = self.missing_chunks(arrays)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise InputError(
                f"scene store {self.url} says it is complete but {problems[0].describe()}{more}; "
                "its copy was interrupted or an object was lost: copy or ingest it again "
                "(`w2w verify` lists every problem)"
            )

    @classmethod
    def open(cls, url: str, *, mode: Literal["r", "r+"] = "r") -> SceneStore:
        """Open a scene store; refuses one whose ingest did not finish."""
        store = super().open(url, mode=mode)
        if mode == "r" and not store.meta.get("complete", False):
            raise InputError(
                f"scene store {url} is incomplete (its ingest did not finish); "
                "run `w2w ingest ... --overwrite` again"
            )
        return store


def band_fills(nodata: Nodata, bands: int) -> list[float]:
    """The value each band is filled with where there is no data: its nodata, else 0."""
    values = nodata if isinstance(nodata, list) else [nodata] * bands
    return [0 if v is None else v for v in values]


def valid_pixels(image: np.ndarray, nodata: Nodata) -> np.ndarray:
    """(h, w) bool mask of pixels valid in every band of a (band, h, w) array; ``nodata`` is
    one value for all bands or one per band (None: the band has none)."""
    if np.issubdtype(image.dtype, np.floating):
        valid = np.isfinite(image).all(axis=0)
    else:
        valid = np.ones(image.shape[-2:], dtype=bool)
    values = nodata if isinstance(nodata, list) else [nodata] * image.shape[0]
    for band, value in enumerate(values):
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            valid &= image[band] != np.asarray(value).astype(image.dtype)
    return valid


def _identity_parts(grid: Grid, meta: dict[str, Any]) -> dict[str, Any]:
    """What defines a scene besides its pixels (the block digests)."""
    return {
        "kind": "scene",
        "grid": grid.to_attrs(),
        **{k: meta.get(k) for k in ("band_names", "dtype", "nodata", "unlabelled", "block")},
        "stats": meta.get("stats", {}),
        "classes": meta.get("classes", []),
    }
