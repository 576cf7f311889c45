"""Minimum mapping unit: merge patches smaller than N pixels into their largest neighbour.

``w2w sieve`` reads a mosaic store block by block and writes a new mosaic whose ``class`` is
*exactly* what :func:`rasterio.features.sieve` (GDAL's ``GDALSieveFilter``) gives for the
whole raster with ``mask=(class != 255)`` -- without ever holding the whole raster.

GDAL's rule, reproduced here
----------------------------
* A *patch* (GDAL: polygon) is a connected set of pixels of one class, 4- or 8-connected.
  Nodata (255) belongs to no patch: it is never changed, never counted, nobody's neighbour.
* A patch is *small* when it has fewer than N pixels over the whole raster (GDAL counts
  sizes in a C ``int`` that stops at 2**31 - 1; so do we).
* Every patch has a *largest neighbour*. Of neighbours of equal size, the one met first in
  GDAL's scan wins: pixels in row-major order, each compared with the pixel above, then
  (8-connectivity only) above-left and above-right, then left.
* A small patch follows largest neighbours until it reaches a patch of at least N pixels,
  and takes that patch's class. A small patch with no neighbour, or whose chain runs in a
  circle (patches of equal size that are each other's largest neighbour), keeps its class.

Why a halo is not enough
------------------------
A halo of N pixels holds every small patch that touches a block, but neither the true sizes
of its neighbours (a small patch between two large regions that both leave the window) nor
its whole chain: a row of one-pixel patches of alternating class, each pointing at the one
on its left, carries the class of a large patch at its far end across any number of blocks.
So the sizes and chains of patches that touch block edges are settled on the driver, and
everything else inside each block.

The passes
----------
1. *Label* (a task per block): label the block's patches; report those that touch the
   block's edge ("edge patches": class and pixels in the block) and the block's four edge
   lines of labels, run-length coded.
2. *Join* (driver): join edge patches across block seams (connected components of a sparse
   graph) into global patches with their true sizes.
3. *Neighbours* (a task per block that touches a small edge patch, given the global patches
   of the one-pixel ring above, left and right of it): for each small edge patch, the best
   neighbour this block sees (size, scan position) and where that neighbour leads -- a
   patch inside the block is followed along its chain inside the block.
4. *Resolve* (driver): the best neighbour of every small edge patch over all blocks, then
   the chains between edge patches (pointer doubling): the final class of every edge patch.
5. *Write* (a task per block): patches inside the block follow their chain up to a large
   patch or an edge patch, whose outcome comes from step 4; write ``class`` and
   ``confidence``, mark the block done.

Memory: a task holds a few arrays the size of its block, never more (measured peaks: about
16 bytes a pixel of the block for land-cover-like patches, 80 for pure speckle). The driver
holds a few integers per edge patch and per run of equal labels along block edges: it grows
with the length of the block edges, at most about (4 / block) of the raster's pixels for
pure speckle and far less for real maps, never with the whole raster. Chains are not bounded
by any halo: an edge patch's chain may cross any number of blocks, and is followed on the
driver; an inner patch's chain is followed inside its block until it reaches a large patch
or an edge patch.

Confidence: where the sieve changes a pixel's class its confidence becomes 0 ("unknown"),
since the stored value is the probability of the class the model chose, no longer the
pixel's class. Elsewhere confidence is copied.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol

import numpy as np
from pydantic import Field, model_validator
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from w2w import storage
from w2w.config import PathStr, StageConfig
from w2w.errors import ConfigError, InputError, OutputError
from w2w.grid import Grid, Window
from w2w.ingest import replace_store
from w2w.runtime import run_blocks
from w2w.store import CLASS_NODATA, MosaicStore

log = logging.getLogger("w2w")

#: GDAL counts patch sizes in a C ``int`` and stops counting here.
MAX_SIZE = 2**31 - 1
M2_PER_HECTARE = 10_000.0

BlockKey = tuple[int, int]


class SieveConfig(StageConfig):
    """Settings of ``w2w sieve``."""

    stage_name: ClassVar[str] = "sieve"

    input: PathStr = Field(description="mosaic store to sieve (local path or s3:// URL)")
    output: PathStr = Field(description="mosaic store to create")
    min_pixels: int | None = Field(
        default=None,
        ge=1,
        le=MAX_SIZE,
        description="patches with fewer pixels are merged into a neighbour",
    )
    min_area_ha: float | None = Field(
        default=None, gt=0, description="the same, as an area in hectares (projected CRS only)"
    )
    connectivity: Literal[4, 8] = Field(
        default=4, description="4: patches join through edges; 8: through corners too"
    )
    engine: Literal["ray", "local"] = "ray"
    overwrite: bool = False

    @model_validator(mode="after")
    def _one_unit(self) -> SieveConfig:
        if (self.min_pixels is None) == (self.min_area_ha is None):
            raise ValueError(
                "give exactly one minimum mapping unit: min_pixels (pixels) or min_area_ha "
                "(hectares)"
            )
        if storage.normalize(self.input) == storage.normalize(self.output):
            raise ValueError(
                f"output {self.output} is the input mosaic; the sieve writes a new mosaic, "
                "give another output path"
            )
        return self

    def min_unit_pixels(self, grid: Grid) -> int:
        """The minimum mapping unit in pixels of ``grid``: patches smaller than this merge.

        An area becomes the smallest pixel count whose area reaches it (a patch is kept when
        its area is at least ``min_area_ha``).
        """
        if self.min_pixels is not None:
            return self.min_pixels
        assert self.min_area_ha is not None
        pixel_area = grid.pixel_area_m2
        if pixel_area is None:
            raise InputError(
                f"{self.input} is in a CRS without metric units ({grid.describe()}), so "
                "min_area_ha cannot be turned into pixels; give min_pixels instead"
            )
        pixels = max(1, math.ceil(round(self.min_area_ha * M2_PER_HECTARE / pixel_area, 6)))
        if pixels > MAX_SIZE:
            raise ConfigError(
                f"min_area_ha {self.min_area_ha} is {pixels:,} pixels of {grid.describe()}, "
                f"more than the sieve can count ({MAX_SIZE:,}); give a smaller area"
            )
        return pixels


@dataclass(frozen=True)
class SieveReport:
    """What the sieve wrote."""

    output: str
    grid: Grid
    min_pixels: int
    connectivity: int
    changed_pixels: int


# -- reading and writing blocks -------------------------------------------------------------


class BlockReader(Protocol):
    """Where block tasks read classes; picklable, so it opens its store where it runs."""

    def read_class(self, window: Window) -> np.ndarray:
        """(h, w) classes of ``window``, 255 on nodata."""
        ...


class BlockWriter(Protocol):
    """Where block tasks write sieved blocks; picklable like :class:`BlockReader`."""

    def write_block(self, window: Window, sieved: np.ndarray, changed: np.ndarray) -> None:
        """Store one sieved block; ``changed`` marks the pixels whose class changed."""
        ...


@dataclass(frozen=True)
class MosaicReader:
    """Reads the classes of a mosaic store."""

    url: str

    def read_class(self, window: Window) -> np.ndarray:
        """(h, w) classes of ``window``, 255 on nodata."""
        return MosaicStore.open(self.url).read_class(window)


@dataclass(frozen=True)
class MosaicWriter:
    """Writes sieved blocks into the new mosaic.

    Per block: ``class``; ``confidence``, 0 where the class changed and copied from the
    input elsewhere; then the block's entry in the manifest of finished blocks.
    """

    input_url: str
    output_url: str

    def write_block(self, window: Window, sieved: np.ndarray, changed: np.ndarray) -> None:
        """Write one block's chunks, then mark the block done."""
        target = MosaicStore.open(self.output_url, mode="r+")
        source = MosaicStore.open(self.input_url)
        target.write("class", window, sieved)
        if target.has_confidence:
            confidence = source.read_confidence(window)
            confidence[changed] = 0
            target.write("confidence", window, confidence)
        # The sieve never changes nodata: the input's classified pixels are the expectation.
        expected = int((source.read_class(window) != CLASS_NODATA).sum())
        target.mark_block_done(window, expected)


