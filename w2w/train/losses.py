"""Segmentation losses that ignore unlabelled pixels: cross-entropy, Dice, focal, and sums.

Every loss takes logits (N, K, H, W) and targets (N, H, W) with :data:`~w2w.train.chips.IGNORE`
where a pixel is unlabelled or invalid; those pixels contribute nothing, not even to the
normalisation. A batch without any labelled pixel gives a zero loss that still has a graph
(so DDP's gradient all-reduce runs on every rank).
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, model_validator

from w2w.core.classes import IGNORE
from w2w.core.config import StageConfig


class LossConfig(StageConfig):
    """Weights of the loss terms and their options."""

    stage_name: ClassVar[str] = "loss"

    ce: float = Field(default=1.0, ge=0, description="weight of cross-entropy")
    dice: float = Field(default=0.0, ge=0, description="weight of soft Dice")
    focal: float = Field(default=0.0, ge=0, description="weight of focal loss")
    focal_gamma: float = Field(default=2.0, ge=0, description="focusing of the focal loss")
    label_smoothing: float = Field(
        default=0.0, ge=0, lt=1, description="label smoothing of the cross-entropy"
    )
    class_weights: str | list[float] = Field(
        default="auto", description="'auto' (from the class histogram), 'none', or one per class"
    )
    spectral_aux: float = Field(
        default=0.5,
        ge=0,
        description="weight of the same loss on the per-pixel branch alone (models with "
        "model.options.spectral_branch)",
    )

    @model_validator(mode="after")
    def _some_term(self) -> LossConfig:
        if self.ce + self.dice + self.focal <= 0:
            raise ValueError("at least one of ce, dice, focal must have a positive weight")
        if isinstance(self.class_weights, str) and self.class_weights not in ("auto", "none"):
            raise ValueError("class_weights must be 'auto', 'none' or a list of numbers")
        return self


class SegmentationLoss:
    """Weighted sum of cross-entropy, Dice and focal terms over labelled pixels only."""

    def __init__(self, cfg: LossConfig, n_classes: int, weights: list[float] | None) -> None:
        import torch

        self.cfg = cfg
        self.n_classes = n_classes
        self.weights = torch.tensor(weights, dtype=torch.float32) if weights else None

    def __call__(self, logits: Any, target: Any) -> Any:
        """The loss of a batch: logits (N, K, H, W) float, target (N, H, W) long."""
        import torch
        import torch.nn.functional as F  # noqa: N812 - the usual name

        logits = logits.float()
        weights = self.weights.to(logits.device) if self.weights is not None else None
        labelled = target != IGNORE
        if not bool(labelled.any()):
            return logits.sum() * 0.0
        total = logits.new_zeros(())
        if self.cfg.ce > 0:
            ce = F.cross_entropy(
                logits,
                target,
                weight=weights,
                ignore_index=IGNORE,
                label_smoothing=self.cfg.label_smoothing,
            )
            total = total + self.cfg.ce * ce
        if self.cfg.focal > 0 or self.cfg.dice > 0:
            safe = torch.where(labelled, target, torch.zeros_like(target))
            logp = F.log_softmax(logits, dim=1)
            if self.cfg.focal > 0:
                logp_t = logp.gather(1, safe[:, None]).squeeze(1)
                focal = -((1 - logp_t.exp()) ** self.cfg.focal_gamma) * logp_t
                if weights is not None:
                    focal = focal * weights[safe]
                total = total + self.cfg.focal * focal[labelled].mean()
            if self.cfg.dice > 0:
                prob = logp.exp() * labelled[:, None]
                onehot = F.one_hot(safe, self.n_classes).permute(0, 3, 1, 2).float()
                onehot = onehot * labelled[:, None]
                inter = (prob * onehot).sum(dim=(0, 2, 3))
                denom = prob.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
                present = onehot.sum(dim=(0, 2, 3)) > 0
                dice = 1 - (2 * inter + 1.0) / (denom + 1.0)
                total = total + self.cfg.dice * dice[present].mean()
        return total
