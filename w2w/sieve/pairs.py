"""Touching pixel pairs in GDAL's scan order: which patches a block compares, and when.

GDAL's sieve visits pixels row by row and compares each with the pixel above, then
(8-connectivity only) above-left and above-right, then left. A pair of touching pixels is
owned by the block that holds its later pixel, and its *scan key* ``pixel * 4 + code``
(pixel row-major in that block) orders the comparisons: of neighbours of equal size, the
one with the smallest key is the one GDAL keeps. Passes 1 and 5 list the pairs inside a
block around the patches they ask about (:func:`label_pairs`); pass 3 adds those across the
block's top, left and right seams (:func:`ring_pairs`), or, where it reads a block again,
takes all of them from its padded image (:func:`scan_pairs`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

#: One direction's pairs: (the later pixel's node, the other pixel's node, scan key).
Pairs = tuple[np.ndarray, np.ndarray, np.ndarray]

#: GDAL's comparisons for each pixel, in its order: (code, row offset, column offset).
UP, UP_LEFT, UP_RIGHT, LEFT = (0, -1, 0), (1, -1, -1), (2, -1, 1), (3, 0, -1)


def steps(connectivity: int) -> list[tuple[int, int, int]]:
    """GDAL's comparisons for one connectivity, in its order."""
    return [UP, UP_LEFT, UP_RIGHT, LEFT] if connectivity == 8 else [UP, LEFT]


def small_int(largest: int) -> type[np.signedinteger]:
    """int32 where it holds ``largest`` (half the memory of int64 in block tasks)."""
    return np.int32 if largest < 2**31 else np.int64


def key_type(height: int, width: int) -> type[np.signedinteger]:
    """The integer type of a block's scan keys."""
    return small_int(4 * height * width)


def scan_pairs(image: np.ndarray, connectivity: int, nodata: int = -1) -> Iterator[Pairs]:
    """Per comparison direction, the pairs of touching pixels of different nodes whose later
    pixel lies in the block.

    ``image`` holds a node per pixel of the block with a one-pixel ring above, left and
    right of it (row 0 = the row above; columns 0 and -1 = left and right); ``nodata``
    marks pixels that belong to no patch, in the block or the ring.
    """
    h, w = image.shape[0] - 1, image.shape[1] - 2
    keys = key_type(h, w)
    current = image[1:, 1:-1]
    for code, dr, dc in steps(connectivity):
        other = image[1 + dr : 1 + dr + h, 1 + dc : 1 + dc + w]
        touch = (current != other) & (current != nodata) & (other != nodata)
        key = (np.flatnonzero(touch) * 4 + code).astype(keys)
        yield current[touch], other[touch], key


@dataclass(frozen=True)
class Border:
    """Global ids (-1 on nodata) of a block's own first row and first and last columns:
    the block's side of the pairs across its top, left and right seams."""

    top: np.ndarray
    left: np.ndarray
    right: np.ndarray


def ring_pairs(
    border: Border, top: np.ndarray, left: np.ndarray, right: np.ndarray, connectivity: int
) -> Iterator[Pairs]:
    """The pairs a block owns across its seams, in global ids, with their scan keys.

    ``top`` is the row above the block, both corners included (width + 2); ``left`` and
    ``right`` the columns beside it (-1: nodata or beyond the raster). The same pairs as
    :func:`scan_pairs` finds on the padded image where the other pixel lies in the ring.
    """
    h, w = len(border.left), len(border.top)
    keys = key_type(h, w)
    cols = np.arange(w, dtype=np.int64)
    rows = np.arange(1, h, dtype=np.int64)
    for code, _, dc in steps(connectivity):
        if code == LEFT[0]:
            parts = [(border.left, left, np.arange(h, dtype=np.int64) * w)]
        else:
            parts = [(border.top, top[1 + dc : 1 + dc + w], cols)]  # the row above
            if dc == -1:  # above-left of the first column, below the first row
                parts.append((border.left[1:], left[:-1], rows * w))
            elif dc == 1:  # above-right of the last column
                parts.append((border.right[1:], right[:-1], rows * w + w - 1))
        for a, b, pixel in parts:
            touch = (a != b) & (a >= 0) & (b >= 0)
            yield a[touch], b[touch], (pixel[touch] * 4 + code).astype(keys)


def label_pairs(labels: np.ndarray, connectivity: int, near: np.ndarray) -> Pairs:
    """The pairs of touching pixels inside a block, in labels (0: nodata), that have a patch
    flagged in ``near`` (indexed by label) on at least one side.

    Looks only around the flagged patches' pixels where they are few (small patches in a
    block of land cover), and scans the whole block where they are many (speckle).
    """
    h, w = labels.shape
    flat = labels.ravel()
    flagged = np.take(near, flat)  # faster than near[flat] on a block
    pos = np.flatnonzero(flagged)
    keys = key_type(h, w)
    if 8 * len(pos) > flat.size:
        image = np.zeros((h + 1, w + 2), dtype=labels.dtype)  # the ring: no patch
        image[1:, 1:-1] = labels
        found = [
            (a[f], b[f], key[f])
            for a, b, key in scan_pairs(image, connectivity, nodata=0)
            for f in [near[a] | near[b]]
        ]
    else:
        row, col = np.divmod(pos, w)
        found = []
        for code, dr, dc in steps(connectivity):
            # The flagged pixel is the later of the pair, then the earlier one (where the
            # later is not flagged too, or the pair would come twice).
            first = pos[(row + dr >= 0) & (col + dc >= 0) & (col + dc < w)]
            second = pos[(row - dr < h) & (col - dc >= 0) & (col - dc < w)] - dr * w - dc
            second = second[~flagged[second]]
            later = np.concatenate([first, second])
            a, b = flat[later], flat[later + dr * w + dc]
            touch = (a != b) & (a != 0) & (b != 0)
            found.append((a[touch], b[touch], (later[touch] * 4 + code).astype(keys)))
    first_nodes, second_nodes, found_keys = (np.concatenate(p) for p in zip(*found))
    return first_nodes, second_nodes, found_keys