# -- labelling --------------------------------------------------------------------------------


def label_patches(cls: np.ndarray, connectivity: int) -> tuple[np.ndarray, np.ndarray]:
    """The patches of a class raster: ``(labels, classes)``.

    ``labels`` (int32) is 0 on nodata and 1..n on the patches; ``classes[k]`` is the class of
    label ``k`` (``classes[0]`` is nodata). Labels depend only on the pixels, so every pass
    labels a block the same way.
    """
    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    labels = np.zeros(cls.shape, dtype=np.int32)
    classes = [np.full(1, CLASS_NODATA, dtype=np.uint8)]
    count = 0
    for value in np.unique(cls):
        if value == CLASS_NODATA:
            continue
        found, n = ndimage.label(cls == value, structure=structure, output=np.int32)
        inside = found > 0
        labels[inside] = found[inside] + count
        classes.append(np.full(n, value, dtype=np.uint8))
        count += n
    return labels, np.concatenate(classes)


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
class EdgePatches:
    """Pass 1's report on a block: its edge patches and its four edge lines of labels."""

    window: Window
    labels: np.ndarray  # sorted local labels of the patches touching the block's edge
    classes: np.ndarray  # their class
    sizes: np.ndarray  # their pixel count inside the block
    top: Runs
    bottom: Runs
    left: Runs
    right: Runs


