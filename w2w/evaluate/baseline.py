"""The per-pixel baseline beside every evaluation: does the network earn its cost here?

A gradient-boosted classifier (scikit-learn's ``HistGradientBoostingClassifier``) on each
pixel's bands and the spectral indices its band names allow (:func:`index_bands`, band roles
by :mod:`w2w.core.bands`), fitted on
labelled pixels of the bundle's *training* split and scored on exactly the pixels the map is
scored on (the same mask, in the same block pass, :mod:`w2w.evaluate.run`). That is the bar
the literature holds a few-label segmentation model to: a tuned per-pixel model on bands and
indices.

Fitting reads the scene twice, block by block, so memory stays bounded however large the
state: a first pass counts the training pixels (labels only), a second draws a uniform sample
of at most ``max_pixels`` of them (each block its share, with a seed of its own) with their
features. The sample keeps the classes' natural frequencies, as a user fitting such a model
on their field data would.

The paired comparison is McNemar's test on the pixels both scored: ``b`` pixels only the
network got right, ``c`` only the baseline; exact binomial when ``b + c < 25``, else the
chi-square statistic with continuity correction. Neighbouring pixels are correlated, so the
p-value is optimistic (the effective sample is smaller than the pixel count): read a small
difference with a small p-value with care.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from w2w.core.bands import band_roles
from w2w.core.grid import Window
from w2w.core.split import SplitPlan
from w2w.core.store import SceneStore

#: Normalised differences (a - b) / (a + b) from band roles.
INDICES: dict[str, tuple[str, str]] = {
    "ndvi": ("nir", "red"),
    "ndwi": ("green", "nir"),
    "mndwi": ("green", "swir16"),
    "nbr": ("nir", "swir22"),
    "ndbi": ("swir16", "nir"),
}

#: What the report says about the comparison.
BASELINE_NOTE = (
    "The baseline is a gradient-boosted per-pixel model on the bands and spectral indices, "
    "fitted on the labelled pixels of the training split and scored on the same pixels as "
    "the map. McNemar's test compares the two on those pixels; neighbouring pixels are "
    "correlated, so its p-value is optimistic."
)

#: The most training pixels the baseline is fitted on (a uniform sample beyond that).
MAX_PIXELS = 200_000


def index_bands(band_names: list[str]) -> dict[str, tuple[int, int]]:
    """The spectral indices the band names allow: name -> (band a, band b)."""
    roles = band_roles(band_names)
    return {
        name: (roles[a], roles[b]) for name, (a, b) in INDICES.items() if a in roles and b in roles
    }


def features(image: np.ndarray, indices: dict[str, tuple[int, int]]) -> np.ndarray:
    """(pixels, bands + indices) float32 from (bands, pixels) values."""
    x = image.astype(np.float32)
    cols = [x]
    for a, b in indices.values():
        total = x[a] + x[b]
        with np.errstate(divide="ignore", invalid="ignore"):
            nd = np.where(total != 0, (x[a] - x[b]) / total, 0.0)
        cols.append(nd[None].astype(np.float32))
    return np.concatenate(cols, axis=0).T


@dataclass
class TrainingPixels:
    """Block task of the fit: training pixels of one window, counted, or sampled with their
    features. Small and picklable; the scene is opened on the worker."""

    scene_url: str
    lut: np.ndarray  # (256,) label value -> class index, -1 outside the class table
    unlabelled: int | None
    plan: SplitPlan
    codes: np.ndarray
    indices: dict[str, tuple[int, int]]
    rate: float | None = None  # None: count only
    _scene: SceneStore | None = field(default=None, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_scene": None}

    def mask(self, window: Window, label: np.ndarray) -> np.ndarray:
        """Labelled pixels of ``window`` with a class, inside a training chip."""
        ok = self.lut[label] >= 0
        if self.unlabelled is not None:
            ok &= label != self.unlabelled
        return ok & self.plan.pixel_mask(window, "train", codes=self.codes)

    def __call__(self, window: Window) -> Any:
        if self._scene is None:
            self._scene = SceneStore.open(self.scene_url)
        scene = self._scene
        label = scene.read_label(window)
        mask = self.mask(window, label)
        if self.rate is None or not mask.any():
            return int(mask.sum()) if self.rate is None else None
        image = scene.read_image(window)
        mask &= scene.valid_mask(image)
        rng = np.random.default_rng([window.row, window.col, 20261206])
        pick = mask & (rng.random(mask.shape) < self.rate)
        if not pick.any():
            return None
        return features(image[:, pick], self.indices), self.lut[label[pick]].astype(np.int16)


@dataclass(frozen=True)
class Baseline:
    """A fitted per-pixel baseline: the model, its features and what it was fitted on."""

    model: Any
    indices: dict[str, tuple[int, int]]
    band_names: tuple[str, ...]
    training_pixels: int
    sampled_pixels: int

    def predict(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Class indices at the ``mask`` pixels of (bands, h, w) ``image``."""
        if not mask.any():
            return np.zeros(0, dtype=np.int64)
        return np.asarray(self.model.predict(features(image[:, mask], self.indices)), np.int64)

    def describe(self) -> dict[str, Any]:
        """The JSON-ready description for the report."""
        return {
            "model": "HistGradientBoostingClassifier (scikit-learn)",
            "features": [*self.band_names, *self.indices],
            "fitted_on": "labelled pixels of the training split (a uniform sample)",
            "training_pixels": self.training_pixels,
            "sampled_pixels": self.sampled_pixels,
        }


