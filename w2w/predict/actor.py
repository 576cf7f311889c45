"""The inference actor of prediction: loads the bundle once, then predicts block after block.

The per-block work -- normalise, forward over the block's chips, blend, argmax, quantise --
runs on the model's device in :class:`~w2w.predict.engine.BlockEngine`; this actor only
loads the bundle, stages every block of a Ray batch onto the device before predicting the
first (so on a GPU the copies of later blocks overlap the forward passes of earlier ones),
and returns uint8 classes and confidence. Only this actor imports torch; read and write tasks
stay small.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from w2w.predict.plan import BlockPlan, batch_column, batch_windows


class Predictor:
    """Predict stage (actor): loads the bundle once, predicts the blocks of each batch."""

    def __init__(self, bundle_url: str, plan: dict[str, int], settings: dict[str, Any]) -> None:
        from w2w.core.errors import W2WError

        # A user's error found here (the bundle changed since the driver checked it) is
        # raised by the first call, as that task's error: an actor whose set-up raises dies
        # as a system failure, which Ray reports with retry notices and stack traces before
        # w2w's one error line.
        self.error: W2WError | None = None
        try:
            self._set_up(bundle_url, plan, settings)
        except W2WError as exc:
            self.error = exc

    def _set_up(self, bundle_url: str, plan: dict[str, int], settings: dict[str, Any]) -> None:
        import torch

        from w2w.model.bundle import load_bundle
        from w2w.predict.engine import BlockEngine, EngineSettings, device_of, resolve_precision

        self.bp = BlockPlan(**plan)
        self.probabilities = bool(settings.get("probabilities", False))
        bundle = load_bundle(bundle_url)
        device = device_of(bool(settings["use_gpu"]))
        if device.type == "cpu":
            torch.set_num_threads(max(1, int(settings.get("threads", 1))))
        self.engine = BlockEngine(
            bundle.model(str(device)),
            bundle.normalizer,
            [c.id for c in bundle.classes],
            self.bp,
            device,
            EngineSettings(
                batch_size=int(settings["batch_size"]),
                tta=bool(settings["tta"]),
                precision=resolve_precision(str(settings.get("precision", "auto")), device.type),
                compile=bool(settings.get("compile", False)),
            ),
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.error is not None:
            raise self.error
        blocks = batch_windows(batch)
        staged = [
            self.engine.stage(block, batch["image"][i], batch["valid"][i])
            for i, block in enumerate(blocks)
        ]
        classes, confidences, probabilities, counts = [], [], [], []
        for i, block in enumerate(blocks):
            if self.probabilities:
                cls, conf, probs = self.engine.predict_with_probabilities(block, staged[i])
                probabilities.append(probs)
            else:
                cls, conf = self.engine.predict(block, staged[i])
            classes.append(cls)
            confidences.append(conf)
            inner = block.relative_to(self.bp.window(block))
            counts.append(int(batch["valid"][i][inner.slices].sum()))
        out = {k: batch[k] for k in ("row", "col", "height", "width")}
        if self.probabilities:
            out["probabilities"] = batch_column(probabilities)
        return {
            **out,
            "class": batch_column(classes),
            "confidence": batch_column(confidences),
            "valid_pixels": np.asarray(counts, dtype=np.int64),
            "chips_forwarded": np.asarray([len(s.chips) for s in staged], dtype=np.int64),
            "chips_skipped": np.asarray([s.skipped for s in staged], dtype=np.int64),
        }
