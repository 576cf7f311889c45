"""Ingest: GeoTIFF image(s) and an optional label raster into a scene store.

The image is either one multi-band raster or several rasters whose bands are stacked in the
order given. Everything is checked before the first byte is written: files readable, grids
identical (an equivalent CRS realisation only warns), pixel types supported, band names
matching the band count. Then the scene is processed block by block -- on Ray tasks, or in
this process with ``engine="local"`` -- each block task reading its window from the sources
and writing the store chunks it alone owns, and returning partial statistics that the
driver merges. Memory per task is one block, whatever the size of the scene.

A new store is built under a temporary name beside the output and moved into place only
when complete, so a failed ingest never damages an existing store.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from w2w import storage
from w2w.classes import class_table
from w2w.config import PathStr, StageConfig
from w2w.errors import ConfigError, InputError, OutputError
from w2w.grid import Grid, Window
from w2w.runtime import run_blocks
from w2w.sources import (
    IMAGE_DTYPES,
    LABEL_DTYPES,
    RasterSource,
    inspect_source,
    read_window,
)
from w2w.stats import SceneAccumulator
from w2w.store import SceneStore, valid_pixels

log = logging.getLogger("w2w")


class IngestConfig(StageConfig):
    """Settings of ``w2w ingest``."""

    stage_name: ClassVar[str] = "ingest"

    images: list[PathStr] = Field(
        min_length=1, description="image raster(s); bands stacked in order"
    )
    output: PathStr = Field(description="scene store to create (local path or s3:// URL)")
    label: PathStr | None = Field(default=None, description="label raster (one band, integer)")
    band_names: list[str] | None = Field(default=None, description="one name per stacked band")
    nodata: list[float] | None = Field(
        default=None, description="nodata per image source (one value applies to all)"
    )
    label_nodata: int | None = Field(default=None, description="label value meaning no data")
    label_map: dict[int, int] = Field(default_factory=dict, description="label value -> class id")
    unlabelled: int = Field(default=0, ge=0, le=254, description="class id meaning 'no label'")
    classes: dict[int, str] = Field(default_factory=dict, description="class id -> name")
    reproject_labels: bool = False
    chunk: int = Field(default=512, ge=16, le=8192, description="store chunk edge (pixels)")
    block: int = Field(default=2048, ge=16, description="task block edge; a multiple of chunk")
    engine: Literal["ray", "local"] = "ray"
    overwrite: bool = False

    @field_validator("label_map")
    @classmethod
    def _map_targets_fit(cls, v: dict[int, int]) -> dict[int, int]:
        bad = {k: t for k, t in v.items() if not 0 <= t <= 254}
        if bad:
            raise ValueError(f"label_map targets must be class ids 0-254, got {bad}")
        return v

    @field_validator("classes")
    @classmethod
    def _class_ids_fit(cls, v: dict[int, str]) -> dict[int, str]:
        bad = [k for k in v if not 0 <= k <= 254]
        if bad:
            raise ValueError(f"class ids must be 0-254, got {bad}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> IngestConfig:
        if self.block % self.chunk:
            raise ValueError(f"block ({self.block}) must be a multiple of chunk ({self.chunk})")
        if self.nodata is not None and len(self.nodata) not in (1, len(self.images)):
            raise ValueError(
                f"give one nodata value, or one per image source ({len(self.images)}), "
                f"not {len(self.nodata)}"
            )
        if self.label is None and (
            self.label_map or self.reproject_labels or self.label_nodata is not None
        ):
            raise ValueError("label_map, label_nodata and reproject_labels need a label raster")
        return self


@dataclass(frozen=True)
class IngestPlan:
    """Everything a block task needs, checked on the driver; sent to every task."""

    sources: tuple[RasterSource, ...]
    label: RasterSource | None
    grid: Grid
    dtype: str
    nodata: float | None
    label_lut_keys: tuple[int, ...]
    label_lut_values: tuple[int, ...]
    label_nodata: int | None
    unlabelled: int
    reproject_labels: bool

    @property
    def band_count(self) -> int:
        """Number of stacked bands."""
        return sum(s.count for s in self.sources)


@dataclass(frozen=True)
class IngestReport:
    """What ingest wrote."""

    output: str
    grid: Grid
    band_names: tuple[str, ...]
    valid_pixels: int
    class_histogram: dict[int, int]
    warnings: tuple[str, ...]


def plan_ingest(cfg: IngestConfig) -> tuple[IngestPlan, list[str], list[str]]:
    """Check every input and build the plan; returns (plan, band names, warnings)."""
    warnings: list[str] = []
    nodatas = cfg.nodata or [None]  # type: ignore[list-item]
    if len(nodatas) == 1:
        nodatas = nodatas * len(cfg.images)
    sources = tuple(
        inspect_source(p, role="image", allowed_dtypes=IMAGE_DTYPES, nodata=nd)
        for p, nd in zip(cfg.images, nodatas, strict=True)
    )
    grid = sources[0].grid
    for src in sources[1:]:
        msg = grid.check_matches(
            src.grid,
            what=f"image {src.path}",
            fix="image bands must share one pixel grid; resample them onto one grid first",
        )
        if msg:
            warnings.append(msg)

    band_names = _band_names(cfg, sources)
    dtype = str(np.result_type(*[np.dtype(s.dtype) for s in sources]))
    nodata = next((s.nodata for s in sources if s.nodata is not None), None)
    if nodata is not None and not _representable(nodata, dtype):
        raise InputError(
            f"nodata value {nodata} cannot be stored as {dtype}; "
            "pass --nodata with a value of that type"
        )

    label = None
    if cfg.label is not None:
        label = inspect_source(
            cfg.label, role="label", allowed_dtypes=LABEL_DTYPES, nodata=cfg.label_nodata
        )
        if label.count != 1:
            raise InputError(
                f"label file {cfg.label} has {label.count} bands; give a single-band label raster"
            )
        if not cfg.reproject_labels:
            msg = grid.check_matches(
                label.grid,
                what=f"label {cfg.label}",
                fix="pass --reproject-labels to warp the labels onto the image grid "
                "(nearest neighbour), or fix the label raster",
            )
            if msg:
                warnings.append(msg)
    keys = tuple(sorted(cfg.label_map))
    plan = IngestPlan(
        sources=sources,
        label=label,
        grid=grid,
        dtype=dtype,
        nodata=nodata,
        label_lut_keys=keys,
        label_lut_values=tuple(cfg.label_map[k] for k in keys),
        label_nodata=label.nodata if label is not None and label.nodata is not None else None,  # type: ignore[arg-type]
        unlabelled=cfg.unlabelled,
        reproject_labels=label is not None
        and cfg.reproject_labels
        and not _on_grid(grid, label.grid),
    )
    return plan, band_names, warnings


def _on_grid(grid: Grid, other: Grid) -> bool:
    """Whether ``other`` can be read pixel for pixel as ``grid`` (no warp needed)."""
    return grid.same_pixels(other) and grid.crs_relation(other) != "different"


def _band_names(cfg: IngestConfig, sources: tuple[RasterSource, ...]) -> list[str]:
    n = sum(s.count for s in sources)
    if cfg.band_names is not None:
        if len(cfg.band_names) != n:
            raise ConfigError(
                f"{len(cfg.band_names)} band names given for {n} bands "
                f"({', '.join(f'{Path(s.path).name}: {s.count}' for s in sources)}); "
                "give one name per band"
            )
        if len(set(cfg.band_names)) != n:
            raise ConfigError(f"band names must be unique, got {cfg.band_names}")
        return list(cfg.band_names)
    names: list[str] = []
    for s in sources:
        for d in s.descriptions:
            if s.count == 1 and len(sources) > 1:
                names.append(d or Path(s.path).stem)
            else:
                names.append(d or f"band{len(names) + 1}")
    if len(set(names)) != len(names):
        names = [f"band{i + 1}" for i in range(n)]
    return names


def _representable(value: float, dtype: str) -> bool:
    dt = np.dtype(dtype)
    if np.issubdtype(dt, np.floating):
        return True
    info = np.iinfo(dt)
    return float(value).is_integer() and info.min <= value <= info.max


class SourceReader:
    """Reads one block of stacked image bands and mapped labels from the checked sources."""

    def __init__(self, plan: IngestPlan) -> None:
        self.plan = plan

    def __call__(self, window: Window) -> tuple[np.ndarray, np.ndarray | None]:
        plan = self.plan
        parts = []
        for src in plan.sources:
            data = read_window(src, window, role="image").astype(plan.dtype, copy=False)
            if src.nodata is not None and plan.nodata is not None and src.nodata != plan.nodata:
                src_nd = np.asarray(src.nodata).astype(data.dtype)
                data = np.where(data == src_nd, plan.nodata, data).astype(plan.dtype)
            parts.append(data)
        image = np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
        label = map_labels(plan, window) if plan.label is not None else None
        return image, label


def map_labels(plan: IngestPlan, window: Window) -> np.ndarray:
    """Read a block of labels (warped onto the image grid if asked) and map them to class ids."""
    assert plan.label is not None
    warp_nodata = plan.label_nodata if plan.label_nodata is not None else _warp_fill(plan)
    raw = read_window(
        plan.label,
        window,
        role="label",
        target=plan.grid if plan.reproject_labels else None,
        warp_nodata=warp_nodata,
    )[0].astype(np.int64)
    out = raw.copy()
    for k, v in zip(plan.label_lut_keys, plan.label_lut_values, strict=True):
        out[raw == k] = v
    missing = raw == warp_nodata if plan.reproject_labels else np.zeros(raw.shape, dtype=bool)
    if plan.label_nodata is not None:
        missing |= raw == plan.label_nodata
    out[missing] = plan.unlabelled
    bad = (out < 0) | (out > 254)
    if bad.any():
        values = sorted(set(np.unique(raw[bad]).tolist()))[:8]
        raise InputError(
            f"label file {plan.label.path} has values {values} that are not class ids 0-254; "
            "map them with --label-map (e.g. '-5=0;2,3,6=1') or set --label-nodata"
        )
    return out.astype(np.uint8)


def _warp_fill(plan: IngestPlan) -> int:
    """A value outside the label's range, used for pixels a warp leaves uncovered."""
    assert plan.label is not None
    dt = np.dtype(plan.label.dtype)
    info = np.iinfo(dt)
    return int(info.max) if plan.unlabelled != info.max else int(info.min)