def fit(
    scene: SceneStore,
    lut: np.ndarray,
    plan: SplitPlan,
    *,
    engine: str,
    progress: bool,
    seed: int = 0,
    max_pixels: int = MAX_PIXELS,
) -> Baseline | None:
    """Fit the baseline on the training split's labelled pixels; None when there are none."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    from w2w.core.runtime import run_blocks

    info = scene.info
    indices = index_bands(list(info.band_names))
    task = TrainingPixels(scene.url, lut, info.unlabelled, plan, plan.chip_codes(), indices)
    blocks = scene.tiling.windows()
    total = sum(run_blocks(task, blocks, engine=engine, what="baseline: count", progress=progress))
    if total == 0:
        return None
    task.rate = min(1.0, max_pixels / total)
    xs, ys = [], []
    for got in run_blocks(task, blocks, engine=engine, what="baseline: sample", progress=progress):
        if got is not None:
            xs.append(got[0])
            ys.append(got[1])
    if not xs:
        return None
    x, y = np.concatenate(xs), np.concatenate(ys)
    if len(np.unique(y)) < 2:
        return None
    model = HistGradientBoostingClassifier(random_state=seed, **boosting_settings(y))
    model.fit(x, y)
    return Baseline(model, indices, tuple(info.band_names), int(total), len(y))


def boosting_settings(y: np.ndarray) -> dict[str, Any]:
    """Early stopping on a held-out tenth when every class has pixels to hold out (it splits
    by class: sparse field labels with a class of one or two pixels cannot be split), else a
    fixed 100 rounds."""
    counts = np.bincount(y.astype(np.int64))
    if len(y) >= 1000 and counts[counts > 0].min() >= 10:
        return {"max_iter": 300, "learning_rate": 0.1, "early_stopping": True}
    return {"max_iter": 100, "learning_rate": 0.1, "early_stopping": False}


def mcnemar(network_only: int, baseline_only: int) -> dict[str, Any]:
    """McNemar's test of the paired difference (see the module notes)."""
    from scipy import stats

    b, c = int(network_only), int(baseline_only)
    n = b + c
    if n == 0:
        p, stat, method = 1.0, 0.0, "no discordant pixel"
    elif n < 25:
        p = float(stats.binomtest(b, n, 0.5).pvalue)
        stat, method = float(b), "exact binomial"
    else:
        stat = (abs(b - c) - 1) ** 2 / n
        p = float(stats.chi2.sf(stat, 1))
        method = "chi-square with continuity correction"
    better = "neither" if p >= 0.05 or b == c else ("network" if b > c else "baseline")
    return {
        "network_only_correct": b,
        "baseline_only_correct": c,
        "statistic": stat if math.isfinite(stat) else None,
        "p_value": p,
        "method": method,
        "better": better,
    }
