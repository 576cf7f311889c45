"""Accuracy metrics from confusion matrices, summed block by block (or worker by worker).

Convention: ``matrix[i, j]`` counts pixels whose **reference** class is ``i`` and whose
**predicted** (map) class is ``j``; ``i`` and ``j`` index the class table (0..K-1), not the
stored class ids. Everything here derives from the summed matrix, so metrics computed in
parts (blocks, DDP workers) and summed equal those computed in one pass.

:func:`stratified_area` implements the stratified estimator of area and accuracy of
Olofsson et al. (2014, Remote Sensing of Environment 148: 42-57), with map classes as strata.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np


def confusion(
    reference: np.ndarray, predicted: np.ndarray, n_classes: int, mask: np.ndarray | None = None
) -> np.ndarray:
    """(K, K) int64 confusion matrix of class indices; pixels outside ``mask`` are ignored.

    Indices outside 0..K-1 in either array (e.g. an ignore value) are ignored as well.
    """
    ref = np.asarray(reference).ravel().astype(np.int64)
    pred = np.asarray(predicted).ravel().astype(np.int64)
    keep = (ref >= 0) & (ref < n_classes) & (pred >= 0) & (pred < n_classes)
    if mask is not None:
        keep &= np.asarray(mask, dtype=bool).ravel()
    flat = ref[keep] * n_classes + pred[keep]
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


@dataclass(frozen=True)
class ClassScores:
    """Per-class accuracy."""

    precision: float
    recall: float
    f1: float
    iou: float
    support: int


def _div(a: float, b: float) -> float:
    return a / b if b else float("nan")


def per_class(matrix: np.ndarray) -> list[ClassScores]:
    """Precision (user's accuracy), recall (producer's), F1 and IoU of every class."""
    m = np.asarray(matrix, dtype=np.float64)
    tp = np.diag(m)
    ref_tot, pred_tot = m.sum(axis=1), m.sum(axis=0)
    out = []
    for k in range(m.shape[0]):
        p, r = _div(tp[k], pred_tot[k]), _div(tp[k], ref_tot[k])
        f1 = _div(2 * p * r, p + r) if not (math.isnan(p) or math.isnan(r)) else float("nan")
        iou = _div(tp[k], ref_tot[k] + pred_tot[k] - tp[k])
        out.append(ClassScores(p, r, f1, iou, int(ref_tot[k])))
    return out


def overall_accuracy(matrix: np.ndarray) -> float:
    """Fraction of reference pixels predicted correctly."""
    m = np.asarray(matrix, dtype=np.float64)
    return _div(float(np.trace(m)), float(m.sum()))


def kappa(matrix: np.ndarray) -> float:
    """Cohen's kappa: agreement beyond chance."""
    m = np.asarray(matrix, dtype=np.float64)
    n = m.sum()
    if n == 0:
        return float("nan")
    po = np.trace(m) / n
    pe = float((m.sum(axis=0) * m.sum(axis=1)).sum()) / (n * n)
    return _div(po - pe, 1 - pe) if pe != 1 else float("nan")


def mean_iou(matrix: np.ndarray) -> float:
    """Mean IoU over the classes present in the reference or the prediction."""
    m = np.asarray(matrix)
    present = (m.sum(axis=0) + m.sum(axis=1)) > 0
    ious = [s.iou for s, p in zip(per_class(m), present, strict=True) if p]
    return float(np.mean(ious)) if ious else float("nan")


def summary(matrix: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """All headline metrics of a confusion matrix as a JSON-ready dict."""
    m = np.asarray(matrix, dtype=np.int64)
    scores = per_class(m)
    return {
        "pixels": int(m.sum()),
        "overall_accuracy": overall_accuracy(m),
        "kappa": kappa(m),
        "mean_iou": mean_iou(m),
        "per_class": {
            name: {
                "precision": s.precision,
                "recall": s.recall,
                "f1": s.f1,
                "iou": s.iou,
                "support": s.support,
            }
            for name, s in zip(class_names, scores, strict=True)
        },
        "confusion_matrix": m.tolist(),
        "class_names": list(class_names),
    }


@dataclass(frozen=True)
class AreaEstimate:
    """Estimated area of one class with its 95% confidence interval (Olofsson et al. 2014)."""

    mapped_area: float
    estimated_area: float
    ci95: float
    users_accuracy: float
    producers_accuracy: float


def stratified_area(
    matrix: np.ndarray, mapped_pixels: np.ndarray, pixel_area: float
) -> tuple[list[AreaEstimate], float]:
    """Area per class and overall accuracy from a sample stratified by map class.

    ``matrix`` is (reference x map) counts of the sample; ``mapped_pixels`` is the count of
    pixels of each class in the whole map (the strata sizes); ``pixel_area`` converts to
    area units. Returns the per-class estimates and the estimated overall accuracy.
    """
    n = np.asarray(matrix, dtype=np.float64).T  # rows: map class i, columns: reference j
    mapped = np.asarray(mapped_pixels, dtype=np.float64)
    total = mapped.sum()
    k = n.shape[0]
    if total == 0:
        nan = float("nan")
        return [AreaEstimate(0.0, nan, nan, nan, nan) for _ in range(k)], nan
    w = mapped / total  # W_i: mapped proportion of each stratum
    n_i = n.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(n_i[:, None] > 0, n / n_i[:, None], 0.0)  # n_ij / n_i.
    p = w[:, None] * frac  # p_ij: estimated area proportions
    p_ref = p.sum(axis=0)  # p_.j
    p_map = p.sum(axis=1)  # p_i.
    estimates = []
    for j in range(k):
        var = 0.0
        for i in range(k):
            if n_i[i] > 1:
                var += w[i] ** 2 * frac[i, j] * (1 - frac[i, j]) / (n_i[i] - 1)
        se = math.sqrt(var)
        estimates.append(
            AreaEstimate(
                mapped_area=float(mapped[j] * pixel_area),
                estimated_area=float(p_ref[j] * total * pixel_area),
                ci95=float(1.96 * se * total * pixel_area),
                users_accuracy=_div(float(p[j, j]), float(p_map[j])),
                producers_accuracy=_div(float(p[j, j]), float(p_ref[j])),
            )
        )
    return estimates, float(np.trace(p))