@dataclass(frozen=True)
class LabelTask:
    """Pass 1, one block: label it and report its edge patches."""

    source: BlockReader
    connectivity: int

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
        )


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


# -- a block as a graph of patches (passes 3 and 5) -------------------------------------------


@dataclass(frozen=True)
class BlockGraph:
    """The patches of a block (and of the ring of pixels above, left and right of it).

    Patches that touch a block edge are nodes ``0..len(gids)-1`` (the global ids ``gids``,
    sorted); the block's inner patches follow. ``image`` holds the node of every pixel of the
    block with the ring around it (row 0 = the row above; columns 0 and -1 = left and right),
    -1 on nodata and outside the raster.
    """

    labels: np.ndarray
    label_node: np.ndarray
    gid: np.ndarray  # per node: global id, -1 for inner patches
    size: np.ndarray  # per node: true size
    klass: np.ndarray  # per node: class (nodata for ring patches that do not reach in)
    image: np.ndarray

    @property
    def is_edge(self) -> np.ndarray:
        """Per node: whether it is a global (edge) patch."""
        return self.gid >= 0


@dataclass(frozen=True)
class Ring:
    """Global ids of the pixels around a block (-1: nodata or outside the raster).

    ``top`` is the row above, both corners included; ``left`` and ``right`` the columns
    beside the block.
    """

    top: np.ndarray
    left: np.ndarray
    right: np.ndarray


def build_graph(
    cls: np.ndarray,
    connectivity: int,
    *,
    edge: np.ndarray,
    edge_gids: np.ndarray,
    gids: np.ndarray,
    gid_sizes: np.ndarray,
    ring: Ring | None = None,
) -> BlockGraph:
    """Label a block and make its patches nodes, with the true sizes of its edge patches."""
    labels, classes = label_patches(cls, connectivity)
    if not np.array_equal(edge_labels(labels), edge):
        raise InputError(
            "the input mosaic changed while it was being sieved; run the sieve again once "
            "nothing writes to it"
        )
    n = len(classes) - 1
    inner = np.ones(n + 1, dtype=bool)
    inner[0] = False
    inner[edge] = False
    inner_labels = np.flatnonzero(inner)
    g = len(gids)
    label_node = np.full(n + 1, -1, dtype=_small_int(g + n))
    label_node[edge] = np.searchsorted(gids, edge_gids)
    label_node[inner_labels] = g + np.arange(len(inner_labels))
    local_sizes = np.bincount(labels.ravel(), minlength=n + 1)
    size = np.concatenate([gid_sizes, local_sizes[inner_labels]]).astype(np.int64)
    klass = np.full(g + len(inner_labels), CLASS_NODATA, dtype=np.uint8)
    klass[label_node[1:]] = classes[1:]
    gid = np.concatenate([gids, np.full(len(inner_labels), -1, dtype=np.int64)])

    h, w = labels.shape
    image = np.full((h + 1, w + 2), -1, dtype=label_node.dtype)
    image[1:, 1:-1] = label_node[labels]
    if ring is not None:
        image[0, :] = _gid_nodes(ring.top, gids)
        image[1:, 0] = _gid_nodes(ring.left, gids)
        image[1:, -1] = _gid_nodes(ring.right, gids)
    return BlockGraph(labels, label_node, gid, size, klass, image)


