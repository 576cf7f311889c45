"""Dense VICReg: the self-supervised objective of ``w2w pretrain``, and the network it trains.

VICReg (Bardes, Ponce & LeCun, ICLR 2022) makes the embeddings of two views of one input
agree (*invariance*, mean squared error) while keeping every embedding dimension spread out
over the batch (*variance*, a hinge on the standard deviation) and the dimensions decorrelated
(*covariance*, the squared off-diagonal covariances). It needs no negative pairs, no momentum
encoder and no large batch, which suits a few workers with tens of chips each; its variance
term makes a collapse visible in the loss instead of silent. VICRegL (Bardes et al., NeurIPS
2022) adds the same loss between matching positions of the two views' feature maps: a
segmentation model needs features that describe each place, not only each chip, and the
local term transfers better to segmentation than a global one alone.

:class:`Pretrainer` is the encoder that ``w2w train`` builds (cut from the same smp model) and
two projectors on its deepest feature map: an MLP on the pooled features (global) and a 1x1
convolution stack applied at every position (local). Only the encoder is kept.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from w2w.train.pretrain.config import VICRegConfig


def vicreg_terms(za: Any, zb: Any, *, eps: float = 1e-4) -> tuple[Any, Any, Any]:
    """(invariance, variance, covariance) of two (N, D) embedding batches, each term as
    VICReg defines it (variance and covariance averaged over the two views)."""
    import torch
    import torch.nn.functional as nnf

    invariance = nnf.mse_loss(za, zb)
    n, d = za.shape
    variance = za.new_zeros(())
    covariance = za.new_zeros(())
    for z in (za, zb):
        z = z - z.mean(dim=0)
        std = torch.sqrt(z.var(dim=0) + eps)
        variance = variance + nnf.relu(1 - std).mean() / 2
        cov = (z.T @ z) / max(1, n - 1)
        off = cov - torch.diag(torch.diag(cov))
        covariance = covariance + off.pow(2).sum() / d / 2
    return invariance, variance, covariance


def vicreg_loss(za: Any, zb: Any, cfg: VICRegConfig) -> tuple[Any, dict[str, float]]:
    """VICReg's weighted sum for two (N, D) embedding batches, and its terms as numbers."""
    inv, var, cov = vicreg_terms(za, zb)
    loss = cfg.invariance * inv + cfg.variance * var + cfg.covariance * cov
    return loss, {"invariance": float(inv), "variance": float(var), "covariance": float(cov)}


def gather(z: Any) -> Any:
    """The (N, D) batches of every DDP rank, concatenated, with gradients flowing back to each
    rank's own part (VICReg's statistics are over the global batch); ``z`` alone outside DDP."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return z
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(z), dim=0)


def _mlp(width_in: int, hidden: int, out: int, conv: bool) -> nn.Sequential:
    """VICReg's expander: Linear-BN-ReLU, Linear-BN-ReLU, Linear (1x1 convolutions when
    ``conv``, applied at every position)."""
    lin = (lambda a, b: nn.Conv2d(a, b, 1)) if conv else nn.Linear
    norm = nn.BatchNorm2d if conv else nn.BatchNorm1d
    return nn.Sequential(
        lin(width_in, hidden),
        norm(hidden),
        nn.ReLU(inplace=True),
        lin(hidden, hidden),
        norm(hidden),
        nn.ReLU(inplace=True),
        lin(hidden, out),
    )


class Pretrainer(nn.Module):
    """An encoder and VICReg's global and local projectors on its deepest features."""

    def __init__(self, encoder: nn.Module, embedding: int) -> None:
        super().__init__()
        self.encoder = encoder
        width = int(encoder.out_channels[-1])
        self.global_head = _mlp(width, 2 * embedding, embedding, conv=False)
        self.local_head = _mlp(width, embedding, embedding, conv=True)

    def forward(self, x: Any) -> tuple[Any, Any]:
        """(N, bands, h, w) -> global (N, D) embeddings and local (N, D, h', w') ones."""
        deepest = self.encoder(x)[-1]
        return self.global_head(deepest.mean(dim=(-2, -1))), self.local_head(deepest)


def local_pairs(la: Any, lb: Any, valid: Any, limit: int, gen: Any) -> tuple[Any, Any]:
    """Matching positions of two aligned (N, D, h', w') local embedding maps, as two (M, D)
    batches: the positions whose ground is at least half valid (``valid`` is the chips'
    (N, h, w) mask), at most ``limit`` of them drawn at random."""
    import torch
    import torch.nn.functional as nnf

    d, h, w = la.shape[1:]
    share = nnf.adaptive_avg_pool2d(valid[:, None].float(), (h, w))[:, 0]
    keep = torch.nonzero(share.flatten() >= 0.5).flatten()
    if keep.numel() > limit:
        pick = torch.randperm(keep.numel(), generator=gen)[:limit].to(keep.device)
        keep = keep[pick]
    flat_a = la.permute(0, 2, 3, 1).reshape(-1, d)
    flat_b = lb.permute(0, 2, 3, 1).reshape(-1, d)
    return flat_a[keep], flat_b[keep]
