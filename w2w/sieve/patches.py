"""Passes 1 and 2 of the sieve: label each block's patches, join edge patches across seams.

Pass 1 (a task per block) labels the block's patches and reports those that touch its edge
("edge patches": class and pixels in the block), its four edge lines of labels, run-length
coded, and the touching pixel pairs that pass 3 needs (:class:`SmallPatchPairs`), so that
pass 3 reads and labels again only blocks where those pairs are too many. Pass 2 (the
driver) joins edge patches across block seams -- connected components of a sparse graph --
into global patches with their true sizes. Pure numpy and scipy: what a block task needs is
a :class:`BlockReader` it can call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from w2w.core.grid import BlockKey, Window
from w2w.core.patches import label_patches
from w2w.sieve.config import MAX_SIZE
from w2w.sieve.pairs import key_type, label_pairs

#: How many pixel pairs pass 1 may report for pass 3, per pixel of a block's edge lines.
MAX_PAIRS = 2.0


class BlockReader(Protocol):
    """Where block tasks read classes; picklable, so it opens its store where it runs."""

    def read_class(self, window: Window) -> np.ndarray:
        """(h, w) classes of ``window``, 255 on nodata."""
        ...


class BlockWriter(Protocol):
    """Where block tasks write sieved blocks; picklable like :class:`BlockReader`."""

    def write_block(
        self, window: Window, sieved: np.ndarray, changed: np.ndarray, classified: int
    ) -> None:
        """Store one sieved block; ``changed`` marks the pixels whose class changed and
        ``classified`` counts the pixels of the input block that hold a class."""
        ...


def edge_labels(labels: np.ndarray) -> np.ndarray:
    """Sorted labels of the patches that touch the edge of a block (0 left out)."""
    line = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    found = np.unique(line)
    return found[found > 0]


@dataclass(frozen=True)
class Runs:
    """A line of labels, run-length coded: ``values[i]`` from ``starts[i]`` to the next start."""

    starts: np.ndarray
    values: np.ndarray
    length: int

    @classmethod
    def encode(cls, line: np.ndarray) -> Runs:
        """Code a 1-D array."""
        starts = np.concatenate([[0], np.flatnonzero(line[1:] != line[:-1]) + 1])
        return cls(starts.astype(np.int32), line[starts], len(line))

    def decode(self) -> np.ndarray:
        """The line again."""
        return np.repeat(self.values, np.diff(np.append(self.starts, self.length)))


@dataclass(frozen=True)
class SmallPatchPairs:
    """What pass 3 needs of a block's inside, listed by pass 1 so that pass 3 need not read
    and label the block again.

    Pass 3 follows, for each small edge patch, the chain of largest neighbours inside the
    block. Every patch on such a chain up to its last step is small, so the chain stays in
    the set of small patches joined by touching to an edge patch that is small in the block
    (a globally small patch is small in every block it touches). ``a``, ``b`` and ``key``
    are the touching pixel pairs inside the block (local labels, scan key) with a patch of
    that set on one side; ``inner`` the sorted labels of the inner patches the pairs name,
    with their sizes and classes.
    """

    a: np.ndarray
    b: np.ndarray
    key: np.ndarray
    inner: np.ndarray
    inner_sizes: np.ndarray
    inner_classes: np.ndarray


@dataclass(frozen=True)
class EdgePatches:
    """Pass 1's report on a block: its edge patches, its four edge lines of labels and the
    pairs pass 3 needs (None where they were more than pass 1 may report)."""

    window: Window
    labels: np.ndarray  # sorted local labels of the patches touching the block's edge
    classes: np.ndarray  # their class
    sizes: np.ndarray  # their pixel count inside the block
    top: Runs
    bottom: Runs
    left: Runs
    right: Runs
    small: SmallPatchPairs | None = None


@dataclass(frozen=True)
class LabelTask:
    """Pass 1, one block: label it and report its edge patches.

    ``max_pairs`` bounds the pairs a report may hold for pass 3, per pixel of the block's
    edge lines, so that what the driver holds grows with the length of the block edges as
    the rest of the report does; a block with more (speckle) is read again by pass 3.
    """

    source: BlockReader
    connectivity: int
    min_pixels: int
    max_pairs: float = MAX_PAIRS

    def __call__(self, window: Window) -> EdgePatches:
        cls = self.source.read_class(window)
        labels, classes = label_patches(cls, self.connectivity)
        edge = edge_labels(labels)
        sizes = np.bincount(labels.ravel(), minlength=len(classes))
        return EdgePatches(
            window=window,
            labels=edge,
            classes=classes[edge],
            sizes=sizes[edge].astype(np.int64),
            top=Runs.encode(labels[0]),
            bottom=Runs.encode(labels[-1]),
            left=Runs.encode(labels[:, 0]),
            right=Runs.encode(labels[:, -1]),
            small=self._small_pairs(labels, classes, sizes, edge),
        )

    def _small_pairs(
        self, labels: np.ndarray, classes: np.ndarray, sizes: np.ndarray, edge: np.ndarray
    ) -> SmallPatchPairs | None:
        """The pairs pass 3 needs from this block, or None when they are too many."""
        h, w = labels.shape
        limit = int(self.max_pairs * 2 * (h + w))
        if limit <= 0:
            return None
        small = sizes < self.min_pixels
        small[0] = False  # nodata
        seeds = edge[small[edge]]
        if len(seeds) == 0:  # no chain starts here: the seams' pairs are pass 3's own
            none = np.zeros(0, dtype=labels.dtype)
            return SmallPatchPairs(
                none,
                none,
                none.astype(key_type(h, w)),
                none,
                none.astype(np.int64),
                classes[none],
            )
        a, b, key = label_pairs(labels, self.connectivity, small)
        if len(a):  # keep the pairs of the small patches that touching joins to a seed
            both = small[a] & small[b]
            n = len(sizes)
            joined = coo_matrix((np.ones(int(both.sum()), np.int8), (a[both], b[both])), (n, n))
            _, comp = connected_components(joined.tocsr(), directed=False)
            reach = np.isin(comp, comp[seeds])
            keep = reach[a] | reach[b]
            a, b, key = a[keep], b[keep], key[keep]
        if len(a) > limit:
            return None
        named = np.unique(np.concatenate([a, b]))
        inner = named[~np.isin(named, edge)]
        return SmallPatchPairs(a, b, key, inner, sizes[inner].astype(np.int64), classes[inner])


# -- pass 2: join edge patches across seams (driver) -----------------------------------------


@dataclass
class GlobalEdgePatches:
    """Edge patches joined across block seams into global patches (ids 0..n-1)."""

    blocks: dict[BlockKey, EdgePatches]
    gids: dict[BlockKey, np.ndarray]  # per block: global id of each of its edge labels
    sizes: np.ndarray  # per global patch: its size over the whole raster (capped like GDAL)
    classes: np.ndarray  # per global patch: its class

    def line(self, key: BlockKey, side: str) -> np.ndarray:
        """Global ids along one edge line of a block (-1 on nodata)."""
        report = self.blocks[key]
        return _to_gids(getattr(report, side).decode(), report.labels, self.gids[key])


def _to_gids(line: np.ndarray, labels: np.ndarray, gids: np.ndarray) -> np.ndarray:
    """Local labels -> global ids through a block's (sorted labels, gids); 0 -> -1."""
    if len(labels) == 0:
        return np.full(len(line), -1, dtype=np.int64)
    out = gids[np.minimum(np.searchsorted(labels, line), len(labels) - 1)]
    return np.where(line > 0, out, -1)