def _small_int(largest: int) -> type[np.signedinteger]:
    """int32 where it holds ``largest`` (half the memory of int64 in block tasks)."""
    return np.int32 if largest < 2**31 else np.int64


def _gid_nodes(line: np.ndarray, gids: np.ndarray) -> np.ndarray:
    """Global ids -> node numbers (positions in the sorted ``gids``); -1 stays -1."""
    if len(gids) == 0:
        return np.full(len(line), -1, dtype=np.int64)
    nodes = np.minimum(np.searchsorted(gids, line), len(gids) - 1)
    return np.where(line >= 0, nodes, -1)


#: GDAL's comparisons for each pixel, in its order: (code, row offset, column offset) into
#: the ring-padded image, for the pixel above, above-left, above-right and left.
_UP, _UP_LEFT, _UP_RIGHT, _LEFT = (0, -1, 0), (1, -1, -1), (2, -1, 1), (3, 0, -1)


def largest_neighbours(
    image: np.ndarray, size: np.ndarray, wanted: np.ndarray, connectivity: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GDAL's largest neighbour of every ``wanted`` node that has a neighbour in ``image``.

    Looks at the pairs of touching pixels whose later pixel (in scan order) lies in the block
    and returns ``(node, neighbour, scan key)``; the scan key ``(pixel * 4 + code)`` (pixel
    row-major in the block) orders GDAL's comparisons, so that of equal neighbours the one
    with the smallest key is the one GDAL keeps.
    """
    steps = [_UP, _UP_LEFT, _UP_RIGHT, _LEFT] if connectivity == 8 else [_UP, _LEFT]
    h, w = image.shape[0] - 1, image.shape[1] - 2
    key_type = _small_int(4 * h * w)
    current = image[1:, 1:-1]
    best = (image[:0, 0], image[:0, 0], np.zeros(0, dtype=key_type))
    for code, dr, dc in steps:
        other = image[1 + dr : 1 + dr + h, 1 + dc : 1 + dc + w]
        touch = (current != other) & (current >= 0) & (other >= 0)
        key = (np.flatnonzero(touch) * 4 + code).astype(key_type)
        a, b = current[touch], other[touch]
        del touch
        for node, neighbour in ((a, b), (b, a)):
            keep = wanted[node]
            # Fold each direction into the best so far: memory stays at one direction's pairs.
            best = _keep_largest(
                np.concatenate([best[0], node[keep]]),
                np.concatenate([best[1], neighbour[keep]]),
                np.concatenate([best[2], key[keep]]),
                size,
            )
    return best


def _keep_largest(
    node: np.ndarray, neighbour: np.ndarray, key: np.ndarray, size: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per node, the neighbour GDAL keeps: the largest, and of equals the first compared."""
    order = np.lexsort((key, -size[neighbour], node))
    node, neighbour, key = node[order], neighbour[order], key[order]
    first = np.ones(len(node), dtype=bool)
    first[1:] = node[1:] != node[:-1]
    return node[first], neighbour[first], key[first]


def chain_ends(largest: np.ndarray, stop: np.ndarray) -> np.ndarray:
    """Where each node's chain of largest neighbours stops: the first ``stop`` node on it
    (a ``stop`` node is its own end), or -1 when the node has no neighbour or its chain runs
    in a circle -- GDAL then leaves the patch as it is.

    ``largest`` is each node's largest neighbour (-1: none). Pointer doubling: after k rounds
    every node looks 2**k steps ahead, and a chain without a circle reaches its stop node in
    fewer steps than there are nodes.
    """
    idx = np.arange(len(largest))
    ahead = np.where(stop | (largest < 0), idx, largest)
    for _ in range(len(largest).bit_length() + 1):
        further = ahead[ahead]
        if np.array_equal(further, ahead):
            break
        ahead = further
    return np.where(stop[ahead], ahead, -1)


# -- pass 3: largest neighbours of small edge patches, block by block ------------------------

#: Where a small edge patch's largest neighbour leads (``EdgeCandidates.leads``).
LEADS_TO_CLASS, LEADS_NOWHERE, LEADS_TO_EDGE = 0, 1, 2


@dataclass(frozen=True)
class NeighbourJob:
    """Pass 3's input for a block: its edge patches' global ids and sizes, and its ring."""

    window: Window
    edge: np.ndarray
    edge_gids: np.ndarray
    gids: np.ndarray
    gid_sizes: np.ndarray
    ring: Ring


@dataclass(frozen=True)
class EdgeCandidates:
    """Pass 3's report: for small edge patches, the best neighbour seen in one block.

    ``size`` and ``key`` (GDAL's global scan position of the first comparison) rank the
    candidates of one patch across blocks; ``leads``/``value`` say where the candidate leads:
    a class (a large patch, or a small inner patch whose chain ends at one), nowhere (the
    chain runs in a circle inside the block), or an edge patch (global id).
    """

    gid: np.ndarray
    size: np.ndarray
    key: np.ndarray
    leads: np.ndarray
    value: np.ndarray


@dataclass(frozen=True)
class NeighbourTask:
    """Pass 3, one block: candidates for the largest neighbour of its small edge patches."""

    source: BlockReader
    connectivity: int
    min_pixels: int
    raster_width: int

    def __call__(self, job: NeighbourJob) -> EdgeCandidates:
        cls = self.source.read_class(job.window)
        graph = build_graph(
            cls,
            self.connectivity,
            edge=job.edge,
            edge_gids=job.edge_gids,
            gids=job.gids,
            gid_sizes=job.gid_sizes,
            ring=job.ring,
        )
        small = graph.size < self.min_pixels
        node, neighbour, key = largest_neighbours(graph.image, graph.size, small, self.connectivity)
        largest = np.full(len(graph.size), -1, dtype=np.int64)
        largest[node] = neighbour
        ends = chain_ends(largest, ~small | graph.is_edge)

        mine = graph.is_edge[node]
        node, neighbour, key = node[mine], neighbour[mine], key[mine]
        end = np.where(graph.is_edge[neighbour], neighbour, ends[neighbour])
        leads = np.where(
            end < 0, LEADS_NOWHERE, np.where(graph.is_edge[end], LEADS_TO_EDGE, LEADS_TO_CLASS)
        ).astype(np.int8)
        value = np.where(
            end < 0, -1, np.where(graph.is_edge[end], graph.gid[end], graph.klass[end])
        )
        return EdgeCandidates(
            gid=graph.gid[node],
            size=graph.size[neighbour],
            key=self._global_key(job.window, key),
            leads=leads,
            value=value.astype(np.int64),
        )

    def _global_key(self, window: Window, key: np.ndarray) -> np.ndarray:
        """A block's scan key -> GDAL's scan key over the whole raster (int64)."""
        pixel, code = np.divmod(key.astype(np.int64), 4)
        row = window.row + pixel // window.width
        col = window.col + pixel % window.width
        return (row * self.raster_width + col) * 4 + code


def neighbour_blocks(edges: GlobalEdgePatches, min_pixels: int) -> list[BlockKey]:
    """The blocks pass 3 must visit: those that may see a small edge patch.

    That is, blocks whose own edge patches, or those of a block whose edge lies in their
    ring, include a small one (a superset of the blocks that see one).
    """
    has_small = {k: bool((edges.sizes[g] < min_pixels).any()) for k, g in edges.gids.items()}
    ring_blocks = ((0, 0), (-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1))
    return [
        (i, j)
        for i, j in edges.blocks
        if any(has_small.get((i + di, j + dj), False) for di, dj in ring_blocks)
    ]


def neighbour_job(edges: GlobalEdgePatches, key: BlockKey) -> NeighbourJob:
    """Pass 3's input for one block: its edge patches and the ring of global ids around it."""
    i, j = key
    report = edges.blocks[key]
    w = report.window
    ring = Ring(
        top=np.concatenate(
            [
                _ring_part(edges, (i - 1, j - 1), "bottom", slice(-1, None), 1),
                _ring_part(edges, (i - 1, j), "bottom", slice(None), w.width),
                _ring_part(edges, (i - 1, j + 1), "bottom", slice(0, 1), 1),
            ]
        ),
        left=_ring_part(edges, (i, j - 1), "right", slice(None), w.height),
        right=_ring_part(edges, (i, j + 1), "left", slice(None), w.height),
    )
    edge_gids = edges.gids[key]
    seen = np.concatenate([edge_gids, ring.top, ring.left, ring.right])
    gids = np.unique(seen[seen >= 0])
    return NeighbourJob(w, report.labels, edge_gids, gids, edges.sizes[gids], ring)


def _ring_part(
    edges: GlobalEdgePatches, key: BlockKey, side: str, at: slice, length: int
) -> np.ndarray:
    """Part of a ring: a neighbour block's edge line, or -1s beyond the raster."""
    if key not in edges.blocks:
        return np.full(length, -1, dtype=np.int64)
    return edges.line(key, side)[at]


# -- pass 4: resolve the chains between edge patches (driver) ---------------------------------


def resolve_edges(
    candidates: list[EdgeCandidates], sizes: np.ndarray, classes: np.ndarray, min_pixels: int
) -> np.ndarray:
    """The outcome of every global edge patch: the class a chain through it ends in (its own
    class for a large patch), or -1 when such a chain goes nowhere (the patch is unchanged).
    """
    n = len(sizes)
    outcome = classes.astype(np.int64)
    outcome[sizes < min_pixels] = -1  # small, until a neighbour says otherwise
    ahead = np.arange(n)
    settled = np.ones(n, dtype=bool)
    if candidates:
        gid, size, key, leads, value = (
            np.concatenate([getattr(c, f) for c in candidates])
            for f in ("gid", "size", "key", "leads", "value")
        )
        order = np.lexsort((key, -size, gid))
        gid, leads, value = gid[order], leads[order], value[order]
        first = np.ones(len(gid), dtype=bool)
        first[1:] = gid[1:] != gid[:-1]
        gid, leads, value = gid[first], leads[first], value[first]
        to_class = leads == LEADS_TO_CLASS
        outcome[gid[to_class]] = value[to_class]
        to_edge = (leads == LEADS_TO_EDGE) & (value != gid)  # back to itself: a circle
        ahead[gid[to_edge]] = value[to_edge]
        settled[gid[to_edge]] = False
    for _ in range(n.bit_length() + 1):
        further = ahead[ahead]
        if np.array_equal(further, ahead):
            break
        ahead = further
    return np.where(settled[ahead], outcome[ahead], -1)


# -- pass 5: write every block -----------------------------------------------------------------


@dataclass(frozen=True)
class WriteJob:
    """Pass 5's input for a block: its edge patches' global ids, sizes and outcomes."""

    window: Window
    edge: np.ndarray
    edge_gids: np.ndarray
    gids: np.ndarray
    gid_sizes: np.ndarray
    gid_outcomes: np.ndarray


@dataclass(frozen=True)
class WriteTask:
    """Pass 5, one block: settle its inner patches, write class and confidence."""

    source: BlockReader
    sink: BlockWriter
    connectivity: int
    min_pixels: int

    def __call__(self, job: WriteJob) -> int:
        cls = self.source.read_class(job.window)
        graph = build_graph(
            cls,
            self.connectivity,
            edge=job.edge,
            edge_gids=job.edge_gids,
            gids=job.gids,
            gid_sizes=job.gid_sizes,
        )
        small = graph.size < self.min_pixels
        wanted = small & ~graph.is_edge
        node, neighbour, _ = largest_neighbours(graph.image, graph.size, wanted, self.connectivity)
        largest = np.full(len(graph.size), -1, dtype=np.int64)
        largest[node] = neighbour
        ends = chain_ends(largest, ~small | graph.is_edge)

        # The class each chain ends in: a large inner patch's class, or an edge patch's
        # outcome from pass 4; -1 where the patch stays as it is.
        outcome = np.full(len(graph.size), -1, dtype=np.int64)
        outcome[: len(job.gids)] = job.gid_outcomes
        end = np.maximum(ends, 0)
        end_class = np.where(graph.is_edge[end], outcome[end], graph.klass[end])
        end_class[ends < 0] = -1
        new_class = np.where(end_class >= 0, end_class, graph.klass).astype(np.uint8)

        # Nodata pixels have node -1, which picks the nodata value appended last.
        out = np.append(new_class, np.uint8(CLASS_NODATA))[graph.label_node[graph.labels]]
        changed = out != cls
        self.sink.write_block(job.window, out, changed)
        return int(changed.sum())


def write_jobs(edges: GlobalEdgePatches, outcomes: np.ndarray) -> Iterator[WriteJob]:
    """Pass 5's jobs, one per block."""
    for key, report in edges.blocks.items():
        edge_gids = edges.gids[key]
        gids = np.unique(edge_gids)
        yield WriteJob(
            report.window, report.labels, edge_gids, gids, edges.sizes[gids], outcomes[gids]
        )


# -- the stage ---------------------------------------------------------------------------------


def open_mosaic(url: str) -> MosaicStore:
    """Open a finished mosaic to sieve."""
    store: MosaicStore = MosaicStore.open(url)
    if not store.meta.get("complete", False):
        raise InputError(
            f"mosaic {url} is incomplete (the run that wrote it did not finish); finish that "
            "run first"
        )
    return store


def sieve(cfg: SieveConfig, *, progress: bool = True) -> SieveReport:
    """Write a sieved copy of a mosaic; bad input raises a W2WError.

    The new mosaic is built beside the output and moved into place only when complete, so a
    failure leaves an existing output untouched.
    """
    output = storage.normalize(cfg.output)
    if storage.exists(output) and not cfg.overwrite:
        raise OutputError(
            f"output store {cfg.output} exists already; pass --overwrite to replace it"
        )
    source = open_mosaic(cfg.input)
    min_pixels = cfg.min_unit_pixels(source.grid)
    provenance = {
        "stage": "sieve",
        "input": source.url,
        "min_pixels": min_pixels,
        "min_area_ha": cfg.min_area_ha,
        "connectivity": cfg.connectivity,
        "rule": "GDALSieveFilter (rasterio.features.sieve) with nodata 255 masked",
        "input_provenance": source.meta.get("provenance", {}),
    }
    with replace_store(output, overwrite=cfg.overwrite) as work_url:
        target = MosaicStore.create(
            work_url,
            source.grid,
            block=source.block,
            chunk=int(source.meta.get("chunk", source.block)),
            shard=bool(source.meta.get("sharded", False)),
            classes=list(source.classes),
            provenance=provenance,
            with_confidence=source.has_confidence,
            overwrite=cfg.overwrite,
        )
        try:
            changed = sieve_blocks(
                MosaicReader(source.url),
                MosaicWriter(source.url, work_url),
                source.grid,
                source.block,
                min_pixels=min_pixels,
                connectivity=cfg.connectivity,
                engine=cfg.engine,
                progress=progress,
            )
            target.mark_complete(changed_pixels=changed)
        except BaseException:
            storage.remove_tree(work_url)
            raise
    log.debug("sieve changed %d pixels", changed)
    return SieveReport(output, source.grid, min_pixels, cfg.connectivity, changed)


def sieve_blocks(
    source: BlockReader,
    sink: BlockWriter,
    grid: Grid,
    block: int,
    *,
    min_pixels: int,
    connectivity: int,
    engine: Literal["ray", "local"] = "ray",
    progress: bool = True,
) -> int:
    """Sieve a raster block by block (passes 1 to 5, see the module's notes), reading from
    ``source`` and writing every block to ``sink``; returns how many pixels changed class.
    """
    common: dict[str, Any] = {"engine": engine, "progress": progress}
    blocks: dict[BlockKey, EdgePatches] = {}
    for report in run_blocks(
        LabelTask(source, connectivity),
        grid.block_windows(block),
        what="sieve: label",
        **common,
    ):
        blocks[(report.window.row // block, report.window.col // block)] = report
    edges = join_edges(blocks, connectivity)

    visit = neighbour_blocks(edges, min_pixels)
    candidates = list(
        run_blocks(
            NeighbourTask(source, connectivity, min_pixels, grid.width),
            (neighbour_job(edges, key) for key in visit),
            total=len(visit),
            what="sieve: neighbours",
            **common,
        )
    )
    outcomes = resolve_edges(candidates, edges.sizes, edges.classes, min_pixels)
    del candidates

    return sum(
        run_blocks(
            WriteTask(source, sink, connectivity, min_pixels),
            write_jobs(edges, outcomes),
            total=len(blocks),
            what="sieve: write",
            **common,
        )
    )
