"""Two views of a chip for self-supervised pretraining, and how to line their features up.

Both views cover the same window; each gets its own rotation/flip (one of the eight
symmetries of the square) and its own photometric change (:class:`.config.ViewsConfig`).
Because the window is the same, a position of one view's feature map and the same position
of the other's, after each map is turned back (:func:`undo`), see the same ground: the local
loss compares exactly those pairs. The spectral signal of land cover lies in the ratios
between bands, so gain and offset are drawn once for all bands, with only a small per-band
jitter: a view must not be able to change what the map has to tell apart.

Everything is seeded by the caller's ``torch.Generator``, on the training device.
"""

from __future__ import annotations

from typing import Any

from w2w.train.pretrain.config import ViewsConfig


def symmetry(x: Any, k: int, flip: bool) -> Any:
    """``x`` (..., h, w) flipped left-right if ``flip``, then rotated by ``k`` quarter turns."""
    import torch

    if flip:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, k, dims=(-2, -1)) if k else x


def undo(x: Any, k: int, flip: bool) -> Any:
    """The inverse of :func:`symmetry`."""
    import torch

    if k:
        x = torch.rot90(x, -k, dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if flip else x


def undo_batch(x: Any, moves: list[tuple[int, bool]]) -> Any:
    """Turn every sample of a (N, C, h, w) batch back by its own symmetry."""
    import torch

    return torch.stack([undo(x[i], k, f) for i, (k, f) in enumerate(moves)])


def make_view(images: Any, cfg: ViewsConfig, gen: Any) -> tuple[Any, list[tuple[int, bool]]]:
    """One view of a (N, bands, h, w) batch of normalised chips (0 = invalid stays 0 at the
    pixels it was), and the symmetry applied to each sample."""
    import torch

    n, bands = images.shape[:2]
    dev = images.device

    def uniform(*shape: int, spread: float) -> Any:
        return (torch.rand(*shape, generator=gen) * 2 - 1).mul_(spread).to(dev)

    invalid = (images == 0).all(dim=1, keepdim=True)
    gain = 1 + uniform(n, 1, 1, 1, spread=cfg.brightness)
    gain = gain * (1 + uniform(n, bands, 1, 1, spread=cfg.band_jitter))
    x = images * gain + uniform(n, 1, 1, 1, spread=cfg.offset)
    if cfg.noise > 0:
        x = x + torch.randn(x.shape, generator=gen).to(dev) * cfg.noise
    if cfg.blur > 0:
        x = _blur(x, cfg.blur, gen)
    if cfg.erase > 0:
        x = _erase(x, cfg.erase, gen)
    x = x.masked_fill(invalid, 0.0)
    moves: list[tuple[int, bool]] = []
    out = []
    for i in range(n):
        if cfg.rotate:
            k = int(torch.randint(0, 4, (1,), generator=gen))
            f = bool(torch.randint(0, 2, (1,), generator=gen))
        else:
            k, f = 0, False
        moves.append((k, f))
        out.append(symmetry(x[i], k, f))
    return torch.stack(out), moves


def _blur(x: Any, chance: float, gen: Any) -> Any:
    """A Gaussian blur (sigma 0.5-1.5 px, 5x5 kernel) on a random share ``chance`` of the
    samples."""
    import torch
    import torch.nn.functional as nnf

    n, c = x.shape[:2]
    pick = torch.rand(n, generator=gen) < chance
    if not bool(pick.any()):
        return x
    out = x.clone()
    r = torch.arange(-2, 3, dtype=x.dtype, device=x.device)
    for i in torch.nonzero(pick).flatten().tolist():
        sigma = 0.5 + float(torch.rand(1, generator=gen))
        g = torch.exp(-(r**2) / (2 * sigma**2))
        g = g / g.sum()
        kernel = (g[:, None] * g[None, :]).expand(c, 1, 5, 5)
        out[i : i + 1] = nnf.conv2d(
            nnf.pad(x[i : i + 1], (2, 2, 2, 2), mode="replicate"), kernel, groups=c
        )
    return out


def _erase(x: Any, chance: float, gen: Any) -> Any:
    """Blank (set to 0) one rectangle of up to a quarter of the chip in a random share
    ``chance`` of the samples: the encoder must describe a place from its surroundings too."""
    import torch

    n, _, h, w = x.shape
    out = x.clone()
    for i in range(n):
        if float(torch.rand(1, generator=gen)) >= chance:
            continue
        eh = max(1, int(h * (0.1 + 0.4 * float(torch.rand(1, generator=gen)))))
        ew = max(1, int(w * (0.1 + 0.4 * float(torch.rand(1, generator=gen)))))
        r0 = int(torch.randint(0, h - eh + 1, (1,), generator=gen))
        c0 = int(torch.randint(0, w - ew + 1, (1,), generator=gen))
        out[i, :, r0 : r0 + eh, c0 : c0 + ew] = 0.0
    return out