@contextlib.contextmanager
def replace_store(output: str, *, overwrite: bool) -> Iterator[str]:
    """Yield a location to build a new store for ``output``, moved into place on success.

    Local stores are built under a hidden temporary name beside ``output`` and swapped in
    only when complete, so a failure never damages an existing store. On object storage
    (no atomic rename) the store is built in place after every input check has passed.
    """
    if storage.exists(output) and not overwrite:
        raise OutputError(f"output store {output} exists already; pass --overwrite to replace it")
    if storage.is_remote(output):
        yield output
        return
    storage.ensure_writable_dir(Path(output).parent)
    work = str(Path(output).with_name(f".{Path(output).name}.w2w-tmp-{uuid.uuid4().hex[:8]}"))
    try:
        yield work
    except BaseException:
        storage.remove_tree(work)
        raise
    _move_into_place(work, output)


def ingest(cfg: IngestConfig, *, progress: bool = True) -> IngestReport:
    """Run ingest end to end and report what was written; bad input raises a W2WError."""
    output = storage.normalize(cfg.output)
    if storage.exists(output) and not cfg.overwrite:
        raise OutputError(
            f"output store {cfg.output} exists already; pass --overwrite to replace it"
        )
    plan, band_names, warnings = plan_ingest(cfg)
    for w in warnings:
        log.warning(w)
    with replace_store(output, overwrite=cfg.overwrite) as work_url:
        stats = build_store(
            work_url,
            plan.grid,
            SourceReader(plan),
            band_names=band_names,
            dtype=plan.dtype,
            nodata=plan.nodata,
            with_label=plan.label is not None,
            unlabelled=cfg.unlabelled,
            class_names=cfg.classes,
            chunk=cfg.chunk,
            block=cfg.block,
            engine=cfg.engine,
            source=_provenance(cfg, plan),
            overwrite=cfg.overwrite,
            progress=progress,
            what_nodata=f"every pixel of {', '.join(cfg.images)} is nodata (nodata={plan.nodata}); "
            "check the --nodata value or the input files",
        )
    return IngestReport(
        output=output,
        grid=plan.grid,
        band_names=tuple(band_names),
        valid_pixels=stats.valid_count,
        class_histogram=stats.histogram(cfg.unlabelled) if plan.label is not None else {},
        warnings=tuple(warnings),
    )


