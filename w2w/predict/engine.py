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

The module is pure: it imports torch, numpy and w2w's pure modules only (no Ray, GDAL, zarr
or pydantic), so ``python -m benchmarks gpu`` runs it on a bare machine with PyTorch.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
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
    ``ready`` event, on a GPU), and the chips of its read window that hold a valid pixel."""

    image: torch.Tensor
    valid: torch.Tensor
    chips: list[Window]
    skipped: int
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

        def column(values: Sequence[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32, device=self.device)[:, None, None]

        self.offset, self.scale = column(normalizer.offset), column(normalizer.scale)
        self.clip = (column(normalizer.lo), column(normalizer.hi)) if normalizer.lo else None
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
        chips = [c for c in every if _holds_valid(valid, c.relative_to(win))]
        if self.copies is None:
            return Staged(
                _tensor(image).to(self.device),
                _tensor(valid).to(self.device),
                chips,
                len(every) - len(chips),
            )
        with torch.cuda.stream(self.copies):
            on_device = [
                _tensor(a).pin_memory().to(self.device, non_blocking=True) for a in (image, valid)
            ]
            ready = torch.cuda.Event()
            ready.record(self.copies)
        return Staged(on_device[0], on_device[1], chips, len(every) - len(chips), ready)

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
        size, k = plan.window_size, len(self.class_ids)
        if staged.ready is not None:  # the copy stream's work on this block is done first
            torch.cuda.current_stream(self.device).wait_event(staged.ready)
            for t in (staged.image, staged.valid):
                t.record_stream(torch.cuda.current_stream(self.device))
        x = self.normalise(staged.image, staged.valid)
        rel = [c.relative_to(win) for c in staged.chips]
        acc, wsum = self._blend(x, rel, size, k)
        inner = block.relative_to(win)
        acc = acc[:, inner.row : inner.row_stop, inner.col : inner.col_stop]
        wsum = wsum[inner.row : inner.row_stop, inner.col : inner.col_stop]
        ok = staged.valid[inner.row : inner.row_stop, inner.col : inner.col_stop] & (wsum > 0)
        if plan.stride == plan.chip:  # chips tile the window: each pixel has one prediction
            probs = acc
        else:
            probs = acc / torch.where(wsum > 0, wsum, torch.ones_like(wsum))
        top_p, top = probs.max(dim=0)  # ties: the first class, as numpy's argmax
        nodata = torch.tensor(CLASS_NODATA, dtype=torch.uint8, device=self.device)
        cls = torch.full((plan.block, plan.block), CLASS_NODATA, dtype=torch.uint8)
        conf = torch.zeros((plan.block, plan.block), dtype=torch.uint8)
        h, w = block.height, block.width
        cls[:h, :w] = torch.where(ok, self.class_ids[top], nodata).cpu()
        # 0 is nodata and 1 marks pixels the sieve reclassifies: a prediction is at least 2.
        quantised = torch.round(top_p * 255).clamp(CONFIDENCE_MIN_PREDICTED, 255).to(torch.uint8)
        conf[:h, :w] = torch.where(ok, quantised, torch.zeros_like(quantised)).cpu()
        if not probabilities:
            return cls.numpy(), conf.numpy(), None
        each = torch.zeros((k, plan.block, plan.block), dtype=torch.uint8)
        scaled = torch.round(probs * 255).clamp(0, 255).to(torch.uint8)
        each[:, :h, :w] = torch.where(ok, scaled, torch.zeros_like(scaled)).cpu()
        return cls.numpy(), conf.numpy(), each.numpy()

    # -- steps -------------------------------------------------------------------------------

    def _blend(
        self, x: torch.Tensor, rel: list[Window], size: int, k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward the chips at ``rel`` (window-relative) in batches and blend them: the
        Hann-weighted sum of probabilities and of weights, summed chip by chip in row-major
        order (deterministic). Where chips tile the window (stride = chip) no pixel has two
        predictions: probabilities are copied in place and the weight sum only marks the
        pixels a chip covered."""
        acc = torch.zeros((k, size, size), dtype=torch.float32, device=self.device)
        wsum = torch.zeros((size, size), dtype=torch.float32, device=self.device)
        tiled = self.plan.stride == self.plan.chip
        bs = self.settings.batch_size
        for start in range(0, len(rel), bs):
            group = rel[start : start + bs]
            batch = torch.stack([x[:, r.row : r.row_stop, r.col : r.col_stop] for r in group])
            probs = self.forward(batch)
            for p, r in zip(probs, group, strict=True):  # fixed (row-major) summation order
                cell = (slice(r.row, r.row_stop), slice(r.col, r.col_stop))
                if tiled:
                    acc[(slice(None), *cell)].copy_(p)
                    wsum[cell] = 1.0
                else:
                    acc[(slice(None), *cell)].addcmul_(p, self.weights)
                    wsum[cell] += self.weights
        return acc, wsum

    def normalise(self, image: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(band, h, w) raw pixels -> float32 ``(clip(x, lo, hi) - offset) / scale``, invalid
        pixels 0: the bundle's :class:`Normalizer`, on the device."""
        x = image.to(torch.float32, copy=True)  # a copy: the steps below work in place
        if self.clip is not None:
            x.clamp_(min=self.clip[0], max=self.clip[1])
        x.sub_(self.offset).div_(self.scale)
        x.masked_fill_(~valid, 0.0)
        if image.is_floating_point():  # whole-number pixels cannot be NaN or infinite
            x.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
        return x

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
        return total / len(flips)


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
