"""Class tables: ids, names and display colours of land-cover classes, and label values.

A class table is a tuple of :class:`ClassInfo` (stored id, name, colour), kept in every store,
bundle and export. Training and evaluation work with *class indices* (positions in the table
without the unlabelled id); :func:`label_lut` maps stored label ids to them, and
:data:`IGNORE` marks pixels that enter neither a loss nor a metric.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from w2w.core.errors import InputError

#: Stored class value meaning "no class" in mosaics (outside the state, invalid input).
CLASS_NODATA = 255
#: Confidence (top-class probability x 255, uint8) values with a meaning of their own:
#: 0 is nodata; 1 marks a pixel whose class the minimum mapping unit set (the model's
#: probability for that class is unknown). A predicted pixel's confidence is at least 2
#: (for up to 170 classes the top probability is at least 1/170, which rounds to 2 or more).
CONFIDENCE_NODATA = 0
CONFIDENCE_SIEVED = 1
CONFIDENCE_MIN_PREDICTED = 2
#: Label value for pixels that must not enter the loss or the metrics.
IGNORE = 255


@dataclass(frozen=True)
class ClassInfo:
    """One entry of a class table: stored value, name and display colour (RGB)."""

    id: int
    name: str
    color: tuple[int, int, int]

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON attributes."""
        return {"id": self.id, "name": self.name, "color": list(self.color)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClassInfo:
        """Inverse of :meth:`to_dict`."""
        r, g, b = (int(c) for c in d["color"])
        return cls(int(d["id"]), str(d["name"]), (r, g, b))

    def hex_color(self, prefix: str = "") -> str:
        """The colour as hexadecimal RGB, e.g. ``#226E2A`` with ``prefix="#"``."""
        return prefix + "".join(f"{int(v):02X}" for v in self.color)

    @property
    def rgb01(self) -> tuple[float, float, float]:
        """The colour as RGB fractions in [0, 1] (matplotlib's form)."""
        r, g, b = self.color
        return r / 255, g / 255, b / 255


#: Conventional colours for common land-cover names (matched on a word of the name).
_NAMED_COLOURS: dict[str, tuple[int, int, int]] = {
    "forest": (34, 110, 42),
    "tree": (34, 110, 42),
    "woodland": (56, 130, 60),
    "shrub": (168, 150, 70),
    "scrub": (168, 150, 70),
    "grass": (150, 205, 90),
    "herbaceous": (150, 205, 90),
    "pasture": (190, 220, 110),
    "crop": (240, 200, 60),
    "agri": (240, 200, 60),
    "water": (40, 100, 220),
    "wetland": (90, 170, 190),
    "urban": (210, 40, 40),
    "built": (210, 40, 40),
    "bare": (200, 170, 130),
    "barren": (200, 170, 130),
    "soil": (200, 170, 130),
    "sand": (230, 215, 160),
    "snow": (240, 240, 250),
    "ice": (240, 240, 250),
    "cloud": (255, 255, 255),
}

#: Distinct colours for classes with no conventional one (Tableau 10, then more).
_PALETTE: list[tuple[int, int, int]] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
    (174, 199, 232),
    (255, 187, 120),
    (152, 223, 138),
    (255, 152, 150),
    (197, 176, 213),
]


def default_colour(class_id: int, name: str) -> tuple[int, int, int]:
    """A colour for a class: the conventional one for its name, else a palette entry."""
    lowered = name.lower()
    for key, colour in _NAMED_COLOURS.items():
        if key in lowered:
            return colour
    return _PALETTE[class_id % len(_PALETTE)]


def class_table(ids: list[int], names: dict[int, str] | None = None) -> list[ClassInfo]:
    """A class table for ``ids``, named from ``names`` (else ``class_<id>``), with colours."""
    names = names or {}
    table = []
    for cid in sorted(set(ids)):
        name = names.get(cid, f"class_{cid}")
        table.append(ClassInfo(cid, name, default_colour(cid, name)))
    return table


def check_unique(classes: list[ClassInfo] | tuple[ClassInfo, ...], where: str) -> None:
    """Refuse a class table that repeats an id or a name (reports keyed by either would
    silently drop one)."""
    from collections import Counter

    for key, values in (("id", [c.id for c in classes]), ("name", [c.name for c in classes])):
        repeated = [v for v, n in Counter(values).items() if n > 1]
        if repeated:
            raise InputError(
                f"{where}: class {key} {repeated[0]!r} appears more than once; give every "
                f"class a unique {key}"
            )


def label_lut(
    classes: tuple[ClassInfo, ...] | list[ClassInfo], unlabelled: int | None
) -> np.ndarray:
    """256-entry lookup: stored label id -> class index, anything else (unlabelled) -> IGNORE."""
    lut = np.full(256, IGNORE, dtype=np.uint8)
    for index, c in enumerate(classes):
        if c.id != unlabelled:
            lut[c.id] = index
    return lut
