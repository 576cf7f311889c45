"""Label codes to class ids: the value map, label nodata, unlabelled, and the checks.

A label raster (integer, or float holding integral codes, as often exported) or the values of
a vector label field are *codes*; ``--label-map`` maps codes to class ids, codes equal to
the label nodata (and NaN, and pixels no label covers) become the unlabelled id, and the
rest must be class ids 0-254. A code that is not a whole number, or is no class id after the
map, is an error that names it and a pixel where it occurs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from w2w.core.errors import InputError
from w2w.core.grid import Window


@dataclass(frozen=True)
class LabelCodes:
    """How label codes become class ids."""

    keys: tuple[int, ...]
    values: tuple[int, ...]
    nodata: float | None
    unlabelled: int
    source: str
    #: With a mapping, what a code it does not name becomes: an error, 'no label', or itself.
    rest: str = "error"

    @classmethod
    def from_map(
        cls,
        mapping: dict[int, int],
        nodata: float | None,
        unlabelled: int,
        source: str,
        rest: str = "error",
    ) -> LabelCodes:
        """From a ``code -> class id`` mapping."""
        keys = tuple(sorted(mapping))
        return cls(keys, tuple(mapping[k] for k in keys), nodata, unlabelled, source, rest)

    def apply(
        self, raw: np.ndarray, window: Window, missing: np.ndarray | None = None
    ) -> np.ndarray:
        """(h, w) uint8 class ids of the codes ``raw`` (any number type); ``missing`` marks
        pixels no label covers. ``window`` places error messages on the scene's grid."""
        gone = np.zeros(raw.shape, dtype=bool) if missing is None else missing.copy()
        if raw.dtype.kind == "f":
            gone |= np.isnan(raw)
        if self.nodata is not None:
            gone |= raw == self.nodata
        codes = raw
        if raw.dtype.kind == "f":
            fractional = ~gone & (raw != np.floor(raw))
            if fractional.any():
                r, c = (int(v) for v in np.argwhere(fractional)[0])
                raise InputError(
                    f"label {self.source} holds {float(raw[r, c]):g} at pixel (row "
                    f"{window.row + r}, col {window.col + c}), which is not a whole-number class "
                    "code; fix the "
                    "labels or give their nodata value with --label-nodata"
                )
            codes = np.where(gone, 0, raw).astype(np.int64)
        else:
            codes = raw.astype(np.int64)
        out = codes.copy()
        for k, v in zip(self.keys, self.values, strict=True):
            out[codes == k] = v
        if self.keys and self.rest != "keep":
            rest = ~gone & ~np.isin(codes, np.asarray(self.keys, dtype=np.int64))
            if rest.any() and self.rest == "error":
                values = sorted(set(np.unique(codes[rest]).tolist()))[:8]
                raise InputError(
                    f"label {self.source} has codes {values} that --label-map does not name; "
                    "add them to the map, or pass --label-map-rest unlabelled (no label) or "
                    "keep (each code its own class)"
                )
            out[rest] = self.unlabelled
        out[gone] = self.unlabelled
        bad = (out < 0) | (out > 254)
        if bad.any():
            values = sorted(set(np.unique(codes[bad]).tolist()))[:8]
            raise InputError(
                f"label {self.source} has values {values} that are not class ids 0-254; map "
                "them with --label-map (e.g. '-5=0;2,3,6=1') or set --label-nodata"
            )
        return out.astype(np.uint8)