BlockReader = Callable[[Window], tuple[np.ndarray, "np.ndarray | None"]]


class _BlockWriter:
    """One block task: read a block with ``reader``, write it, return its statistics."""

    def __init__(
        self,
        store_url: str,
        reader: BlockReader,
        dtype: str,
        nodata: float | None,
        unlabelled: int,
        band_count: int,
    ) -> None:
        self.store_url = store_url
        self.reader = reader
        self.dtype = dtype
        self.nodata = nodata
        self.unlabelled = unlabelled
        self.band_count = band_count

    def __call__(self, window: Window) -> SceneAccumulator:
        image, label = self.reader(window)
        if image.dtype.kind == "f":
            infinite = np.isinf(image)
            if infinite.any():
                band = int(np.argwhere(infinite.any(axis=(1, 2)))[0, 0])
                raise InputError(
                    f"the imagery holds {int(infinite.sum()):,} infinite values (first in band "
                    f"{band + 1}, in the block at row {window.row}, col {window.col}); a "
                    "reflectance is never infinite: set those pixels to the nodata value or to "
                    "NaN (which w2w treats as nodata) and ingest again"
                )
        valid = valid_pixels(image, self.nodata)
        store = SceneStore.open(self.store_url, mode="r+")
        store.write("image", window, image)
        if label is not None:
            store.write("label", window, label)
            label = np.where(valid, label, self.unlabelled).astype(np.uint8)
        acc = SceneAccumulator(
            band_names=[str(i) for i in range(self.band_count)], dtype=self.dtype
        )
        acc.add_block(image, valid, label, seed=window.row * 1_000_003 + window.col)
        return acc


