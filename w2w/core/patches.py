"""Patches of a class raster: connected pixels of one class, labelled block by block.

Shared by the sieve (patch sizes, 4- or 8-connected) and the vector export (polygons,
4-connected, as GDAL's polygonize).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from w2w.core.classes import CLASS_NODATA


def label_patches(cls: np.ndarray, connectivity: int) -> tuple[np.ndarray, np.ndarray]:
    """The patches of a class raster: ``(labels, classes)``.

    ``labels`` (int32) is 0 on nodata and 1..n on the patches; ``classes[k]`` is the class of
    label ``k`` (``classes[0]`` is nodata). Labels depend only on the pixels, so every pass
    labels a block the same way.
    """
    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    labels = np.zeros(cls.shape, dtype=np.int32)
    classes = [np.full(1, CLASS_NODATA, dtype=np.uint8)]
    # Each class's patches are numbered 1..n on its own pixels (0 elsewhere), summed, and
    # moved past the classes before them in one pass at the end (nodata stays 0).
    offset = np.zeros(max(256, int(cls.max()) + 1), dtype=np.int32)
    count = 0
    present = np.flatnonzero(np.bincount(cls.ravel(), minlength=256))
    for value in present[present != CLASS_NODATA]:
        found, n = ndimage.label(cls == value, structure=structure, output=np.int32)
        labels += found
        offset[value] = count
        classes.append(np.full(n, value, dtype=np.uint8))
        count += n
    labels += offset[cls]
    return labels, np.concatenate(classes)
