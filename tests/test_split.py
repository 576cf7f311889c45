"""Spatial split: deterministic, buffered (no evaluated pixel inside a training chip)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from w2w.core.errors import ConfigError
from w2w.core.split import (
    NONE,
    SPLIT_CODES,
    TEST,
    TRAIN,
    VAL,
    SplitConfig,
    SplitPlan,
    make_split,
)
from w2w.ingest.synth import SynthConfig


def grid(h: int, w: int):
    return SynthConfig(output="u", height=h, width=w).grid


def footprint(plan: SplitPlan, name: str) -> np.ndarray:
    mask = np.zeros((plan.height + plan.chip_size, plan.width + plan.chip_size), dtype=bool)
    for i, j in np.argwhere(plan.chip_codes() == SPLIT_CODES[name]):
        mask[plan.chip_grid.window(int(i), int(j)).slices] = True
    return mask[: plan.height, : plan.width]


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(40, 400),
    w=st.integers(40, 400),
    size=st.sampled_from([16, 32, 64]),
    overlap=st.sampled_from([1, 2, 4]),
    k=st.integers(1, 4),
    seed=st.integers(0, 5),
    mode=st.sampled_from(["blocks", "halves"]),
)
def test_no_val_or_test_chip_overlaps_a_training_chip(
    h: int, w: int, size: int, overlap: int, k: int, seed: int, mode: str
) -> None:
    stride = size // overlap
    cfg = SplitConfig(mode=mode, block_chips=k, seed=seed, val_fraction=0.2, test_fraction=0.2)
    try:
        plan = make_split(grid(h, w), size, stride, cfg)
    except ValueError:
        assert mode == "halves"  # too few regions to cut in two
        return
    train, val, test = (footprint(plan, n) for n in ("train", "val", "test"))
    assert not (train & val).any()
    assert not (train & test).any() and not (val & test).any()
    # The pixel masks used for scoring agree with the chip footprints.
    np.testing.assert_array_equal(plan.pixel_mask(plan_window(plan), "test"), test)
    # Every pixel of a training region lies in a training chip (labels there are all seen).
    codes = plan.region_codes()
    rows = np.minimum(np.arange(h) // stride, codes.shape[0] - 1)
    cols = np.minimum(np.arange(w) // stride, codes.shape[1] - 1)
    region_of_pixel = codes[rows[:, None], cols[None, :]]
    if mode == "blocks":
        assert train[region_of_pixel == TRAIN].all()
    else:
        # Halves: chips straddling the cut are dropped; both sides are still fully covered,
        # the training side by training chips (when no validation is carved out of it), the
        # other by test chips.
        assert plan.cut is not None and plan.cut % stride == 0
        west = np.arange(w)[None, :] < plan.cut
        train_side = np.broadcast_to(west if cfg.train_side == "first" else ~west, (h, w))
        assert test[~train_side].all()
        no_val = make_split(grid(h, w), size, stride, cfg.replace(val_fraction=0))
        assert footprint(no_val, "train")[train_side].all()
    # Same seed, same plan; serialisable.
    again = make_split(grid(h, w), size, stride, cfg)
    np.testing.assert_array_equal(again.regions, plan.regions)
    assert SplitPlan.from_dict(plan.to_dict()).chip_codes().tolist() == plan.chip_codes().tolist()


def plan_window(plan: SplitPlan):
    from w2w.core.grid import Window

    return Window(0, 0, plan.height, plan.width)


def test_blocks_split_holds_its_fractions_of_labels() -> None:
    g = grid(2048, 2048)
    labelled = np.ones(g.chips(64, 64).shape)
    plan = make_split(
        g, 64, 64, SplitConfig(block_chips=2, val_fraction=0.15, test_fraction=0.2), labelled
    )
    codes = plan.chip_codes()
    shares = {c: (codes == c).mean() for c in (TRAIN, VAL, TEST)}
    assert shares[TEST] == pytest.approx(0.2, abs=0.02)
    assert shares[VAL] == pytest.approx(0.15, abs=0.02)
    assert (codes == NONE).sum() == 0  # stride == size: chips never overlap, nothing dropped


def test_halves_cut_in_the_middle_both_ways() -> None:
    g = grid(250, 250)
    west = make_split(g, 64, 32, SplitConfig(mode="halves", block_chips=1, val_fraction=0))
    east = make_split(
        g, 64, 32, SplitConfig(mode="halves", block_chips=1, val_fraction=0, train_side="second")
    )
    w_train, e_train = footprint(west, "train"), footprint(east, "train")
    assert w_train[:, :128].all() and not w_train[:, 160:].any()
    assert e_train[:, 128:].all() and not e_train[:, :96].any()
    assert footprint(west, "test")[:, 160:].all()


def test_split_config_validation() -> None:
    with pytest.raises(ConfigError, match="leave a share for training"):
        SplitConfig.from_dict({"val_fraction": 0.5, "test_fraction": 0.5})