def build_store(
    url: str,
    grid: Grid,
    reader: BlockReader,
    *,
    band_names: list[str],
    dtype: str,
    nodata: float | None,
    with_label: bool,
    unlabelled: int,
    class_names: dict[int, str],
    chunk: int,
    block: int,
    engine: Literal["ray", "local"],
    source: dict[str, Any],
    overwrite: bool,
    progress: bool,
    what_nodata: str,
) -> SceneAccumulator:
    """Create a scene store at ``url`` and fill it block by block from ``reader``.

    Each block task writes only the chunks of its own block and returns partial statistics;
    the driver merges them and records statistics, class histogram and class table. On any
    failure the partial store is removed.
    """
    store = SceneStore.create(
        url,
        grid,
        band_names=band_names,
        dtype=dtype,
        nodata=nodata,
        chunk=chunk,
        with_label=with_label,
        unlabelled=unlabelled,
        source=source,
        overwrite=overwrite,
    )
    try:
        total = SceneAccumulator(band_names=band_names, dtype=dtype)
        task = _BlockWriter(url, reader, dtype, nodata, unlabelled, len(band_names))
        for acc in run_blocks(
            task, grid.block_windows(block), engine=engine, what="ingest", progress=progress
        ):
            total.merge(acc)
        if total.valid_count == 0:
            raise InputError(what_nodata)
        histogram = total.histogram(unlabelled) if with_label else {}
        if with_label and not histogram:
            log.warning("the labels have no labelled pixel on the image's valid area")
        named = {k for k in class_names if k != unlabelled}
        classes = class_table(sorted(set(histogram) | named), class_names)
        store.mark_complete(
            stats={k: v.to_dict() for k, v in total.band_stats().items()},
            class_histogram={str(k): v for k, v in histogram.items()},
            classes=[c.to_dict() for c in classes],
            valid_pixels=total.valid_count,
        )
    except BaseException:
        storage.remove_tree(url)
        raise
    return total


def _move_into_place(work_url: str, output: str) -> None:
    """Replace ``output`` by the finished store at ``work_url`` (local paths only)."""
    backup = None
    if os.path.exists(output):
        backup = f"{output}.w2w-old-{uuid.uuid4().hex[:8]}"
        os.replace(output, backup)
    os.replace(work_url, output)
    if backup:
        shutil.rmtree(backup, ignore_errors=True)


def _provenance(cfg: IngestConfig, plan: IngestPlan) -> dict[str, Any]:
    return {
        "images": list(cfg.images),
        "label": cfg.label,
        "label_map": {str(k): v for k, v in cfg.label_map.items()},
        "reprojected_labels": plan.reproject_labels,
    }
