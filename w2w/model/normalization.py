"""Per-band normalisation of imagery, identical in training and prediction.

Both methods come from the statistics stored by ingest and travel in the model bundle:

* ``percentile``: clip each band to its [2nd, 98th] percentile and scale that range to
  [0, 1] -- robust to saturated and dark outliers, the usual choice for reflectance;
* ``zscore``: subtract the band mean and divide by its standard deviation.

Invalid pixels (nodata, NaN) become 0 after normalisation; a separate mask says where they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from w2w.core.errors import InputError
from w2w.core.stats import BandStats

Method = Literal["percentile", "zscore"]


@dataclass(frozen=True)
class Normalizer:
    """Affine per-band transform ``(clip(x, lo, hi) - offset) / scale`` (no clip for zscore)."""

    method: Method
    offset: tuple[float, ...]
    scale: tuple[float, ...]
    lo: tuple[float, ...]
    hi: tuple[float, ...]

    @classmethod
    def from_stats(
        cls, stats: dict[str, BandStats], bands: list[str], method: Method
    ) -> Normalizer:
        """Build from per-band statistics (band order as given)."""
        missing = [b for b in bands if b not in stats]
        if missing:
            raise InputError(
                f"no statistics for bands {missing}; re-run `w2w ingest` for the scene"
            )
        offset, scale, lo, hi = [], [], [], []
        for b in bands:
            s = stats[b]
            if method == "percentile":
                low, high = s.p2, s.p98
                if not high > low:  # constant band: fall back to min/max, then to 1
                    low, high = s.min, s.max if s.max > s.min else s.min + 1.0
                offset.append(low)
                scale.append(high - low)
                lo.append(low)
                hi.append(high)
            else:
                offset.append(s.mean)
                scale.append(s.std if s.std > 0 else 1.0)
        return cls(method, tuple(offset), tuple(scale), tuple(lo), tuple(hi))

    def __call__(self, image: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """(band, h, w) -> float32 normalised; invalid pixels set to 0."""
        x = image.astype(np.float32, copy=True)
        off = np.asarray(self.offset, dtype=np.float32)[:, None, None]
        sc = np.asarray(self.scale, dtype=np.float32)[:, None, None]
        if self.lo:
            lo = np.asarray(self.lo, dtype=np.float32)[:, None, None]
            hi = np.asarray(self.hi, dtype=np.float32)[:, None, None]
            np.clip(x, lo, hi, out=x)
        x -= off
        x /= sc
        if valid is not None:
            x[:, ~valid] = 0.0
        np.nan_to_num(x, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        return x

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, stored in the model bundle."""
        return {
            "method": self.method,
            "offset": list(self.offset),
            "scale": list(self.scale),
            "lo": [float(v) for v in self.lo],
            "hi": [float(v) for v in self.hi],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalizer:
        """Inverse of :meth:`to_dict`."""
        return cls(
            d["method"],
            tuple(float(v) for v in d["offset"]),
            tuple(float(v) for v in d["scale"]),
            tuple(float(v) for v in d["lo"]),
            tuple(float(v) for v in d["hi"]),
        )
