"""Fewer labels, by region: the scenes of the label-efficiency curves.

A state with few labels has them in a few places (field campaigns visit areas, not random
pixels), so the curves keep a share of the training split's labels by region: the grid is cut
in squares of ``REGION`` px, the squares that hold training labels are drawn in a seeded
order, and whole squares are kept until the share is reached. Test labels are never touched:
every point of a curve is scored on the same test pixels. The reduced labels are written as a
GeoTIFF on the scene's grid and ingested with the scene's own images, so each point of the
curve is an ordinary scene store that ``w2w train`` and ``w2w evaluate`` (and its per-pixel
baseline, fitted on the training split of that store) read as they would any other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Edge of the squares labels are kept or dropped by, in pixels.
REGION = 16


@dataclass(frozen=True)
class Reduced:
    """A scene store with a share of its training labels."""

    store: str
    share: float
    #: Labelled training pixels kept, and all there were.
    kept: int
    total: int


def keep_by_region(
    labelled: np.ndarray, train: np.ndarray, share: float, seed: int, region: int = REGION
) -> np.ndarray:
    """(h, w) bool: the training labels kept -- whole ``region`` squares, drawn in a seeded
    order, until ``share`` of the labelled training pixels is reached (at least one square)."""
    h, w = labelled.shape
    target = labelled & train
    if share >= 1:
        return target
    rows, cols = -(-h // region), -(-w // region)
    counts = np.zeros((rows, cols), dtype=np.int64)
    ii, jj = np.nonzero(target)
    np.add.at(counts, (ii // region, jj // region), 1)
    squares = np.flatnonzero(counts.ravel())
    order = np.random.default_rng(seed).permutation(squares)
    need = share * int(target.sum())
    taken = np.cumsum(counts.ravel()[order])
    n = int(np.searchsorted(taken, need)) + 1
    chosen = np.zeros(rows * cols, dtype=bool)
    chosen[order[:n]] = True
    grid = chosen.reshape(rows, cols)
    mask = np.repeat(np.repeat(grid, region, axis=0), region, axis=1)[:h, :w]
    return target & mask


def reduced_store(
    store_url: str,
    images: list[str],
    classes: dict[int, str],
    train: np.ndarray,
    share: float,
    seed: int,
    workdir: Path,
    name: str,
) -> Reduced:
    """A new scene store with the scene's images and only ``share`` of its training labels
    (by region, :func:`keep_by_region`); test labels unchanged. Its grid is checked to equal
    the source store's."""
    import rasterio

    from w2w.core.store import SceneStore
    from w2w.ingest import IngestConfig, ingest

    src = SceneStore.open(store_url)
    full = src.grid.full_window
    label = src.read_label(full)
    unlabelled = src.meta.get("unlabelled")
    fill = 0 if unlabelled is None else int(unlabelled)
    labelled = label != fill
    kept = keep_by_region(labelled, train, share, seed)
    reduced = np.where(kept | ~train, label, fill).astype(label.dtype)
    tif = workdir / f"{name}-labels.tif"
    with rasterio.open(
        tif,
        "w",
        driver="GTiff",
        height=src.grid.height,
        width=src.grid.width,
        count=1,
        dtype=reduced.dtype,
        crs=src.grid.crs,
        transform=src.grid.transform,
        nodata=fill,
    ) as dst:
        dst.write(reduced, 1)
    out = workdir / f"{name}.zarr"
    ingest(
        IngestConfig(
            images=images,
            label=str(tif),
            output=str(out),
            classes=classes,
            chunk=128,
            block=256,
            engine="local",
            overwrite=True,
        ),
        progress=False,
    )
    made = SceneStore.open(str(out))
    if made.grid != src.grid:
        raise RuntimeError(f"{out}: grid {made.grid.describe()} differs from {src.grid.describe()}")
    return Reduced(str(out), share, int(kept.sum()), int((labelled & train).sum()))
