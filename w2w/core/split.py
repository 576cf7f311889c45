"""Spatial train / validation / test split of the chip grid, with a buffer between splits.

Neighbouring pixels are alike, so a random split of chips leaks: a test chip that overlaps a
training chip (or touches it) scores what the model has already seen. Here the split is
spatial and decided on *regions* of the global chip grid:

* ``blocks`` mode: regions of ``block_chips`` x ``block_chips`` chips (chip sizes, not
  strides: :func:`region_cells`) are assigned to the test, validation and training splits in
  a seeded random order until each split holds its share of the labelled pixels;
* ``halves`` mode: the scene is cut in two along ``axis``; one side trains (with validation
  regions drawn from it), the other is the test side. Chips that straddle the cut belong to
  neither side, so training chips end at the cut and test chips start there.

A chip belongs to its region's split. Then the **buffer**: a validation chip that overlaps a
training chip is dropped, and a test chip that overlaps a training or validation chip is
dropped, so no evaluated pixel was ever inside a training chip. Every pixel of a region lies
in a chip of that region (chips are anchored on the global grid), so in training regions every
labelled pixel is seen.

The resulting :class:`SplitPlan` is small (one code per region) and travels in the model
bundle, so evaluation rebuilds exactly the same test pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from w2w.core.config import StageConfig
from w2w.core.windows import ChipGrid, Window

if TYPE_CHECKING:
    from w2w.core.grid import Grid

TRAIN, VAL, TEST, NONE = 0, 1, 2, 255
SPLIT_CODES = {"train": TRAIN, "val": VAL, "test": TEST}
SplitName = Literal["train", "val", "test"]


class SplitConfig(StageConfig):
    """How to split the scene spatially into training, validation and test chips."""

    stage_name: ClassVar[str] = "split"

    mode: Literal["blocks", "halves"] = Field(
        default="blocks", description="regions drawn at random, or the scene cut in two"
    )
    block_chips: int = Field(
        default=4, ge=1, description="region edge, in chips (halves mode: in strides)"
    )
    val_fraction: float = Field(
        default=0.15, ge=0, lt=1, description="share of labelled pixels for validation"
    )
    test_fraction: float = Field(
        default=0.15, ge=0, lt=1, description="share of labelled pixels for the test split"
    )
    seed: int = Field(default=0, description="seed of the regions' draw")
    axis: Literal["x", "y"] = Field(default="x", description="halves: cut across this axis")
    train_side: Literal["first", "second"] = Field(
        default="first", description="halves: the side that trains (first = west / north)"
    )

    @model_validator(mode="after")
    def _fractions(self) -> SplitConfig:
        if self.mode == "blocks" and self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must leave a share for training")
        return self


@dataclass(frozen=True)
class SplitPlan:
    """Split codes of the regions of a chip grid; answers which split a chip or pixel is in."""

    height: int
    width: int
    chip_size: int
    stride: int
    block_chips: int
    regions: np.ndarray  # (region rows, region cols) uint8 codes TRAIN / VAL / TEST
    cut: int | None = None  # halves: pixel column (axis x) or row (axis y) of the cut
    axis: str = "x"

    # -- chips -----------------------------------------------------------------------------

    @property
    def chip_grid(self) -> ChipGrid:
        """The global chip grid the split is laid on."""
        return ChipGrid(self.height, self.width, self.chip_size, self.stride)

    def region_codes(self) -> np.ndarray:
        """(chip rows, chip cols) split code of each chip's region (before the buffer)."""
        rows, cols = self.chip_grid.shape
        i = np.arange(rows) // self.block_chips
        j = np.arange(cols) // self.block_chips
        return self.regions[i[:, None], j[None, :]]

    def chip_codes(self) -> np.ndarray:
        """(chip rows, chip cols) split of each chip after the buffer (NONE = dropped)."""
        codes = self.region_codes().copy()
        if self.cut is not None:
            along = codes.shape[1] if self.axis == "x" else codes.shape[0]
            origins = np.arange(along) * self.stride
            straddle = (origins < self.cut) & (origins + self.chip_size > self.cut)
            if self.axis == "x":
                codes[:, straddle] = NONE
            else:
                codes[straddle, :] = NONE
        reach = self.chip_grid.reach  # chips closer than this many steps overlap
        for code, blockers in ((VAL, (TRAIN,)), (TEST, (TRAIN, VAL))):
            blocked = _dilate(np.isin(codes, blockers), reach)
            codes[(codes == code) & blocked] = NONE
        return codes

    # -- pixels ----------------------------------------------------------------------------

    def pixel_mask(
        self, window: Window, split: SplitName, codes: np.ndarray | None = None
    ) -> np.ndarray:
        """(h, w) bool: pixels of ``window`` inside a chip of ``split`` (after the buffer).

        For ``test`` these are the pixels no training or validation chip covers.
        """
        codes = self.chip_codes() if codes is None else codes
        chips = self.chip_grid
        mask = np.zeros((window.height, window.width), dtype=bool)
        want = SPLIT_CODES[split]
        rows, cols = chips.covering(window)
        for i in rows:
            for j in cols:
                if codes[i, j] != want:
                    continue
                chip = chips.window(i, j).intersect(window)
                if chip is not None:
                    mask[chip.relative_to(window).slices] = True
        return mask

    # -- serialisation ---------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, stored in the model bundle."""
        return {
            "height": self.height,
            "width": self.width,
            "chip_size": self.chip_size,
            "stride": self.stride,
            "block_chips": self.block_chips,
            "regions": self.regions.astype(int).tolist(),
            "cut": self.cut,
            "axis": self.axis,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SplitPlan:
        """Inverse of :meth:`to_dict`."""
        return cls(
            height=int(d["height"]),
            width=int(d["width"]),
            chip_size=int(d["chip_size"]),
            stride=int(d["stride"]),
            block_chips=int(d["block_chips"]),
            regions=np.asarray(d["regions"], dtype=np.uint8),
            cut=None if d.get("cut") is None else int(d["cut"]),
            axis=str(d.get("axis", "x")),
        )

    def summary(self) -> dict[str, int]:
        """Number of chips in each split (before data filters) and dropped by the buffer."""
        codes = self.chip_codes()
        out = {name: int((codes == code).sum()) for name, code in SPLIT_CODES.items()}
        out["buffer"] = int((codes == NONE).sum())
        return out


def _dilate(mask: np.ndarray, reach: int) -> np.ndarray:
    """Cells within ``reach`` cells (Chebyshev distance) of a True cell."""
    if reach <= 0 or not mask.any():
        return mask.copy()
    from scipy.ndimage import binary_dilation

    return binary_dilation(mask, structure=np.ones((2 * reach + 1, 2 * reach + 1), dtype=bool))


def region_cells(cfg: SplitConfig, chip_size: int, stride: int) -> int:
    """A region's edge in cells of the chip grid (strides). In ``blocks`` mode a region is
    ``block_chips`` chips wide whatever the stride -- with overlapping chips a region narrower
    than a few chips would hold no chip outside the buffer, and the validation and test
    splits would come out empty; in ``halves`` mode it is ``block_chips`` strides, so that the
    cut falls on a stride line near the middle."""
    if cfg.mode == "halves":
        return cfg.block_chips
    return cfg.block_chips * max(1, -(-chip_size // stride))


def make_split(
    grid: Grid,
    chip_size: int,
    stride: int,
    cfg: SplitConfig,
    labelled: np.ndarray | None = None,
) -> SplitPlan:
    """Assign regions to splits; ``labelled`` (chip rows, chip cols) weights regions by the
    labelled pixels whose chip origin lies in them, so that fractions hold in labels.
    """
    rows, cols = grid.chips(chip_size, stride).shape
    k = region_cells(cfg, chip_size, stride)
    r_rows, r_cols = -(-rows // k), -(-cols // k)
    weights = np.ones((r_rows, r_cols))
    if labelled is not None:
        weights = np.zeros((r_rows, r_cols))
        np.add.at(weights, (np.arange(rows)[:, None] // k, np.arange(cols)[None, :] // k), labelled)
    regions = np.full((r_rows, r_cols), TRAIN, dtype=np.uint8)
    rng = np.random.default_rng(cfg.seed)
    cut = None

    if cfg.mode == "halves":
        along = r_cols if cfg.axis == "x" else r_rows
        if along < 2:
            raise ValueError(
                f"the scene has only {along} region(s) along {cfg.axis}; use smaller "
                "block_chips or a smaller chip size to split it in halves"
            )
        # Cut at the scene's middle pixel, rounded to the nearest region boundary.
        length = grid.width if cfg.axis == "x" else grid.height
        mid = min(along - 1, max(1, round(length / 2 / stride / k)))
        cut = mid * k * stride
        if cut < chip_size:
            raise ValueError(
                f"the scene is too small to cut in halves with {chip_size} px chips along "
                f"{cfg.axis} (the cut at pixel {cut} leaves no whole chip before it); use a "
                "smaller chip size"
            )
        index = np.arange(along)
        first = index < mid
        test_side = ~first if cfg.train_side == "first" else first
        if cfg.axis == "x":
            regions[:, test_side] = TEST
        else:
            regions[test_side, :] = TEST
        candidates = np.argwhere(regions == TRAIN)
        _draw(regions, candidates, weights, cfg.val_fraction, VAL, rng)
    else:
        candidates = np.argwhere(regions == TRAIN)
        order = rng.permutation(len(candidates))
        candidates = candidates[order]
        taken = _draw(regions, candidates, weights, cfg.test_fraction, TEST, rng, shuffle=False)
        rest = np.array([c for c in candidates.tolist() if tuple(c) not in taken], dtype=int)
        _draw(regions, rest.reshape(-1, 2), weights, cfg.val_fraction, VAL, rng, shuffle=False)
    return SplitPlan(grid.height, grid.width, chip_size, stride, k, regions, cut, cfg.axis)


def _draw(
    regions: np.ndarray,
    candidates: np.ndarray,
    weights: np.ndarray,
    fraction: float,
    code: int,
    rng: np.random.Generator,
    *,
    shuffle: bool = True,
) -> set[tuple[int, int]]:
    """Assign ``code`` to candidate regions, in random order, until they hold ``fraction``
    of the total weight; at least one region with weight when ``fraction`` > 0.
    """
    if fraction <= 0 or len(candidates) == 0:
        return set()
    if shuffle:
        candidates = candidates[rng.permutation(len(candidates))]
    total = float(weights.sum())
    target = fraction * total
    taken: set[tuple[int, int]] = set()
    acc = 0.0
    for r, c in candidates.tolist():
        w = float(weights[r, c])
        if w <= 0:
            continue
        if taken and acc + w / 2 > target:
            continue
        regions[r, c] = code
        taken.add((r, c))
        acc += w
        if acc >= target:
            break
    return taken
