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


@dataclass(frozen=True)
class ChipReader:
    """Reads chips from a scene store: normalised float32 images and class-index labels."""

    store_url: str
    chip_size: int
    normalizer: dict[str, Any]
    lut: tuple[int, ...]

    def read(
        self, windows: list[Window], store: SceneStore | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(N, bands, c, c) float32 images and (N, c, c) uint8 labels (IGNORE where unusable)."""
        store = store or SceneStore.open(self.store_url)
        norm = Normalizer.from_dict(self.normalizer)
        lut = np.asarray(self.lut, dtype=np.uint8)
        images, labels = [], []
        for w in windows:
            image, valid = read_normalised(store, w, norm)
            images.append(image)
            lab = lut[store.read_label(w)]
            lab[~valid] = IGNORE
            labels.append(lab)
        return np.stack(images), np.stack(labels)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Ray Data ``map_batches`` function: window specs in, chip arrays out."""
        windows = [
            Window(int(r), int(c), self.chip_size, self.chip_size)
            for r, c in zip(batch["row"], batch["col"], strict=True)
        ]
        images, labels = self.read(windows)
        return {"image": images, "label": labels}


def read_normalised(
    store: SceneStore, window: Window, norm: Normalizer
) -> tuple[np.ndarray, np.ndarray]:
    """One chip: (bands, h, w) float32 normalised (0 where invalid) and its (h, w) valid mask."""
    raw = store.read_image(window)
    valid = store.valid_mask(raw, window)
    return norm(raw, valid), valid


@dataclass(frozen=True)
class ImageChipReader:
    """Reads chips without labels (for self-supervised pretraining): normalised float32
    images and their valid masks."""

    store_url: str
    chip_size: int
    normalizer: dict[str, Any]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Ray Data ``map_batches`` function: window specs in, ``image`` and ``valid`` out."""
        store = SceneStore.open(self.store_url)
        norm = Normalizer.from_dict(self.normalizer)
        c = self.chip_size
        chips = [
            read_normalised(store, Window(int(r), int(col), c, c), norm)
            for r, col in zip(batch["row"], batch["col"], strict=True)
        ]
        return {
            "image": np.stack([im for im, _ in chips]),
            "valid": np.stack([v for _, v in chips]).astype(np.uint8),
        }


def chip_dataset(
    rows: list[dict[str, int]], reader: ChipReader | ImageChipReader, *, batch_size: int = 16
) -> Any:
    """A Ray Data dataset of chips: window specs read, normalised and labelled in parallel."""
    import ray.data

    if not rows:
        raise InputError("no chips to read: the selection is empty")
    n_blocks = max(1, min(len(rows) // batch_size, 64))
    ds = ray.data.from_items(rows, override_num_blocks=n_blocks)
    return ds.map_batches(
        _read_batch, fn_kwargs={"reader": reader}, batch_size=batch_size, batch_format="numpy"
    )


def _read_batch(
    batch: dict[str, np.ndarray], reader: ChipReader | ImageChipReader
) -> dict[str, np.ndarray]:
    return reader(batch)


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
