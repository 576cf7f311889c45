"""The map-quality benchmark's split: every sparse label is used, and runs are repeatable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.quality import DIRECTIONS, SCENES, Scene, ingest_scene, pixel_sets, run_direction
from benchmarks.quality import train_config as quality_train_config
from tests.conftest import CHIAPAS
from w2w.core.grid import Window


@pytest.mark.skipif(not CHIAPAS.exists(), reason="real imagery (../shared/data/real) absent")
def test_every_chiapas_label_is_in_a_training_chip_or_scored(tmp_path: Path) -> None:
    """718 human-labelled pixels: with the quality recipe's chips, each one on the training
    side lies in a selected training chip, and each one on the other side is scored."""
    store = ingest_scene(SCENES["chiapas"], tmp_path)
    for side in DIRECTIONS.values():
        cfg = quality_train_config(SCENES["chiapas"], store, side, tmp_path, 0, {})
        _, classes, train_px, test_px, plan = pixel_sets(cfg)
        labelled = classes != 255
        assert int(labelled.sum()) == 718
        assert not (train_px & test_px).any()
        full = Window(0, 0, *classes.shape)
        train_side = plan.split.pixel_mask(full, "train")
        np.testing.assert_array_equal(train_px, labelled & train_side)
        assert int(train_px.sum()) + int(test_px.sum()) == 718, side


@pytest.mark.slow
def test_two_runs_with_the_same_seed_give_the_same_metrics(
    tmp_path: Path, ray_session: None
) -> None:
    """Training, prediction and evaluation on the CPU are deterministic for a seed (and the
    RandomForest baseline for its seed)."""
    pytest.importorskip("sklearn")
    # Dense chips (the recipe's stride 8): ~200 training chips in a dozen Ray Data blocks,
    # whose reads finish in no fixed order.
    scene = Scene("synthetic", synthetic={"height": 256, "width": 256, "seed": 3})
    quick = {"epochs": 2}
    runs = []
    for name in ("a", "b"):
        work = tmp_path / name
        store = ingest_scene(scene, work)
        runs.append(run_direction(scene, store, "west→east", work, 5, quick))
    a, b = runs
    assert a["w2w"] == b["w2w"]
    assert a["random_forest"] == b["random_forest"]
    assert a["gradient_boosting"] == b["gradient_boosting"]
    assert a["w2w"]["test_pixels"] > 1000
