"""Metrics from confusion matrices, and the stratified area estimator (Olofsson et al. 2014)."""

from __future__ import annotations

import numpy as np
import pytest

from w2w.core.metrics import (
    confusion,
    kappa,
    mean_iou,
    overall_accuracy,
    per_class,
    stratified_area,
    summary,
)


def test_confusion_ignores_masked_and_out_of_range() -> None:
    ref = np.array([0, 1, 2, 2, 255, 1])
    pred = np.array([0, 2, 2, 2, 1, 255])
    m = confusion(ref, pred, 3, mask=np.array([1, 1, 1, 0, 1, 1], bool))
    assert m.tolist() == [[1, 0, 0], [0, 0, 1], [0, 0, 1]]


def test_summed_parts_equal_the_whole(rng: np.random.Generator) -> None:
    ref = rng.integers(0, 4, 10_000)
    pred = np.where(rng.random(10_000) < 0.7, ref, rng.integers(0, 4, 10_000))
    whole = confusion(ref, pred, 4)
    parts = sum(confusion(ref[i : i + 999], pred[i : i + 999], 4) for i in range(0, 10_000, 999))
    np.testing.assert_array_equal(whole, parts)


def test_headline_metrics() -> None:
    m = np.array([[50, 10], [5, 35]])
    assert overall_accuracy(m) == pytest.approx(0.85)
    pe = (55 * 60 + 45 * 40) / 100**2
    assert kappa(m) == pytest.approx((0.85 - pe) / (1 - pe))
    s = per_class(m)
    assert s[0].precision == pytest.approx(50 / 55) and s[0].recall == pytest.approx(50 / 60)
    assert s[0].iou == pytest.approx(50 / 65) and s[1].iou == pytest.approx(35 / 50)
    assert mean_iou(m) == pytest.approx((50 / 65 + 35 / 50) / 2)
    # A class absent from reference and prediction does not drag the mean down.
    m3 = np.zeros((3, 3), int)
    m3[:2, :2] = m
    assert mean_iou(m3) == pytest.approx(mean_iou(m))
    out = summary(m, ["forest", "water"])
    assert out["per_class"]["water"]["support"] == 40 and out["pixels"] == 100


def test_olofsson_worked_example() -> None:
    """Olofsson et al. (2014), section 5: deforestation area 21,158 ha +- 6,158 ha (95%)."""
    # Sample counts, map classes as rows: deforestation, gain, stable forest, stable non-forest.
    by_map = np.array([[66, 0, 5, 4], [0, 55, 8, 12], [1, 0, 153, 11], [2, 1, 9, 313]])
    mapped = np.array([200_000, 150_000, 3_200_000, 6_450_000])  # 30 m pixels
    estimates, oa = stratified_area(by_map.T, mapped, pixel_area=0.09)  # hectares
    defor = estimates[0]
    assert defor.estimated_area == pytest.approx(21_158, abs=1)
    assert defor.ci95 == pytest.approx(6_158, abs=15)
    assert defor.users_accuracy == pytest.approx(0.88, abs=0.005)
    assert defor.producers_accuracy == pytest.approx(0.75, abs=0.005)
    assert oa == pytest.approx(0.95, abs=0.005)
    assert sum(e.estimated_area for e in estimates) == pytest.approx(mapped.sum() * 0.09)
