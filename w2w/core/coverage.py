"""Is a store whole? The checks prediction, the sieve and ``w2w verify`` run.

**Scene stores** (:func:`verify_scene`): every chunk a complete store must hold is there,
and every block's content matches the digest ingest recorded for it (a damaged chunk also
fails its CRC32C when read).

**Mosaics** (:func:`verify_coverage`):

Each block's writer records, beside its manifest entry, how many valid input pixels the block
holds. The check reads only the uint8 class array back from storage, block by block, and
compares the classified pixels with that count: a lost or partial write (the silent failure
of two writers sharing a chunk) or an unfinished block shows as a mismatch. A mosaic that
records no counts cannot be checked, and is reported as such -- never as whole.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from w2w.core.classes import CLASS_NODATA
from w2w.core.errors import InputError
from w2w.core.grid import Window
from w2w.core.runtime import Engine, run_blocks
from w2w.core.store import MosaicStore, SceneStore
from w2w.core.store.integrity import ChunkProblem, block_digest
from w2w.core.store.mosaic import EMPTY

log = logging.getLogger("w2w")

#: Mosaics up to this many pixels are checked for coverage in this process: reading back
#: 64 MB of uint8 classes takes well under a second here, less than starting Ray tasks.
COVERAGE_LOCAL_PIXELS = 1 << 26


@dataclass(frozen=True)
class BlockCoverage:
    """A block whose written classes do not cover the valid input pixels it recorded."""

    window: Window
    expected: int  # valid input pixels recorded by the block's writer (-1: none recorded)
    found: int  # classified pixels read back from the mosaic


@dataclass(frozen=True)
class CoverageReport:
    """What :func:`verify_coverage` found: blocks never finished, blocks with holes, and
    whether the mosaic records the counts the check needs at all."""

    blocks_total: int
    missing: tuple[Window, ...]
    holes: tuple[BlockCoverage, ...]
    checked_pixels: int
    counts_recorded: bool = True
    #: Blocks whose content differs from what their writer recorded (with ``contents``).
    changed: tuple[Window, ...] = ()

    @property
    def ok(self) -> bool:
        """Every block finished and fully classified (and that could be checked)."""
        return self.counts_recorded and not self.missing and not self.holes and not self.changed

    def describe(self) -> str:
        """One line for messages and the log."""
        if self.ok:
            return (
                f"all {self.blocks_total} blocks finished; every one of the "
                f"{self.checked_pixels:,} valid pixels has a class"
            )
        parts = []
        if not self.counts_recorded:
            parts.append(
                "the mosaic records no valid-pixel counts (made by an older w2w), so its "
                "coverage cannot be checked"
            )
        if self.missing:
            shown = ", ".join(f"(row {w.row}, col {w.col})" for w in self.missing[:5])
            parts.append(f"{len(self.missing)} block(s) never finished: {shown}")
        if self.holes:
            shown = ", ".join(
                f"(row {h.window.row}, col {h.window.col}): {h.expected - h.found:,} of "
                f"{h.expected:,} valid pixels without a class"
                for h in self.holes[:5]
            )
            parts.append(f"{len(self.holes)} block(s) with holes: {shown}")
        if self.changed:
            shown = ", ".join(f"(row {w.row}, col {w.col})" for w in self.changed[:5])
            parts.append(
                f"{len(self.changed)} block(s) differ from what their writer wrote (chunks "
                f"copied in or rewritten since): {shown}"
            )
        return "; ".join(parts)


def _block_classified(
    item: tuple[str, dict[str, int], bool],
) -> tuple[dict[str, int], int, bool]:
    """Coverage task: classified (non-nodata) pixels of one block, read back from storage,
    and (with contents) whether the block reads as its writer recorded it."""
    url, window, contents = item
    mosaic = MosaicStore.open(url)
    w = Window(**window)
    found = int((mosaic.read_class(w) != CLASS_NODATA).sum())
    same = True
    if contents:
        recorded = mosaic.recorded_digest(w)
        # A mosaic made before w2w recorded digests cannot be checked this way.
        same = recorded is None or np.array_equal(recorded, mosaic.content_digest(w))
    return window, found, same


def verify_coverage(
    mosaic_url: str,
    *,
    engine: Engine | str = "auto",
    progress: bool = True,
    contents: bool = False,
) -> CoverageReport:
    """Check a mosaic for holes, cheaply: every block is recorded as finished, and the classes
    read back from storage cover as many pixels as the block's writer found valid in the
    input. Reads only the uint8 class array, on Ray tasks (``engine="ray"``), in this process
    (``"local"``), or ``"auto"``: in this process for a mosaic of at most
    :data:`COVERAGE_LOCAL_PIXELS` pixels, else on Ray. With ``contents`` (``w2w verify``),
    every array of every block is read and compared with the digest its writer recorded."""
    mosaic = MosaicStore.open(mosaic_url)
    if engine == "auto":
        engine = "local" if mosaic.grid.full_window.size <= COVERAGE_LOCAL_PIXELS else "ray"
    tiling = mosaic.tiling
    codes = mosaic.manifest()  # read once: on object storage, a request per block
    done, empty = codes != 0, codes == EMPTY
    expected = mosaic.expected_valid_pixels()
    blocks = tiling.windows()
    lost = {p.chunk for p in mosaic.missing_chunks(codes) if p.array == "class"}
    unit = mosaic.chunk_shape("class")
    if lost:  # a finished block whose chunk is gone is not finished
        for w in tiling.windows(done):
            if any(
                (w.row // unit[0] + i, w.col // unit[1] + j) in lost
                for i in range(-(-w.height // unit[0]))
                for j in range(-(-w.width // unit[1]))
            ):
                done[tiling.index(w)] = False
    missing = tuple(tiling.windows(~done))
    if expected is None:
        return CoverageReport(len(blocks), missing, (), 0, counts_recorded=False)
    holes: list[BlockCoverage] = []
    checked = 0
    # Blocks finished empty (outside the state) hold nothing to read back.
    items = [(mosaic.url, w.to_dict(), contents) for w in tiling.windows(done & ~empty)]
    changed: list[Window] = []
    for window, found, same in run_blocks(
        _block_classified,
        items,
        engine=engine,  # type: ignore[arg-type]
        what="coverage check",
        num_cpus=0.5,
        progress=progress,
    ):
        w = Window(**window)
        if not same:
            changed.append(w)
        want = int(expected[tiling.index(w)])
        checked += max(want, 0)
        if want < 0 or found != want:
            holes.append(BlockCoverage(w, want, found))
    holes.sort(key=lambda h: (h.window.row, h.window.col))
    changed.sort(key=lambda w: (w.row, w.col))
    return CoverageReport(len(blocks), missing, tuple(holes), checked, changed=tuple(changed))


@dataclass(frozen=True)
class SceneIntegrity:
    """What :func:`verify_scene` found: missing chunks, and blocks whose content changed."""

    blocks_total: int
    missing: tuple[ChunkProblem, ...]
    changed: tuple[Window, ...]
    damaged: tuple[str, ...]
    digests_recorded: bool = True

    @property
    def ok(self) -> bool:
        """Every chunk there, every block as ingested."""
        return self.digests_recorded and not (self.missing or self.changed or self.damaged)

    def describe(self) -> str:
        """One line for messages."""
        if self.ok:
            return f"all {self.blocks_total} blocks present and as ingested"
        parts = []
        if not self.digests_recorded:
            parts.append("the store records no block digests (made by an older w2w)")
        if self.missing:
            shown = ", ".join(p.describe() for p in self.missing[:5])
            parts.append(f"{len(self.missing)} chunk(s) missing: {shown}")
        if self.changed:
            shown = ", ".join(f"(row {w.row}, col {w.col})" for w in self.changed[:5])
            parts.append(f"{len(self.changed)} block(s) differ from what was ingested: {shown}")
        if self.damaged:
            parts.append(f"{len(self.damaged)} block(s) unreadable: {self.damaged[0]}")
        return "; ".join(parts)


def _block_digest(item: tuple[str, dict[str, int]]) -> tuple[dict[str, int], Any]:
    """Integrity task: the digest of one block as it reads now, or the read error."""
    url, window = item
    store = SceneStore.open(url)
    w = Window(**window)
    try:
        image = store.read("image", w, 0)
        label = store.read("label", w, 0) if store.meta["has_label"] else None
    except InputError as exc:
        return window, str(exc)
    return window, block_digest(image, label)


def verify_scene(
    scene_url: str, *, engine: Engine | str = "auto", progress: bool = True
) -> SceneIntegrity:
    """Check a scene store: every chunk present (one listing), and every block's content
    equal to the digest ingest recorded (reads the whole store, block by block)."""
    store = SceneStore.open(scene_url)
    tiling = store.tiling
    recorded = store.digests()
    missing = tuple(store.missing_chunks())
    if recorded is None:
        return SceneIntegrity(len(tiling), missing, (), (), digests_recorded=False)
    if engine == "auto":
        engine = "local" if store.grid.full_window.size <= COVERAGE_LOCAL_PIXELS else "ray"
    changed, damaged = [], []
    items = [(store.url, w.to_dict()) for w in tiling.windows(store.written_blocks())]
    for window, digest in run_blocks(
        _block_digest,
        items,
        engine=engine,
        what="integrity check",
        progress=progress,  # type: ignore[arg-type]
    ):
        w = Window(**window)
        if isinstance(digest, str):
            damaged.append(digest)
        elif not np.array_equal(digest, recorded[tiling.index(w)]):
            changed.append(w)
    changed.sort(key=lambda w: (w.row, w.col))
    return SceneIntegrity(len(tiling), missing, tuple(changed), tuple(damaged))
