"""One block's prediction on the model's device: normalise, forward, blend, argmax, quantise.

:class:`BlockEngine` is the whole per-block path of ``w2w predict`` and nothing else. The raw
pixels of a block's read window (source dtype) and its valid mask go to the device once;
normalisation, the forward passes over the block's chips in batches, the smooth-window blend
of overlapping chips, the argmax and the confidence quantisation all run there as torch
operations, and only the uint8 class and uint8 confidence of the block come back. On a GPU
the next block's pixels are copied from pinned memory while the current one runs
(:meth:`BlockEngine.stage` before :meth:`BlockEngine.predict`).

Determinism: chips are summed into the block one after another in row-major order of the
global chip grid, with elementwise adds (no atomics, no reductions across chips), so a pixel
gets the same sum whatever the block size, the actor count or the run. In fp32 on a CPU this
is, operation for operation, the plain numpy blend (tests/test_predict_engine.py checks it
against an in-memory sliding-window prediction written in the test).

Memory traffic is what this path costs outside the model, so each step touches a block as few
times as it can: pixels are normalised straight into channels-last order (a pixel's bands
adjacent), from which chips stack into the model's channels-last batch in one copy; where
chips tile the block (stride = chip) each chip's top class and probability go straight into
the block, with no per-class blend window; the class and its probability come from a max and
a compare rather than torch's index-tracking ``max``.

The module is pure: it imports torch, numpy and w2w's pure modules only (no Ray, GDAL, zarr
or pydantic), so ``python -m benchmarks gpu`` runs it on a bare machine with PyTorch.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from w2w.core.classes import CLASS_NODATA, CONFIDENCE_MIN_PREDICTED
from w2w.core.windows import Window
from w2w.model.models import channels_last, channels_last_input
from w2w.model.normalization import Normalizer
from w2w.predict.plan import BlockPlan, blend_weights

#: Model precisions: the dtype of the forward pass (autocast); blending is always fp32.
PRECISIONS = ("fp32", "bf16", "fp16")
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device_type: str) -> str:
    """``auto`` -> bf16 on a GPU (fp16 where bf16 is unsupported), fp32 on a CPU; other values
    are returned as given (bf16 or fp16 on a CPU is the user's choice)."""
    if precision != "auto":
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be auto or one of {PRECISIONS}, not {precision!r}")
        return precision
    if device_type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


@dataclass(frozen=True)
class EngineSettings:
    """How the engine runs the model: chips per forward pass, flip TTA, precision, compile."""

    batch_size: int = 16
    tta: bool = False
    precision: str = "fp32"
    compile: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {self.precision!r}")


@dataclass
class Staged:
    """A block's raw pixels and valid mask on the device (copy possibly still in flight: the
    ``ready`` event, on a GPU), the chips of its read window that hold a valid pixel, and
    whether every pixel of the window is valid (known on the host, so the device never has
    to be asked)."""

    image: torch.Tensor
    valid: torch.Tensor
    chips: list[Window]
    skipped: int
    all_valid: bool
    ready: torch.cuda.Event | None = None


class BlockEngine:
    """Predicts blocks on one device; see the module docstring."""

    def __init__(
        self,
        model: torch.nn.Module,
        normalizer: Normalizer,
        class_ids: Sequence[int],
        plan: BlockPlan,
        device: torch.device | str,
        settings: EngineSettings,
    ) -> None:
        self.plan = plan
        self.device = torch.device(device)
        self.settings = settings
        model = channels_last(model.to(self.device).eval())
        if settings.compile:
            model = torch.compile(model)  # type: ignore[assignment]
        self.model = model

        def per_band(values: Sequence[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32, device=self.device)

        # Per-band constants broadcast along the last (band) axis of channels-last pixels.
        self.offset, self.scale = per_band(normalizer.offset), per_band(normalizer.scale)
        self.clip = (per_band(normalizer.lo), per_band(normalizer.hi)) if normalizer.lo else None
        self.weights = torch.from_numpy(blend_weights(plan.chip)).to(self.device)
        self.class_ids = torch.tensor(list(class_ids), dtype=torch.uint8, device=self.device)
        # On a GPU, blocks are copied on a stream of their own, so the copy of the next
        # block overlaps the forward passes of the current one.
        self.copies = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    # -- per block ---------------------------------------------------------------------------

    def stage(self, block: Window, image: np.ndarray, valid: np.ndarray) -> Staged:
        """Start a block's pixels on their way to the device (asynchronously from pinned
        memory on a GPU) and list the chips worth a forward pass: those with a valid pixel."""
        win = self.plan.window(block)
        every = self.plan.chips(block)
        all_valid = bool(valid.all())
        # A window that is all valid (a block inside the state) needs no chip-by-chip look.
        chips = (
            every if all_valid else [c for c in every if _holds_valid(valid, c.relative_to(win))]
        )
        skipped = len(every) - len(chips)
        if self.copies is None:
            return Staged(
                _tensor(image).to(self.device),
                _tensor(valid).to(self.device),
                chips,
                skipped,
                all_valid,
            )
        with torch.cuda.stream(self.copies):
            on_device = [
                _tensor(a).pin_memory().to(self.device, non_blocking=True) for a in (image, valid)
            ]
            ready = torch.cuda.Event()
            ready.record(self.copies)
        return Staged(on_device[0], on_device[1], chips, skipped, all_valid, ready)

    def predict(self, block: Window, staged: Staged) -> tuple[np.ndarray, np.ndarray]:
        """(block, block) uint8 class ids and confidence x 255, padded to the full block size
        (class nodata and confidence 0 past the scene's edge and on invalid pixels)."""
        cls, conf, _ = self._predict(block, staged, probabilities=False)
        return cls, conf

    def predict_with_probabilities(
        self, block: Window, staged: Staged
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """As :meth:`predict`, and the (classes, block, block) uint8 probability of each
        class x 255 (rounded; 0 past the edge and on invalid pixels), bands in class order."""
        cls, conf, probs = self._predict(block, staged, probabilities=True)
        assert probs is not None
        return cls, conf, probs

    def _predict(
        self, block: Window, staged: Staged, *, probabilities: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        plan, win = self.plan, self.plan.window(block)
        if staged.ready is not None:  # the copy stream's work on this block is done first
            torch.cuda.current_stream(self.device).wait_event(staged.ready)
            for t in (staged.image, staged.valid):
                t.record_stream(torch.cuda.current_stream(self.device))
        x = self.normalise(staged.image, staged.valid, mask=not staged.all_valid)
        x = x.permute(1, 2, 0)  # (h, w, band), contiguous
        rel = [c.relative_to(win) for c in staged.chips]
        inner = block.relative_to(win)
        crop = (slice(inner.row, inner.row_stop), slice(inner.col, inner.col_stop))
        probs: torch.Tensor | None = None
        if plan.stride == plan.chip and not probabilities:
            top_p, ids = self._tile(x, rel)
            top_p, ids = top_p[crop], ids[crop]
        else:
            acc, wsum = self._blend(x, rel, plan.window_size, len(self.class_ids))
            acc, wsum = acc[(slice(None), *crop)], wsum[crop]
            if plan.stride == plan.chip:  # chips tile the window: one prediction a pixel
                probs = acc
            else:
                probs = acc / torch.where(wsum > 0, wsum, torch.ones_like(wsum))
            top_p, top = _top(probs, dim=0)
            ids = self.class_ids[top]
        # Every valid pixel has a prediction: the chips of the grid cover the block, and a
        # chip holding a valid pixel is never skipped.
        ok = staged.valid[crop]
        nodata = torch.tensor(CLASS_NODATA, dtype=torch.uint8, device=self.device)
        cls = torch.full((plan.block, plan.block), CLASS_NODATA, dtype=torch.uint8)
        conf = torch.zeros((plan.block, plan.block), dtype=torch.uint8)
        h, w = block.height, block.width
        cls[:h, :w] = torch.where(ok, ids, nodata).cpu()
        # 0 is nodata and 1 marks pixels the sieve reclassifies: a prediction is at least 2.
        quantised = torch.round(top_p * 255).clamp(CONFIDENCE_MIN_PREDICTED, 255).to(torch.uint8)
        conf[:h, :w] = torch.where(ok, quantised, torch.zeros_like(quantised)).cpu()
        if probs is None:
            return cls.numpy(), conf.numpy(), None
        each = torch.zeros((len(self.class_ids), plan.block, plan.block), dtype=torch.uint8)
        scaled = torch.round(probs * 255).clamp(0, 255).to(torch.uint8)
        each[:, :h, :w] = torch.where(ok, scaled, torch.zeros_like(scaled)).cpu()
        return cls.numpy(), conf.numpy(), each.numpy()

    # -- steps -------------------------------------------------------------------------------

    def _batches(
        self, x: torch.Tensor, rel: list[Window]
    ) -> Iterator[tuple[list[Window], torch.Tensor]]:
        """The chips at ``rel`` (window-relative) of channels-last pixels ``x`` (h, w, band),
        in batches, each with its softmax probabilities (N, K, c, c)."""
        bs = self.settings.batch_size
        for start in range(0, len(rel), bs):
            group = rel[start : start + bs]
            # (N, c, c, band) stacked, seen as (N, band, c, c): a channels-last batch, no copy.
            chips = torch.stack([x[r.row : r.row_stop, r.col : r.col_stop] for r in group])
            yield group, self.forward(chips.permute(0, 3, 1, 2))

    def _tile(self, x: torch.Tensor, rel: list[Window]) -> tuple[torch.Tensor, torch.Tensor]:
        """Chips that tile the window (stride = chip): each pixel has one prediction, so the
        top probability and class come straight from each chip's probabilities, with no
        per-class window of the block. Returns (h, w) top probability and class id (uint8)."""
        size = self.plan.window_size
        top_p = torch.zeros((size, size), dtype=torch.float32, device=self.device)
        ids = torch.zeros((size, size), dtype=torch.uint8, device=self.device)
        for group, probs in self._batches(x, rel):
            p, top = _top(probs, dim=1)
            chip_ids = self.class_ids[top]
            for i, r in enumerate(group):  # row-major: the last chip on a pixel sets it
                cell = (slice(r.row, r.row_stop), slice(r.col, r.col_stop))
                top_p[cell] = p[i]
                ids[cell] = chip_ids[i]
        return top_p, ids

    def _blend(
        self, x: torch.Tensor, rel: list[Window], size: int, k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward the chips at ``rel`` (window-relative) of channels-last pixels ``x`` in
        batches and blend them: the Hann-weighted sum of probabilities (K, h, w) and of weights
        (h, w), summed chip by chip in row-major order (deterministic). Where chips tile the
        window (stride = chip) no pixel has two predictions: probabilities are copied in
        place and the weight sum only marks the pixels a chip covered."""
        acc = torch.zeros((k, size, size), dtype=torch.float32, device=self.device)
        wsum = torch.zeros((size, size), dtype=torch.float32, device=self.device)
        tiled = self.plan.stride == self.plan.chip
        for group, probs in self._batches(x, rel):
            for p, r in zip(probs, group, strict=True):  # fixed (row-major) summation order
                cell = (slice(r.row, r.row_stop), slice(r.col, r.col_stop))
                if tiled:
                    acc[(slice(None), *cell)].copy_(p)
                    wsum[cell] = 1.0
                else:
                    acc[(slice(None), *cell)].addcmul_(p, self.weights)
                    wsum[cell] += self.weights
        return acc, wsum

    def normalise(
        self, image: torch.Tensor, valid: torch.Tensor, *, mask: bool = True
    ) -> torch.Tensor:
        """(band, h, w) raw pixels -> float32 ``(clip(x, lo, hi) - offset) / scale``, invalid
        pixels 0: the bundle's :class:`Normalizer`, on the device. The result is laid out
        channels-last in memory (a pixel's bands adjacent; ``.permute(1, 2, 0)`` is
        contiguous), so chips cut from it stack into a channels-last batch in one copy.
        ``mask=False`` skips zeroing invalid pixels, for a window the caller knows is all
        valid (a block inside the state)."""
        bands, h, w = image.shape
        x = torch.empty((h, w, bands), dtype=torch.float32, device=image.device)
        x.copy_(image.permute(1, 2, 0))  # convert and transpose in one pass
        if self.clip is not None:
            x.clamp_(min=self.clip[0], max=self.clip[1])
        x.sub_(self.offset).div_(self.scale)
        if mask:
            x.masked_fill_(~valid[:, :, None], 0.0)
        if image.is_floating_point():  # whole-number pixels cannot be NaN or infinite
            x.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
        return x.permute(2, 0, 1)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities (N, K, c, c) float32 of a normalised batch, averaged over
        flips with TTA; the model runs in the engine's precision."""
        x = channels_last_input(batch)
        flips: list[tuple[int, ...]] = [()]
        if self.settings.tta:
            flips = [(), (-1,), (-2,), (-2, -1)]
        dtype = _AUTOCAST.get(self.settings.precision)
        total = None
        with (
            torch.inference_mode(),
            torch.autocast(self.device.type, dtype or torch.float32, enabled=dtype is not None),
        ):
            for dims in flips:
                xi = torch.flip(x, dims) if dims else x
                p = torch.softmax(self.model(xi).float(), dim=1)
                p = torch.flip(p, dims) if dims else p
                total = p if total is None else total + p
        assert total is not None
        return total / len(flips) if len(flips) > 1 else total


def _top(probs: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The largest value along ``dim`` and the index of its first occurrence (numpy's argmax
    on ties). Equal to ``probs.max(dim)``; a max and a compare instead of torch's
    index-tracking reduction, which is several times slower on CPUs."""
    k = probs.shape[dim]
    top = probs.amax(dim=dim, keepdim=True)
    shape = [1] * probs.dim()
    shape[dim] = k
    # k, k-1, ..., 1 where a class reaches the top: the largest marks the first such class.
    rank = torch.arange(k, 0, -1, dtype=torch.uint8, device=probs.device).view(shape)
    first = k - ((probs == top) * rank).amax(dim=dim).to(torch.int64)
    return top.squeeze(dim), first


def _holds_valid(valid: np.ndarray, chip: Window) -> bool:
    """Whether a chip (in the read window's pixels, clipped to it) holds a valid pixel."""
    r0, c0 = max(chip.row, 0), max(chip.col, 0)
    return bool(valid[r0 : max(chip.row_stop, 0), c0 : max(chip.col_stop, 0)].any())


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor sharing ``array``'s memory. Ray hands batches out read-only (zero-copy from
    its object store); the engine never writes into them (normalisation works on a copy),
    so torch's warning about non-writable arrays does not apply."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.ascontiguousarray(array))


def device_of(use_gpu: bool) -> torch.device:
    """The device an actor runs its model on: a GPU when asked for and present."""
    return torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
