"""Training-time augmentation of chip batches, on the training device, seeded.

The 8 flips / right-angle rotations (the dihedral group: a map has no "up"), brightness and
contrast jitter on the normalised bands, and optional scale jitter (zoom in or out, labels
resized with nearest neighbour, padding marked as ignored). Only training batches are
augmented; validation and prediction never are.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from w2w.core.classes import IGNORE
from w2w.core.config import StageConfig


class AugmentConfig(StageConfig):
    """Which augmentations to apply to training chips."""

    stage_name: ClassVar[str] = "augment"

    flips: bool = Field(default=True, description="random one of the 8 flips/rotations")
    brightness: float = Field(
        default=0.1, ge=0, le=1, description="additive jitter (normalised units)"
    )
    contrast: float = Field(
        default=0.1, ge=0, lt=1, description="multiplicative jitter, +- fraction"
    )
    scale: float = Field(
        default=0.0, ge=0, lt=0.5, description="zoom jitter, +- fraction (0 = off)"
    )


def augment(images: Any, labels: Any, cfg: AugmentConfig, generator: Any) -> tuple[Any, Any]:
    """Augment a batch: images (N, B, H, W) float, labels (N, H, W) long; returns new tensors.

    Random draws come from ``generator`` (a CPU ``torch.Generator``), so a seeded run is
    reproducible whatever the device.
    """
    import torch

    n = images.shape[0]
    if cfg.flips:
        ks = torch.randint(0, 4, (n,), generator=generator).tolist()
        flips = torch.randint(0, 2, (n,), generator=generator).tolist()
        out_i, out_l = [], []
        for i in range(n):
            x, y = images[i], labels[i]
            if ks[i]:
                x, y = torch.rot90(x, ks[i], dims=(-2, -1)), torch.rot90(y, ks[i], dims=(-2, -1))
            if flips[i]:
                x, y = torch.flip(x, dims=(-1,)), torch.flip(y, dims=(-1,))
            out_i.append(x)
            out_l.append(y)
        images, labels = torch.stack(out_i), torch.stack(out_l)
    if cfg.contrast > 0 or cfg.brightness > 0:
        c = 1 + (torch.rand((n, 1, 1, 1), generator=generator) * 2 - 1) * cfg.contrast
        b = (torch.rand((n, 1, 1, 1), generator=generator) * 2 - 1) * cfg.brightness
        images = images * c.to(images.device) + b.to(images.device)
    if cfg.scale > 0:
        images, labels = _scale_jitter(images, labels, cfg.scale, generator)
    return images, labels


def _scale_jitter(images: Any, labels: Any, amount: float, generator: Any) -> tuple[Any, Any]:
    import torch
    import torch.nn.functional as F  # noqa: N812

    n, _, h, w = images.shape
    out_i, out_l = [], []
    factors = (1 + (torch.rand(n, generator=generator) * 2 - 1) * amount).tolist()
    for i, f in enumerate(factors):
        sh, sw = max(1, round(h * f)), max(1, round(w * f))
        x = F.interpolate(images[i : i + 1], size=(sh, sw), mode="bilinear", align_corners=False)
        y = F.interpolate(labels[i : i + 1, None].float(), size=(sh, sw), mode="nearest").long()
        x, y = _fit(x[0], 0.0, h, w), _fit(y[0, 0], IGNORE, h, w)
        out_i.append(x)
        out_l.append(y)
    return torch.stack(out_i), torch.stack(out_l)


def _fit(t: Any, fill: float, h: int, w: int) -> Any:
    """Centre-crop or pad the last two dimensions of ``t`` to (h, w)."""
    import torch.nn.functional as F  # noqa: N812

    th, tw = t.shape[-2:]
    if th >= h and tw >= w:
        top, left = (th - h) // 2, (tw - w) // 2
        return t[..., top : top + h, left : left + w]
    pad_h, pad_w = max(0, h - th), max(0, w - tw)
    padded = F.pad(t, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=fill)
    return _fit(padded, fill, h, w)