def _seam_pairs(a: np.ndarray, b: np.ndarray, diagonal: bool) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of touching pixels across a seam: ``a[k]`` faces ``b[k]`` (and ``b[k±1]``)."""
    firsts, seconds = [a], [b]
    if diagonal and len(a) > 1:
        firsts += [a[:-1], a[1:]]
        seconds += [b[1:], b[:-1]]
    return np.concatenate(firsts), np.concatenate(seconds)


def join_edges(blocks: dict[BlockKey, EdgePatches], connectivity: int) -> GlobalEdgePatches:
    """Join the blocks' edge patches that touch across seams into global patches."""
    keys = sorted(blocks)
    offsets = np.cumsum([0] + [len(blocks[k].labels) for k in keys])
    base = {k: int(o) for k, o in zip(keys, offsets[:-1])}
    total = int(offsets[-1])
    classes = np.concatenate([blocks[k].classes for k in keys] or [np.zeros(0, np.uint8)])
    sizes = np.concatenate([blocks[k].sizes for k in keys] or [np.zeros(0, np.int64)])

    def nodes(key: BlockKey, side: str, at: slice = slice(None)) -> np.ndarray:
        report = blocks[key]
        local = np.arange(len(report.labels), dtype=np.int64) + base[key]
        return _to_gids(getattr(report, side).decode()[at], report.labels, local)

    diagonal = connectivity == 8
    firsts, seconds = [], []
    for i, j in keys:
        pairs = []
        if (i, j + 1) in blocks:
            pairs.append(_seam_pairs(nodes((i, j), "right"), nodes((i, j + 1), "left"), diagonal))
        if (i + 1, j) in blocks:
            pairs.append(_seam_pairs(nodes((i, j), "bottom"), nodes((i + 1, j), "top"), diagonal))
        if diagonal and (i + 1, j + 1) in blocks:
            last, first = slice(-1, None), slice(0, 1)
            pairs.append((nodes((i, j), "bottom", last), nodes((i + 1, j + 1), "top", first)))
        if diagonal and (i + 1, j - 1) in blocks:
            last, first = slice(-1, None), slice(0, 1)
            pairs.append((nodes((i, j), "bottom", first), nodes((i + 1, j - 1), "top", last)))
        for a, b in pairs:
            keep = (a >= 0) & (b >= 0)
            a, b = a[keep], b[keep]
            keep = classes[a] == classes[b]
            firsts.append(a[keep])
            seconds.append(b[keep])
    a = np.concatenate(firsts or [np.zeros(0, np.int64)])
    b = np.concatenate(seconds or [np.zeros(0, np.int64)])
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(total, total))
    count, comp = connected_components(graph.tocsr(), directed=False)
    global_sizes = np.bincount(comp, weights=sizes, minlength=count).astype(np.int64)
    global_classes = np.zeros(count, dtype=np.uint8)
    global_classes[comp] = classes
    gids = {k: comp[base[k] : base[k] + len(blocks[k].labels)].astype(np.int64) for k in keys}
    return GlobalEdgePatches(blocks, gids, np.minimum(global_sizes, MAX_SIZE), global_classes)
