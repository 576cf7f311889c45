"""The scene store: imagery (band, y, x) in its source dtype and optional labels (y, x).

Written by ingest (and the synthetic generator) block by block; read by training and
prediction. ``image`` keeps all bands in one chunk so that a chip is one read; ``label`` is
uint8 class ids. The ``w2w`` attributes record band names, nodata, per-band statistics, the
class table and histogram, and ``complete: true`` once ingest finished; readers refuse an
incomplete store.

A pixel is *valid* when every band is finite and none equals nodata.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np

from w2w.core import storage
from w2w.core.classes import ClassInfo
from w2w.core.errors import InputError
from w2w.core.grid import Grid, Window
from w2w.core.stats import BandStats
from w2w.core.store.base import GeoStore, StoreKind


@dataclass(frozen=True)
class SceneInfo:
    """What a scene store says about itself (its ``w2w`` attributes)."""

    grid: Grid
    band_names: tuple[str, ...]
    dtype: str
    nodata: float | None
    chunk: int
    has_label: bool
    unlabelled: int | None = None
    classes: tuple[ClassInfo, ...] = ()
    stats: dict[str, BandStats] = field(default_factory=dict)
    class_histogram: dict[int, int] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def n_bands(self) -> int:
        """Number of image bands."""
        return len(self.band_names)


class SceneStore(GeoStore):
    """Scene store: ``image`` (band, y, x) and optional ``label`` (y, x)."""

    kind: ClassVar[StoreKind] = "scene"

    @classmethod
    def create(
        cls,
        url: str,
        grid: Grid,
        *,
        band_names: list[str],
        dtype: str,
        nodata: float | None,
        chunk: int = 512,
        with_label: bool = False,
        unlabelled: int | None = None,
        classes: list[ClassInfo] | None = None,
        source: dict[str, Any] | None = None,
        overwrite: bool = False,
    ) -> SceneStore:
        """Create an empty scene store (metadata and empty arrays) ready for block writes."""
        meta = {
            "band_names": list(band_names),
            "dtype": str(np.dtype(dtype)),
            "nodata": nodata,
            "chunk": chunk,
            "has_label": with_label,
            "unlabelled": unlabelled,
            "classes": [c.to_dict() for c in classes or []],
            "stats": {},
            "class_histogram": {},
            "source": source or {},
            "complete": False,
        }
        group = cls._create_group(url, grid, meta, overwrite=overwrite)
        store = cls(storage.normalize(url), group, writable=True)
        fill = nodata if nodata is not None else 0
        store._create_raster(
            "image",
            dtype=dtype,
            fill_value=fill,
            chunk=chunk,
            bands=len(band_names),
            attrs={"band_names": list(band_names), "nodata": nodata},
        )
        if with_label:
            lab_fill = unlabelled if unlabelled is not None else 0
            store._create_raster("label", dtype="uint8", fill_value=lab_fill, chunk=chunk)
        return store

    @property
    def info(self) -> SceneInfo:
        """The store's metadata as a typed object."""
        m = self.meta
        return SceneInfo(
            grid=self.grid,
            band_names=tuple(m["band_names"]),
            dtype=m["dtype"],
            nodata=m["nodata"],
            chunk=int(m["chunk"]),
            has_label=bool(m["has_label"]),
            unlabelled=m.get("unlabelled"),
            classes=tuple(ClassInfo.from_dict(c) for c in m.get("classes", [])),
            stats={k: BandStats(**v) for k, v in m.get("stats", {}).items()},
            class_histogram={int(k): int(v) for k, v in m.get("class_histogram", {}).items()},
            source=dict(m.get("source", {})),
        )

    def read_image(self, window: Window) -> np.ndarray:
        """(band, h, w) pixels of ``window``; outside the grid they are nodata (or 0)."""
        nodata = self.meta["nodata"]
        return self.read("image", window, nodata if nodata is not None else 0)

    def read_label(self, window: Window) -> np.ndarray:
        """(h, w) labels of ``window``; outside the grid, and where absent, the unlabelled value."""
        unl = self.meta.get("unlabelled")
        fill = unl if unl is not None else 0
        if not self.meta["has_label"]:
            raise InputError(
                f"{self.url} has no labels; ingest a label raster with `w2w ingest --label ...`"
            )
        return self.read("label", window, fill)

    def valid_mask(self, image: np.ndarray, window: Window | None = None) -> np.ndarray:
        """(h, w) bool: pixels whose every band is finite and not nodata (and inside the grid)."""
        valid = valid_pixels(image, self.meta["nodata"])
        if window is not None:
            inside = np.zeros(valid.shape, dtype=bool)
            inner = window.intersect(self.grid.full_window)
            if inner is not None:
                inside[inner.relative_to(window).slices] = True
            valid &= inside
        return valid

    def mark_complete(self, **meta: Any) -> None:
        """Record final metadata (statistics, histogram), mark the store complete, consolidate."""
        self.update_meta(**meta, complete=True)
        self.finalize()

    @classmethod
    def open(cls, url: str, *, mode: Literal["r", "r+"] = "r") -> SceneStore:
        """Open a scene store; refuses one whose ingest did not finish."""
        store = super().open(url, mode=mode)
        if mode == "r" and not store.meta.get("complete", False):
            raise InputError(
                f"scene store {url} is incomplete (its ingest did not finish); "
                "run `w2w ingest ... --overwrite` again"
            )
        return store


def valid_pixels(image: np.ndarray, nodata: float | None) -> np.ndarray:
    """(h, w) bool mask of pixels valid in every band of a (band, h, w) array."""
    if np.issubdtype(image.dtype, np.floating):
        valid = np.isfinite(image).all(axis=0)
    else:
        valid = np.ones(image.shape[-2:], dtype=bool)
    if nodata is not None and not (isinstance(nodata, float) and math.isnan(nodata)):
        valid &= (image != np.asarray(nodata).astype(image.dtype)).all(axis=0)
    return valid
