"""A block as a graph of patches, and GDAL's largest-neighbour rule over it.

Used by passes 3 and 5: the patches of a block (and of the one-pixel ring of global patch
ids around it) become nodes; :func:`largest_neighbours` reproduces GDAL's choice of the
largest neighbour with its scan order and tie rule; :func:`chain_ends` follows chains of
largest neighbours by pointer doubling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from w2w.core.classes import CLASS_NODATA
from w2w.core.errors import InputError
from w2w.core.patches import label_patches
from w2w.sieve.patches import edge_labels


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
    best = _Best(len(size), key_type, image.dtype)
    for code, dr, dc in steps:
        other = image[1 + dr : 1 + dr + h, 1 + dc : 1 + dc + w]
        touch = (current != other) & (current >= 0) & (other >= 0)
        key = (np.flatnonzero(touch) * 4 + code).astype(key_type)
        a, b = current[touch], other[touch]
        del touch
        for node, neighbour in ((a, b), (b, a)):
            keep = wanted[node]
            # Fold each direction into the best so far: memory stays at one direction's pairs.
            best.fold(node[keep], neighbour[keep], key[keep], size)
    found = np.flatnonzero(best.neighbour >= 0)
    return found.astype(image.dtype), best.neighbour[found], best.key[found]


class _Best:
    """Per node, the neighbour GDAL keeps so far: the largest, and of equals the first
    compared (smallest scan key). Kept in arrays indexed by node, so that folding in a
    direction's pairs costs a few passes over them (no sort)."""

    def __init__(self, n: int, key_type: type[np.signedinteger], node_type: np.dtype) -> None:
        self.size = np.full(n, -1, dtype=np.int64)
        self.none = np.iinfo(key_type).max
        self.key = np.full(n, self.none, dtype=key_type)
        self.neighbour = np.full(n, -1, dtype=node_type)

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
