"""The mosaic store: a map's classes and confidence, and the manifest of finished blocks.

Written by prediction and by the sieve, one block at a time; each block is one write unit
(chunk, or shard) of every array, so every chunk has exactly one writer.

* ``class`` (y, x, uint8): class ids of the class table, 255 = nodata; a CF flag variable
  (``flag_values``, ``flag_meanings``, ``_FillValue``);
* ``confidence`` (y, x, uint8): the top-class probability x 255 (0 = nodata, 1 = class set by
  the minimum mapping unit), CF-packed so that xarray decodes it to [0, 1] (:mod:`.cf`);
* ``_w2w/blocks_done`` (block row, block col): the manifest, one cell in its own chunk per
  block, written by the block's writer after its data -- a re-run skips recorded blocks; 2
  marks a block finished without data (outside the state: nothing written, chunks absent);
* ``_w2w/block_valid_pixels``: per block, how many valid input pixels its writer classified,
  which the coverage check compares the stored classes against (-1: not written);
* ``_w2w/block_digests`` (block row, block col, 16): per block, the digest of what its
  writer wrote (class, confidence, probabilities), taken by :meth:`MosaicStore.write` and
  recorded with the block's manifest entry, so that ``w2w verify`` finds a block whose chunks
  changed since (copied in from another mosaic, rewritten) without trusting the writer.

The blocks are :meth:`MosaicStore.tiling`, a :class:`~w2w.core.grid.BlockTiling`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from w2w.core import storage
from w2w.core.classes import CLASS_NODATA, CONFIDENCE_NODATA, ClassInfo
from w2w.core.errors import InputError
from w2w.core.grid import BlockTiling, Grid, Window
from w2w.core.store.base import GeoStore, StoreKind
from w2w.core.store.cf import class_attrs, confidence_attrs
from w2w.core.store.integrity import DIGEST_BYTES, ChunkProblem, block_digest, identity

DONE = "blocks_done"
#: Per-class probabilities x 255 (class, y, x), bands in the order of the class table.
PROBABILITIES = "probabilities"
VALID_COUNTS = "block_valid_pixels"
DIGESTS = "block_digests"
#: The arrays of a block's content, in the order their digests are combined.
DATA_ARRAYS = ("class", "confidence", PROBABILITIES)
#: Manifest values: a block written, and a block finished without data (nothing written).
WRITTEN, EMPTY = 1, 2
#: The per-block books, one object per block so that block tasks never write the same one.
CELL_BOOKS = (DONE, VALID_COUNTS, DIGESTS)
#: Suffix of a cell book's one-chunk copy, written when the mosaic is marked complete: a
#: reader of a finished mosaic reads each book in one request, not one per block.
SEALED = "_sealed"


class MosaicStore(GeoStore):
    """Mosaic store: ``class``, ``confidence`` and the block manifest."""

    kind: ClassVar[StoreKind] = "mosaic"

    @classmethod
    def create(
        cls,
        url: str,
        grid: Grid,
        *,
        block: int,
        classes: list[ClassInfo],
        chunk: int | None = None,
        shard: bool = False,
        provenance: dict[str, Any] | None = None,
        with_confidence: bool = True,
        with_probabilities: bool = False,
        overwrite: bool = False,
    ) -> MosaicStore:
        """Create an empty mosaic whose write unit (chunk, or shard when ``shard``) is ``block``."""
        chunk = chunk or block
        if shard and block % chunk:
            raise ValueError(f"block {block} must be a multiple of the chunk {chunk} when sharding")
        if not shard and chunk != block:
            raise ValueError("without sharding the block must equal the chunk size")
        provenance = provenance or {}
        meta = {
            "block": block,
            "chunk": chunk,
            "sharded": shard,
            "classes": [c.to_dict() for c in classes],
            "provenance": provenance,
            # What decides the mosaic's pixels: its inputs' identities and the settings.
            "identity": identity(
                {
                    "kind": "mosaic",
                    "grid": grid.to_attrs(),
                    "made_from": provenance.get("made_from"),
                }
            ),
            "complete": False,
        }
        group = cls._create_group(url, grid, meta, overwrite=overwrite)
        store = cls(storage.normalize(url), group, writable=True)
        shard_size = block if shard else None
        store._create_raster(
            "class",
            dtype="uint8",
            fill_value=CLASS_NODATA,
            chunk=chunk,
            shard=shard_size,
            attrs=class_attrs(classes),
        )
        if with_confidence:
            store._create_raster(
                "confidence",
                dtype="uint8",
                fill_value=CONFIDENCE_NODATA,
                chunk=chunk,
                shard=shard_size,
                attrs=confidence_attrs(),
            )
        if with_probabilities:
            store._create_raster(
                PROBABILITIES,
                dtype="uint8",
                fill_value=0,
                chunk=chunk,
                shard=shard_size,
                bands=len(classes),
                attrs={
                    "long_name": "probability of each class",
                    "scale_factor": 1 / 255,
                    "add_offset": 0.0,
                    "units": "1",
                    "class_ids": [c.id for c in classes],
                    "class_names": [c.name for c in classes],
                },
            )
        shape = store.tiling.shape
        store._create_cells(DONE, shape, "uint8", 0)
        store._create_cells(VALID_COUNTS, shape, "int64", -1)
        store._create_cells(DIGESTS, shape, "uint8", 0, depth=DIGEST_BYTES)
        return store

    # -- what the mosaic is --------------------------------------------------------------

    @property
    def block(self) -> int:
        """Edge length of a prediction block (= the arrays' write unit)."""
        return int(self.meta["block"])

    @property
    def tiling(self) -> BlockTiling:
        """The mosaic's blocks: the unit of work of every stage that writes it."""
        return self.grid.blocks(self.block)

    @property
    def classes(self) -> tuple[ClassInfo, ...]:
        """The class table."""
        return tuple(ClassInfo.from_dict(c) for c in self.meta["classes"])

    @property
    def block_grid_shape(self) -> tuple[int, int]:
        """Number of blocks along (rows, cols)."""
        return self.tiling.shape

    def blocks(self) -> list[Window]:
        """All blocks, row-major."""
        return self.tiling.windows()

    @property
    def has_confidence(self) -> bool:
        """Whether the mosaic carries a confidence array."""
        return self.has_array("confidence")

    @property
    def has_probabilities(self) -> bool:
        """Whether the mosaic carries per-class probabilities (``w2w predict --probabilities``)."""
        return self.has_array(PROBABILITIES)

    @property
    def provenance(self) -> dict[str, Any]:
        """What the mosaic records about how it was made (inputs, bundle hash, settings)."""
        value = self.meta.get("provenance")
        return dict(value) if isinstance(value, dict) else {}

    @property
    def identity(self) -> str | None:
        """The content identity recorded at creation: a hash of the identities of what it was
        made from and the settings that decide its pixels (None for an older mosaic)."""
        value = self.meta.get("identity")
        return str(value) if value and self.provenance.get("made_from") else None

    def missing_chunks(self, codes: np.ndarray | None = None) -> list[ChunkProblem]:
        """Chunks of finished blocks that storage does not hold (a lost or interrupted
        copy): one listing per array. ``codes``: the manifest as the caller just read it."""
        codes = self.manifest() if codes is None else codes
        done = (codes != 0) & (codes != EMPTY)
        problems: list[ChunkProblem] = []
        for name in ("class", "confidence", PROBABILITIES):
            if not self.has_array(name):
                continue
            unit = self.chunk_shape(name)
            stored = self.stored_chunks(name)
            for w in self.tiling.windows(done):  # a block is whole write units
                for r in range(w.row // unit[0], -(-w.row_stop // unit[0])):
                    for c in range(w.col // unit[1], -(-w.col_stop // unit[1])):
                        if (r, c) not in stored:
                            problems.append(ChunkProblem(name, (r, c), "missing"))
        return problems

    def require_whole(self) -> None:
        """Refuse a mosaic one of whose finished blocks lost a chunk, naming it."""
        problems = self.missing_chunks()
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise InputError(
                f"mosaic {self.url}: {problems[0].describe()}{more} though its block is "
                "recorded as finished; its copy was interrupted or an object was lost: copy "
                "it again, or re-run `w2w predict` after `w2w verify` lists the blocks"
            )

    def require_complete(self, *, allow_incomplete: bool = False, then: str | None = None) -> None:
        """Refuse a mosaic whose run did not finish, unless ``allow_incomplete``. The error
        says how many blocks are done and how to go on; with ``then`` (what the caller does,
        e.g. "export it") it also offers ``--allow-incomplete``."""
        if self.meta.get("complete", False) or allow_incomplete:
            return
        done = self.done_blocks()
        option = f", or pass --allow-incomplete to {then} with holes" if then else ""
        raise InputError(
            f"mosaic {self.url} is incomplete ({int(done.sum())} of {done.size} blocks done); "
            f"finish the run that writes it (`w2w predict` resumes where it stopped){option}"
        )

    # -- the manifest ----------------------------------------------------------------------

    def _cells(self, name: str) -> np.ndarray:
        """Every cell of a per-block book: from its one-chunk copy in a complete mosaic (one
        request), else cell by cell (a mosaic being written, or one sealed by an older w2w)."""
        sealed = name + SEALED
        if self.meta.get("complete", False) and self.has_book(sealed):
            return np.asarray(self._book(sealed)[...])
        return np.asarray(self._book(name)[...])

    def manifest(self) -> np.ndarray:
        """(block rows, block cols) manifest codes: 0 to do, :data:`WRITTEN`, :data:`EMPTY`."""
        return self._cells(DONE)

    def done_blocks(self) -> np.ndarray:
        """(block rows, block cols) bool array: which blocks the manifest records as finished."""
        return self.manifest() != 0

    def empty_blocks(self) -> np.ndarray:
        """(block rows, block cols) bool: blocks finished without a valid input pixel, whose
        chunks were never written (they read as nodata)."""
        return self.manifest() == EMPTY

    def is_empty(self, window: Window) -> bool:
        """Whether the block at ``window`` finished without data (reads its cell only)."""
        return bool(self._book(DONE)[self.tiling.index(window)] == EMPTY)

    def mark_block_done(
        self, window: Window, valid_pixels: int | None = None, *, empty: bool = False
    ) -> None:
        """Record a finished block, with the valid input pixels it classified; call only after
        its data has been written (or, ``empty``, when it has no valid pixel and nothing is
        written: the block lies outside the state)."""
        key = self.tiling.index(window)
        if valid_pixels is not None and self.has_book(VALID_COUNTS):
            self._book(VALID_COUNTS)[key] = int(valid_pixels)
        parts = self._written().pop(window, None)
        if parts and not empty and self.has_book(DIGESTS):
            self._book(DIGESTS)[key] = _combine(parts)
        self._book(DONE)[key] = EMPTY if empty else WRITTEN

    def write(self, name: str, window: Window, data: np.ndarray) -> None:
        """Write ``data`` into ``window`` (see :meth:`GeoStore.write`), noting its digest for
        the block's manifest entry."""
        super().write(name, window, data)
        if name in DATA_ARRAYS:
            stored = np.asarray(data, dtype=self._array(name).dtype)
            self._written().setdefault(window, {})[name] = block_digest(stored)

    def _written(self) -> dict[Window, dict[str, np.ndarray]]:
        if not hasattr(self, "_digests_written"):
            self._digests_written: dict[Window, dict[str, np.ndarray]] = {}
        return self._digests_written

    def recorded_digest(self, window: Window) -> np.ndarray | None:
        """The digest the block's writer recorded (None: none recorded, an older mosaic)."""
        if not self.has_book(DIGESTS):
            return None
        value = np.asarray(self._book(DIGESTS)[self.tiling.index(window)])
        return value if value.any() else None

    def content_digest(self, window: Window) -> np.ndarray:
        """The digest of the block's content as it reads now."""
        parts = {}
        for name in DATA_ARRAYS:
            if self.has_array(name):
                fill = CLASS_NODATA if name == "class" else 0
                parts[name] = block_digest(self.read(name, window, fill))
        return _combine(parts)

    def clear_block(self, window: Window) -> None:
        """Forget a block in the manifest, so that the next run predicts it again (driver
        only: a complete mosaic becomes incomplete, so its sealed books are no longer read)."""
        if self.meta.get("complete", False):
            self.update_meta(complete=False)
        self._book(DONE)[self.tiling.index(window)] = 0

    def expected_valid_pixels(self) -> np.ndarray | None:
        """(block rows, block cols) valid input pixels per written block (-1 where unknown),
        or None for a mosaic made before w2w recorded them."""
        if not self.has_book(VALID_COUNTS):
            return None
        return self._cells(VALID_COUNTS)

    # -- data ------------------------------------------------------------------------------

    def read_class(self, window: Window) -> np.ndarray:
        """(h, w) classes of ``window``; 255 outside the grid and where not predicted."""
        return self.read("class", window, CLASS_NODATA)

    def read_confidence(self, window: Window) -> np.ndarray:
        """(h, w) confidence x 255 of ``window``; 0 outside the grid."""
        return self.read("confidence", window, CONFIDENCE_NODATA)

    def read_probabilities(self, window: Window) -> np.ndarray:
        """(classes, h, w) probability x 255 of each class in ``window``; 0 outside the grid
        and where not predicted."""
        return self.read(PROBABILITIES, window, 0)

    def mark_complete(self, **meta: Any) -> None:
        """Seal the per-block books (a one-chunk copy of each, read instead of the cells once
        the mosaic is complete), mark the mosaic complete and consolidate its metadata. The
        copies are written before the mark: a mosaic killed in between reads its cells, and
        so does one whose inputs changed while read (the mark refuses, :meth:`update_meta`)."""
        for name in CELL_BOOKS:
            if self.has_book(name):
                cells = np.asarray(self._book(name)[...])
                dims = ["block_row", "block_col", "byte"][: cells.ndim]
                self._put_book(name + SEALED, cells, dims, overwrite=True)
        self.update_meta(**meta, complete=True)
        self.finalize()


def _combine(parts: dict[str, np.ndarray]) -> np.ndarray:
    """One digest of a block's per-array digests, in :data:`DATA_ARRAYS` order."""
    names = [n for n in DATA_ARRAYS if n in parts]
    return block_digest(
        np.frombuffer("|".join(names).encode(), np.uint8), *(parts[n] for n in names)
    )
