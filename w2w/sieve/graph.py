"""A block as a graph of patches, and GDAL's largest-neighbour rule over it.

Used by passes 3 and 5: the patches of a block (and of the one-pixel ring of global patch
ids around it) become nodes, either from the block read and labelled again
(:func:`build_graph`) or, in pass 3, from the pairs pass 1 listed (:func:`graph_from_pairs`);
:func:`largest_neighbours` reproduces GDAL's choice of the largest neighbour with its scan
order and tie rule; :func:`chain_ends` follows chains of largest neighbours by pointer
doubling.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from w2w.core.classes import CLASS_NODATA
from w2w.core.errors import InputError
from w2w.core.patches import label_patches
from w2w.sieve.pairs import Border, Pairs, label_pairs, ring_pairs, scan_pairs, small_int
from w2w.sieve.patches import SmallPatchPairs, edge_labels


@dataclass(frozen=True)
class PatchNodes:
    """The patches a block sees, as nodes: those that touch a block edge first (nodes
    ``0..len(gids)-1``, the global ids ``gids`` sorted, ring patches included), then the
    block's inner patches."""

    gid: np.ndarray  # per node: global id, -1 for inner patches
    size: np.ndarray  # per node: true size
    klass: np.ndarray  # per node: class

    @property
    def is_edge(self) -> np.ndarray:
        """Per node: whether it is a global (edge) patch."""
        return self.gid >= 0


@dataclass(frozen=True)
class BlockGraph(PatchNodes):
    """The patches of a block read and labelled again: ``labels`` per pixel and the node of
    each label (``label_node``, -1 for nodata's label 0). Global patches of the ring that do
    not reach into the block have class nodata."""

    labels: np.ndarray
    label_node: np.ndarray

    def pairs(self, connectivity: int, ring: Ring | None = None) -> list[Pairs]:
        """All the block's pairs of touching pixels of different nodes, in nodes, with
        those across its top, left and right seams where ``ring`` is given."""
        h, w = self.labels.shape
        image = np.full((h + 1, w + 2), -1, dtype=self.label_node.dtype)
        image[1:, 1:-1] = self.label_node[self.labels]
        if ring is not None:
            gids = self.gid[self.is_edge]
            image[0, :] = _gid_nodes(ring.top, gids)
            image[1:, 0] = _gid_nodes(ring.left, gids)
            image[1:, -1] = _gid_nodes(ring.right, gids)
        return list(scan_pairs(image, connectivity))

    def pairs_of(self, wanted: np.ndarray, connectivity: int) -> list[Pairs]:
        """The block's pairs inside it, in nodes, with a ``wanted`` node on one side."""
        near = np.append(wanted, False)[self.label_node]  # by label; nodata's -1: not wanted
        a, b, key = label_pairs(self.labels, connectivity, near)
        return [(self.label_node[a], self.label_node[b], key)]


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
    label_node = np.full(n + 1, -1, dtype=small_int(g + n))
    label_node[edge] = np.searchsorted(gids, edge_gids)
    label_node[inner_labels] = g + np.arange(len(inner_labels))
    local_sizes = np.bincount(labels.ravel(), minlength=n + 1)
    size = np.concatenate([gid_sizes, local_sizes[inner_labels]]).astype(np.int64)
    klass = np.full(g + len(inner_labels), CLASS_NODATA, dtype=np.uint8)
    klass[label_node[1:]] = classes[1:]
    gid = np.concatenate([gids, np.full(len(inner_labels), -1, dtype=np.int64)])
    return BlockGraph(gid=gid, size=size, klass=klass, labels=labels, label_node=label_node)


def graph_from_pairs(
    small: SmallPatchPairs,
    *,
    edge: np.ndarray,
    edge_gids: np.ndarray,
    gids: np.ndarray,
    gid_sizes: np.ndarray,
    gid_classes: np.ndarray,
    border: Border,
    ring: Ring,
    connectivity: int,
) -> tuple[PatchNodes, list[Pairs]]:
    """Pass 3's graph of a block without reading it: the pairs pass 1 listed inside the block
    (those of the patches a small edge patch's chain can reach) and the pairs across its
    seams, over the global patches it sees and the inner patches those pairs name."""
    g = len(gids)
    local = np.concatenate([edge, small.inner])
    node_of = np.concatenate([np.searchsorted(gids, edge_gids), g + np.arange(len(small.inner))])
    order = np.argsort(local)
    local, node_of = local[order], node_of[order]

    def nodes(labels: np.ndarray) -> np.ndarray:
        return node_of[np.searchsorted(local, labels)]

    pairs = [(nodes(small.a), nodes(small.b), small.key)]
    for a, b, key in ring_pairs(border, ring.top, ring.left, ring.right, connectivity):
        pairs.append((np.searchsorted(gids, a), np.searchsorted(gids, b), key))
    inner_gid = np.full(len(small.inner), -1, dtype=np.int64)
    table = PatchNodes(
        gid=np.concatenate([gids, inner_gid]),
        size=np.concatenate([gid_sizes, small.inner_sizes]).astype(np.int64),
        klass=np.concatenate([gid_classes, small.inner_classes]).astype(np.uint8),
    )
    return table, pairs


def _gid_nodes(line: np.ndarray, gids: np.ndarray) -> np.ndarray:
    """Global ids -> node numbers (positions in the sorted ``gids``); -1 stays -1."""
    if len(gids) == 0:
        return np.full(len(line), -1, dtype=np.int64)
    nodes = np.minimum(np.searchsorted(gids, line), len(gids) - 1)
    return np.where(line >= 0, nodes, -1)


def largest_neighbours(
    pairs: Iterable[Pairs], size: np.ndarray, wanted: np.ndarray, key_type: type[np.signedinteger]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GDAL's largest neighbour of every ``wanted`` node that has a neighbour in ``pairs``.

    ``pairs`` are a block's pairs of touching pixels of different nodes with their scan keys
    (:mod:`w2w.sieve.pairs`); returns ``(node, neighbour, scan key)`` where, of neighbours of
    equal size, the one with the smallest key is the one GDAL keeps.
    """
    best = _Best(len(size), key_type)
    for a, b, key in pairs:
        for node, neighbour in ((a, b), (b, a)):
            keep = wanted[node]
            # Fold each direction into the best so far: memory stays at one direction's pairs.
            best.fold(node[keep], neighbour[keep], key[keep], size)
    found = np.flatnonzero(best.neighbour >= 0)
    return found, best.neighbour[found], best.key[found]


class _Best:
    """Per node, the neighbour GDAL keeps so far: the largest, and of equals the first
    compared (smallest scan key). Kept in arrays indexed by node, so that folding in a
    direction's pairs costs a few passes over them (no sort)."""

    def __init__(self, n: int, key_type: type[np.signedinteger]) -> None:
        self.size = np.full(n, -1, dtype=np.int64)
        self.none = np.iinfo(key_type).max
        self.key = np.full(n, self.none, dtype=key_type)
        self.neighbour = np.full(n, -1, dtype=np.int64)

    def fold(
        self, node: np.ndarray, neighbour: np.ndarray, key: np.ndarray, size: np.ndarray
    ) -> None:
        """Take in pairs (node, neighbour, scan key); a node's keys are all distinct."""
        their = size[neighbour]
        before = self.size[node]
        np.maximum.at(self.size, node, their)
        now = self.size[node]
        self.key[node[now > before]] = self.none  # a larger neighbour: earlier keys are out
        tied = their == now
        np.minimum.at(self.key, node[tied], key[tied])
        won = tied & (key == self.key[node])
        self.neighbour[node[won]] = neighbour[won]


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
