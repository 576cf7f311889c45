"""Training chips from a scene store: the chip index, filters, class balance, Ray Data reads.

1. :func:`chip_index` scans the scene once (block tasks on Ray) and counts, for every chip of
   the global chip grid, its valid pixels and its labelled pixels per class.
2. :func:`select_chips` applies the spatial split, the filters (valid fraction, labelled
   pixels -- a chip with a single labelled pixel is kept, so sparse labels train) and, for
   training, repeat-factor sampling that oversamples chips holding rare classes.
3. :func:`chip_dataset` is a Ray Data dataset of chip window specs whose ``map_batches``
   reads each chip (padded at the scene's edges), normalises it with the stored statistics
   and maps label ids to class indices (unlabelled and invalid pixels -> ``IGNORE``).

Augmentation happens in the training loop on the tensors (seeded, on the training device);
validation chips are never augmented.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, model_validator

from w2w.core.classes import IGNORE
from w2w.core.config import StageConfig
from w2w.core.errors import InputError
from w2w.core.grid import ChipGrid, Window
from w2w.core.runtime import Engine, run_blocks
from w2w.core.split import SPLIT_CODES, SplitName, SplitPlan
from w2w.core.store import SceneStore
from w2w.model.normalization import Normalizer


class ChipConfig(StageConfig):
    """Which chips to cut and keep."""

    stage_name: ClassVar[str] = "chips"

    size: int = Field(default=256, ge=16, le=4096, description="chip edge in pixels")
    stride: int | None = Field(default=None, ge=1, description="chip step; default = size")
    min_valid_fraction: float = Field(
        default=0.25, ge=0, le=1, description="share of valid pixels a chip needs"
    )
    min_labelled_pixels: int = Field(default=1, ge=1, description="labelled pixels a chip needs")
    min_labelled_fraction: float = Field(
        default=0.0, ge=0, le=1, description="share of labelled pixels a chip needs"
    )
    balance: bool = Field(default=True, description="oversample chips holding rare classes")
    balance_threshold: float = Field(
        default=0.3, gt=0, le=1, description="classes in fewer than this share of chips are rare"
    )
    max_repeat: int = Field(
        default=6, ge=1, le=100, description="most copies of one chip when balancing"
    )

    @model_validator(mode="after")
    def _stride_fits(self) -> ChipConfig:
        if self.stride is not None and self.stride > self.size:
            raise ValueError(
                f"stride {self.stride} exceeds chip size {self.size}: pixels would be skipped"
            )
        return self

    @property
    def step(self) -> int:
        """The stride in use."""
        return self.stride or self.size


@dataclass(frozen=True)
class ChipIndex:
    """Per-chip counts over the global chip grid, row-major (chip row, chip col)."""

    chip_size: int
    stride: int
    shape: tuple[int, int]  # chips along rows, cols
    valid: np.ndarray  # (rows, cols) valid pixels (inside the scene)
    class_counts: np.ndarray  # (rows, cols, K) labelled pixels per class index

    @property
    def labelled(self) -> np.ndarray:
        """(rows, cols) labelled pixels per chip."""
        return self.class_counts.sum(axis=-1)


class _IndexTask:
    """Counts valid and labelled pixels of the chips whose origins lie in one group."""

    def __init__(self, store_url: str, chips: ChipGrid, lut: np.ndarray, n_classes: int) -> None:
        self.store_url, self.chips = store_url, chips
        self.lut, self.n_classes = lut, n_classes

    def __call__(self, group: tuple[int, int, int, int]) -> tuple[int, int, np.ndarray, np.ndarray]:
        i0, j0, i1, j1 = group
        s, c = self.chips.stride, self.chips.size
        window = self.chips.span(i0, j0, i1, j1)
        store = SceneStore.open(self.store_url)
        valid_counts = np.zeros((i1 - i0, j1 - j0), dtype=np.int64)
        counts = np.zeros((i1 - i0, j1 - j0, self.n_classes), dtype=np.int64)
        if store.valid_pixels_in(window) == 0:  # outside the state: nothing to read
            return i0, j0, valid_counts, counts
        image = store.read_image(window)
        valid = store.valid_mask(image, window)
        del image
        with_labels = self.n_classes > 0 and store.meta["has_label"]
        classes = self.lut[store.read_label(window)] if with_labels else None
        for a in range(i1 - i0):
            for b in range(j1 - j0):
                sl = (slice(a * s, a * s + c), slice(b * s, b * s + c))
                v = valid[sl]
                valid_counts[a, b] = int(v.sum())
                if classes is not None:
                    lab = classes[sl][v]
                    counts[a, b] = np.bincount(lab[lab != IGNORE], minlength=self.n_classes)[
                        : self.n_classes
                    ]
        return i0, j0, valid_counts, counts


def chip_index(
    store: SceneStore,
    size: int,
    stride: int,
    lut: np.ndarray,
    n_classes: int,
    *,
    engine: Engine = "ray",
    group: int = 8,
    progress: bool = True,
) -> ChipIndex:
    """Scan the scene once and count valid and labelled pixels of every chip (valid pixels
    only with ``n_classes=0``: the labels are not read)."""
    chips = store.grid.chips(size, stride)
    rows, cols = chips.shape
    groups = [
        (i, j, min(i + group, rows), min(j + group, cols))
        for i in range(0, rows, group)
        for j in range(0, cols, group)
    ]
    valid = np.zeros((rows, cols), dtype=np.int64)
    counts = np.zeros((rows, cols, n_classes), dtype=np.int64)
    task = _IndexTask(store.url, chips, lut, n_classes)
    for i0, j0, v, cnt in run_blocks(
        task, groups, engine=engine, what="index chips", progress=progress
    ):
        valid[i0 : i0 + v.shape[0], j0 : j0 + v.shape[1]] = v
        counts[i0 : i0 + v.shape[0], j0 : j0 + v.shape[1]] = cnt
    return ChipIndex(size, stride, (rows, cols), valid, counts)


@dataclass(frozen=True)
class ChipSelection:
    """The chips of one split after filters, with their repeat counts (training only)."""

    windows: tuple[Window, ...]
    repeats: tuple[int, ...]

    @property
    def rows(self) -> list[dict[str, int]]:
        """Dataset rows (one per sample, repeated chips repeated)."""
        out = []
        for w, r in zip(self.windows, self.repeats, strict=True):
            out.extend([{"row": w.row, "col": w.col}] * r)
        return out

    def __len__(self) -> int:
        return len(self.windows)


def select_chips(
    index: ChipIndex,
    plan: SplitPlan,
    split: SplitName,
    cfg: ChipConfig,
    *,
    seed: int = 0,
    balance: bool = False,
) -> ChipSelection:
    """Chips of ``split`` that pass the filters; with ``balance``, rare classes repeated."""
    codes = plan.chip_codes()
    area = cfg.size * cfg.size
    labelled = index.labelled
    keep = (
        (codes == SPLIT_CODES[split])
        & (index.valid >= cfg.min_valid_fraction * area)
        & (labelled >= cfg.min_labelled_pixels)
        & (labelled >= cfg.min_labelled_fraction * area)
    )
    rows, cols = np.nonzero(keep)
    windows = tuple(
        Window(int(i) * index.stride, int(j) * index.stride, cfg.size, cfg.size)
        for i, j in zip(rows, cols, strict=True)
    )
    repeats = np.ones(len(windows), dtype=np.int64)
    if balance and len(windows):
        present = index.class_counts[rows, cols] > 0  # (n, K)
        freq = present.mean(axis=0)  # share of chips holding each class
        with np.errstate(divide="ignore"):
            factor = np.where(freq > 0, np.sqrt(cfg.balance_threshold / freq), 1.0)
        factor = np.maximum(factor, 1.0)
        chip_factor = np.where(present, factor[None, :], 1.0).max(axis=1)
        # Deterministic stochastic rounding, so the expected repeat equals the factor.
        u = np.random.default_rng(seed).random(len(windows))
        repeats = np.floor(chip_factor + u).astype(np.int64)
        repeats = np.clip(repeats, 1, cfg.max_repeat)
    return ChipSelection(windows, tuple(int(r) for r in repeats))


def class_weights(
    index: ChipIndex, selection: ChipSelection, n_classes: int, *, power: float = 0.5
) -> list[float]:
    """Loss weights per class from the labelled pixels of the selected chips: inverse
    frequency to ``power`` (0.5: square root), normalised to mean 1, clipped to [0.1, 10]."""
    counts = np.zeros(n_classes, dtype=np.float64)
    s = index.stride
    for w, r in zip(selection.windows, selection.repeats, strict=True):
        counts += r * index.class_counts[w.row // s, w.col // s]
    present = counts > 0
    if not present.any():
        return [1.0] * n_classes
    freq = counts / counts.sum()
    weights = np.where(present, (1.0 / np.where(present, freq, 1.0)) ** power, 0.0)
    weights = weights / weights[present].mean()
    return [float(v) for v in np.clip(weights, 0.1, 10.0) * present + (~present) * 1.0]


# -- reading chips ----------------------------------------------------------------------------

#: Bytes of chips one read task returns when chips are read in chunk order: enough chips to
#: cover a store chunk's worth of chip origins, few enough to keep a task's output small.
READ_GROUP_BYTES = 32 * 2**20


def chip_bytes(bands: int, size: int) -> int:
    """Bytes of one chip as read: float32 bands and a uint8 label or valid mask."""
    return (bands * 4 + 1) * size**2


def chips_per_read(reader: ChipReader | ImageChipReader, at_least: int) -> int:
    """How many chips one read takes (at least ``at_least``): :data:`READ_GROUP_BYTES` of
    them, so that the chips of a chunk come from one read of it."""
    bands = len(reader.normalizer.get("offset", ())) or 1
    return max(at_least, READ_GROUP_BYTES // chip_bytes(bands, reader.chip_size))


def by_chunk(windows: list[Window], chunk: int) -> list[int]:
    """Indices of ``windows`` ordered by the store chunk their origin lies in (chunk row,
    chunk col), then by origin: chips that share chunks come together."""
    return sorted(
        range(len(windows)),
        key=lambda i: (
            windows[i].row // chunk,
            windows[i].col // chunk,
            windows[i].row,
            windows[i].col,
        ),
    )


def _chunk_groups(windows: list[Window], chunk: int) -> list[list[int]]:
    """Indices of ``windows`` grouped by the store chunk their origin lies in."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, w in enumerate(windows):
        groups.setdefault((w.row // chunk, w.col // chunk), []).append(i)
    return list(groups.values())


def _union(windows: list[Window]) -> Window:
    r0, c0 = min(w.row for w in windows), min(w.col for w in windows)
    r1, c1 = max(w.row_stop for w in windows), max(w.col_stop for w in windows)
    return Window(r0, c0, r1 - r0, c1 - c0)


def read_chips(
    store: SceneStore,
    windows: list[Window],
    norm: Normalizer,
    *,
    chunk: int,
    lut: np.ndarray | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray] | None]:
    """Chips of ``windows``, in their order: normalised float32 images (0 where invalid),
    valid masks and, with ``lut``, class-index labels (IGNORE where unlabelled or invalid).

    Chips whose origins lie in the same store chunk are cut from one read of the window
    they span together, so a chunk is fetched and decoded once per group rather than once per
    chip (a 64 px chip lies in a 512 px chunk: reading it alone decodes 64 times its pixels).
    Normalisation and the label map work pixel by pixel, so a chip cut from a group's read
    equals the chip read alone.
    """
    images: list[np.ndarray] = [np.empty(0)] * len(windows)
    valids: list[np.ndarray] = [np.empty(0)] * len(windows)
    labels: list[np.ndarray] | None = [np.empty(0)] * len(windows) if lut is not None else None
    for group in _chunk_groups(windows, chunk):
        span = _union([windows[i] for i in group])
        raw = store.read_image(span)
        valid = store.valid_mask(raw, span)
        image = norm(raw, valid)
        del raw
        classes = None
        if lut is not None:
            classes = lut[store.read_label(span)]
            classes[~valid] = IGNORE
        for i in group:
            sl = windows[i].relative_to(span).slices
            images[i] = image[(slice(None), *sl)].copy()
            valids[i] = valid[sl].copy()
            if labels is not None and classes is not None:
                labels[i] = classes[sl].copy()
    return images, valids, labels


@dataclass(frozen=True)
class ChipReader:
    """Reads chips from a scene store: normalised float32 images and class-index labels."""

    store_url: str
    chip_size: int
    normalizer: dict[str, Any]
    lut: tuple[int, ...]
    chunk: int = 512  # the store's chunk edge: chips are read in groups by chunk

    def read(
        self, windows: list[Window], store: SceneStore | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(N, bands, c, c) float32 images and (N, c, c) uint8 labels (IGNORE where unusable),
        in the order of ``windows``."""
        store = store or SceneStore.open(self.store_url)
        norm = Normalizer.from_dict(self.normalizer)
        lut = np.asarray(self.lut, dtype=np.uint8)
        images, _, labels = read_chips(store, windows, norm, chunk=self.chunk, lut=lut)
        assert labels is not None
        return np.stack(images), np.stack(labels)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Ray Data ``map_batches`` function: window specs in, chip arrays out."""
        images, labels = self.read(_windows(batch, self.chip_size))
        return {"image": images, "label": labels}


@dataclass(frozen=True)
class ImageChipReader:
    """Reads chips without labels (for self-supervised pretraining): normalised float32
    images and their valid masks."""

    store_url: str
    chip_size: int
    normalizer: dict[str, Any]
    chunk: int = 512  # the store's chunk edge: chips are read in groups by chunk

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Ray Data ``map_batches`` function: window specs in, ``image`` and ``valid`` out."""
        store = SceneStore.open(self.store_url)
        norm = Normalizer.from_dict(self.normalizer)
        images, valids, _ = read_chips(
            store, _windows(batch, self.chip_size), norm, chunk=self.chunk
        )
        return {"image": np.stack(images), "valid": np.stack(valids).astype(np.uint8)}


def _windows(batch: dict[str, np.ndarray], size: int) -> list[Window]:
    return [
        Window(int(r), int(c), size, size) for r, c in zip(batch["row"], batch["col"], strict=True)
    ]


def chip_dataset(
    rows: list[dict[str, int]],
    reader: ChipReader | ImageChipReader,
    *,
    batch_size: int = 16,
    chunk_order: bool = False,
) -> Any:
    """A Ray Data dataset of chips: window specs read, normalised and labelled in parallel,
    in the order of ``rows``.

    Read in the order of ``rows`` (a shuffled order), each read task's chips lie in chunks of
    their own, and every chip decodes the chunks it lies in. With ``chunk_order`` -- for a
    dataset that is cached after one pass -- the chips are read grouped by store chunk, each
    task cutting a chunk's chips from one read, and then sorted back into the order of
    ``rows`` (an all-to-all exchange through the object store, partitioned at fixed ranks so
    the blocks, and with them the batches, are the same at every run). The model sees the same
    sequence of chips either way; only the reads differ.
    """
    import ray.data

    if not rows:
        raise InputError("no chips to read: the selection is empty")
    n_blocks = max(1, min(len(rows) // batch_size, 64))
    ds: Any
    if not chunk_order:
        ds = ray.data.from_items(rows, override_num_blocks=n_blocks)
        return ds.map_batches(
            _read_batch, fn_kwargs={"reader": reader}, batch_size=batch_size, batch_format="numpy"
        )
    windows = [Window(r["row"], r["col"], reader.chip_size, reader.chip_size) for r in rows]
    ranked = [{**rows[i], "rank": i} for i in by_chunk(windows, reader.chunk)]
    group = chips_per_read(reader, batch_size)
    ds = ray.data.from_items(ranked, override_num_blocks=max(1, min(len(rows) // group, 64)))
    ds = ds.map_batches(
        _read_batch, fn_kwargs={"reader": reader}, batch_size=group, batch_format="numpy"
    )
    # Boundaries given (none given would be sampled, at random): a single block's is past the end.
    bounds: list[int | float] = [round(k * len(rows) / n_blocks) for k in range(1, n_blocks)]
    bounds = bounds or [len(rows)]
    return ds.sort("rank", boundaries=bounds).drop_columns(["rank"])


def _read_batch(
    batch: dict[str, np.ndarray], reader: ChipReader | ImageChipReader
) -> dict[str, np.ndarray]:
    out = reader(batch)
    if "rank" in batch:
        out["rank"] = batch["rank"]
    return out


def describe_selection(
    index: ChipIndex, plan: SplitPlan, selections: dict[str, ChipSelection]
) -> dict[str, Any]:
    """Counts for the log and the run report."""
    out: dict[str, Any] = {"chip_grid": list(index.shape), "split": plan.summary()}
    s = index.stride
    for name, sel in selections.items():
        labelled = sum(int(index.labelled[w.row // s, w.col // s]) for w in sel.windows)
        out[name] = {
            "chips": len(sel),
            "samples": int(sum(sel.repeats)),
            "labelled_pixels": labelled,
        }
    return out
