"""The inference actor of prediction: loads the bundle once, then predicts block after block.

For each block it normalises the raw pixels, runs the model over the block's chips in
batches (optionally with flip test-time augmentation), blends overlapping chip
probabilities with a smooth weight window summed in a fixed (row-major) order, and crops to
the block: the mosaic therefore does not depend on block size or on the number of actors.
Only this actor imports torch; read and write tasks stay small.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from w2w.core.classes import CLASS_NODATA
from w2w.core.grid import Window
from w2w.predict.plan import BlockPlan, batch_windows, blend_weights


class Predictor:
    """Predict stage (actor): loads the bundle once, predicts and blends a block's chips."""

    def __init__(self, bundle_url: str, plan: dict[str, int], settings: dict[str, Any]) -> None:
        import torch

        from w2w.model.bundle import load_bundle
        from w2w.model.models import channels_last

        self.settings = settings
        self.bp = BlockPlan(**plan)
        self.bundle = load_bundle(bundle_url)
        self.use_gpu = bool(settings["use_gpu"]) and torch.cuda.is_available()
        self.device = torch.device("cuda" if self.use_gpu else "cpu")
        if not self.use_gpu:
            torch.set_num_threads(max(1, int(settings.get("threads", 1))))
        self.model = channels_last(self.bundle.model(str(self.device)))
        self.bf16 = self.use_gpu and torch.cuda.is_bf16_supported()
        self.weights = blend_weights(self.bp.chip)
        ids = [c.id for c in self.bundle.classes]
        self.class_ids = np.asarray(ids, dtype=np.uint8)
        self.chips_forwarded = self.chips_skipped = 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        classes, confidences, counts = [], [], []
        self.chips_forwarded = self.chips_skipped = 0
        for i, block in enumerate(batch_windows(batch)):
            cls, conf = self.predict_block(block, batch["image"][i], batch["valid"][i])
            classes.append(cls)
            confidences.append(conf)
            inner = block.relative_to(self.bp.window(block))
            counts.append(int(batch["valid"][i][inner.slices].sum()))
        out = {k: batch[k] for k in ("row", "col", "height", "width")}
        return {
            **out,
            "class": np.stack(classes),
            "confidence": np.stack(confidences),
            "valid_pixels": np.asarray(counts, dtype=np.int64),
            "chips_forwarded": np.full(len(classes), self.chips_forwarded, dtype=np.int64),
            "chips_skipped": np.full(len(classes), self.chips_skipped, dtype=np.int64),
        }

    def predict_block(
        self, block: Window, image: np.ndarray, valid: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(block, block) class ids and confidence x 255; padded to the full block size."""
        import torch

        bp = self.bp
        win = bp.window(block)
        k = len(self.class_ids)
        size = bp.window_size
        norm = self.bundle.normalizer(image, valid)
        acc = np.zeros((k, size, size), dtype=np.float32)
        wsum = np.zeros((size, size), dtype=np.float32)
        # A chip with no valid pixel is not run through the model: every pixel it covers is
        # nodata in the output anyway (valid pixels lie only in chips that hold them).
        chips = [c for c in bp.chips(block) if _any_valid(valid, c.relative_to(win))]
        self.chips_forwarded += len(chips)
        self.chips_skipped += len(bp.chips(block)) - len(chips)
        bs = int(self.settings["batch_size"])
        for start in range(0, len(chips), bs):
            group = chips[start : start + bs]
            rel = [c.relative_to(win) for c in group]
            x = np.stack([norm[:, r.row : r.row_stop, r.col : r.col_stop] for r in rel])
            probs = self._forward(torch.from_numpy(x))
            for p, r in zip(probs, rel, strict=True):  # fixed (row-major) order of summation
                acc[:, r.row : r.row_stop, r.col : r.col_stop] += p * self.weights
                wsum[r.row : r.row_stop, r.col : r.col_stop] += self.weights
        inner = block.relative_to(win)
        acc = acc[:, inner.row : inner.row_stop, inner.col : inner.col_stop]
        wsum = wsum[inner.row : inner.row_stop, inner.col : inner.col_stop]
        ok = valid[inner.row : inner.row_stop, inner.col : inner.col_stop] & (wsum > 0)
        probs = acc / np.where(wsum > 0, wsum, 1.0)
        top = probs.argmax(axis=0)
        cls = np.full((bp.block, bp.block), CLASS_NODATA, dtype=np.uint8)
        conf = np.zeros((bp.block, bp.block), dtype=np.uint8)
        h, w = block.height, block.width
        cls[:h, :w] = np.where(ok, self.class_ids[top], CLASS_NODATA)
        conf[:h, :w] = np.where(ok, np.rint(probs.max(axis=0) * 255).clip(0, 255), 0).astype(
            np.uint8
        )
        return cls, conf

    def _forward(self, x: Any) -> np.ndarray:
        """Softmax probabilities (N, K, c, c) float32, averaged over flips with TTA."""
        import torch

        from w2w.model.models import channels_last_input

        x = channels_last_input(x.to(self.device))
        flips: list[tuple[int, ...]] = [()]
        if self.settings["tta"]:
            flips = [(), (-1,), (-2,), (-2, -1)]
        total = None
        with (
            torch.inference_mode(),
            torch.autocast(self.device.type, torch.bfloat16, enabled=self.bf16),
        ):
            for dims in flips:
                xi = torch.flip(x, dims) if dims else x
                p = torch.softmax(self.model(xi).float(), dim=1)
                p = torch.flip(p, dims) if dims else p
                total = p if total is None else total + p
        assert total is not None
        return (total / len(flips)).contiguous().cpu().numpy()


def _any_valid(valid: np.ndarray, chip: Window) -> bool:
    """Whether a chip (in the read window's pixels) holds a valid pixel."""
    return bool(valid[chip.row : chip.row_stop, chip.col : chip.col_stop].any())
