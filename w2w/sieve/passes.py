"""Passes 3 to 5 of the sieve, and the five passes run block by block.

Pass 3 (a task per block that may see a small edge patch) finds the best neighbour of each
small edge patch that the block sees, from the pairs pass 1 listed (or, where those were too
many, from the block read and labelled again); pass 4 (the driver) resolves the chains
between edge patches; pass 5 (a task per block) settles the block's inner patches and writes
the block.
:func:`sieve_blocks` runs them all on Ray tasks or in this process.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from w2w.core.classes import CLASS_NODATA
from w2w.core.grid import BlockKey, Grid, Window
from w2w.core.runtime import run_blocks
from w2w.sieve.graph import (
    BlockGraph,
    PatchNodes,
    Ring,
    build_graph,
    chain_ends,
    graph_from_pairs,
    largest_neighbours,
)
from w2w.sieve.pairs import Border, Pairs, key_type
from w2w.sieve.patches import (
    MAX_PAIRS,
    BlockReader,
    BlockWriter,
    EdgePatches,
    GlobalEdgePatches,
    LabelTask,
    SmallPatchPairs,
    join_edges,
)

# -- pass 3: largest neighbours of small edge patches, block by block ------------------------

#: Where a small edge patch's largest neighbour leads (``EdgeCandidates.leads``).
LEADS_TO_CLASS, LEADS_NOWHERE, LEADS_TO_EDGE = 0, 1, 2


@dataclass(frozen=True)
class NeighbourJob:
    """Pass 3's input for a block: its edge patches' global ids, sizes and classes, its ring,
    and the pairs pass 1 listed with the global ids of the block's own border (None: read
    the block again)."""

    window: Window
    edge: np.ndarray
    edge_gids: np.ndarray
    gids: np.ndarray
    gid_sizes: np.ndarray
    gid_classes: np.ndarray
    ring: Ring
    small: SmallPatchPairs | None = None
    border: Border | None = None


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


def _read_graph(
    source: BlockReader, connectivity: int, job: NeighbourJob | WriteJob
) -> tuple[np.ndarray, BlockGraph]:
    """Read a job's block and make it a graph of patches with its edge patches' true sizes."""
    cls = source.read_class(job.window)
    graph = build_graph(
        cls,
        connectivity,
        edge=job.edge,
        edge_gids=job.edge_gids,
        gids=job.gids,
        gid_sizes=job.gid_sizes,
    )
    return cls, graph


@dataclass(frozen=True)
class NeighbourTask:
    """Pass 3, one block: candidates for the largest neighbour of its small edge patches."""

    source: BlockReader
    connectivity: int
    min_pixels: int
    raster_width: int

    def __call__(self, job: NeighbourJob) -> EdgeCandidates:
        graph, pairs = self._graph(job)
        small = graph.size < self.min_pixels
        keys = key_type(job.window.height, job.window.width)
        node, neighbour, key = largest_neighbours(pairs, graph.size, small, keys)
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

    def _graph(self, job: NeighbourJob) -> tuple[PatchNodes, list[Pairs]]:
        """The block's graph: from pass 1's pairs, or from the block read again."""
        if job.small is None or job.border is None:
            _, graph = _read_graph(self.source, self.connectivity, job)
            return graph, graph.pairs(self.connectivity, job.ring)
        return graph_from_pairs(
            job.small,
            edge=job.edge,
            edge_gids=job.edge_gids,
            gids=job.gids,
            gid_sizes=job.gid_sizes,
            gid_classes=job.gid_classes,
            border=job.border,
            ring=job.ring,
            connectivity=self.connectivity,
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
    border = None
    if report.small is not None:
        border = Border(*(edges.line(key, side) for side in ("top", "left", "right")))
    return NeighbourJob(
        w,
        report.labels,
        edge_gids,
        gids,
        edges.sizes[gids],
        edges.classes[gids],
        ring,
        report.small,
        border,
    )


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
        cls, graph = _read_graph(self.source, self.connectivity, job)
        small = graph.size < self.min_pixels
        wanted = small & ~graph.is_edge
        pairs = graph.pairs_of(wanted, self.connectivity)  # an inner patch's all lie inside
        keys = key_type(job.window.height, job.window.width)
        node, neighbour, _ = largest_neighbours(pairs, graph.size, wanted, keys)
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

        # Per label (nodata's node -1 picks the nodata value appended last), then per pixel.
        label_class = np.append(new_class, np.uint8(CLASS_NODATA))[graph.label_node]
        out = np.take(label_class, graph.labels)
        changed = out != cls
        self.sink.write_block(job.window, out, changed, int((cls != CLASS_NODATA).sum()))
        return int(changed.sum())


def write_jobs(edges: GlobalEdgePatches, outcomes: np.ndarray) -> Iterator[WriteJob]:
    """Pass 5's jobs, one per block."""
    for key, report in edges.blocks.items():
        edge_gids = edges.gids[key]
        gids = np.unique(edge_gids)
        yield WriteJob(
            report.window, report.labels, edge_gids, gids, edges.sizes[gids], outcomes[gids]
        )


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
    max_pairs: float = MAX_PAIRS,
) -> int:
    """Sieve a raster block by block (passes 1 to 5, see the module's notes), reading from
    ``source`` and writing every block to ``sink``; returns how many pixels changed class.

    ``max_pairs``: how many pixel pairs pass 1 may hand to pass 3 per pixel of a block's
    edge lines (:class:`LabelTask`); 0 makes pass 3 read every block again.
    """
    common: dict[str, Any] = {"engine": engine, "progress": progress}
    tiling = grid.blocks(block)
    blocks: dict[BlockKey, EdgePatches] = {}
    label = LabelTask(source, connectivity, min_pixels, max_pairs)
    for report in run_blocks(label, tiling.windows(), what="sieve: label", **common):
        blocks[tiling.index(report.window)] = report
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
    for key, report in blocks.items():  # pass 1's pairs were for pass 3 only
        blocks[key] = replace(report, small=None)

    return sum(
        run_blocks(
            WriteTask(source, sink, connectivity, min_pixels),
            write_jobs(edges, outcomes),
            total=len(blocks),
            what="sieve: write",
            **common,
        )
    )
