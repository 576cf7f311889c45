"""Class tables: ids, names and display colours of land-cover classes."""

from __future__ import annotations

from w2w.store import ClassInfo

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
