"""The state's own grid: a CRS, a pixel size, and bounds snapped to whole pixels.

As ``gdalwarp -tap``: the bounds (from the boundary, or given) are widened to whole
multiples of the resolution, ``xmin = floor(xmin / res) * res``, ``xmax = ceil(xmax / res) *
res`` (the same for y), so grids made for neighbouring states, or for other dates, line up
pixel for pixel.
"""

from __future__ import annotations

import math

from affine import Affine
from rasterio.crs import CRS

from w2w.core.errors import ConfigError
from w2w.core.grid import Grid

#: Bounds within this share of a pixel of a multiple of the resolution are taken as on it
#: (floating-point round-off in transformed coordinates).
SNAP_TOLERANCE = 1e-6
#: The largest target grid w2w makes: 10^12 px (400 times Chihuahua at 10 m). A grid beyond
#: it is almost surely a resolution in the wrong unit, and listing its blocks alone would
#: take more memory than a machine has.
MAX_PIXELS = 10**12


def parse_crs(text: str) -> str:
    """The WKT of a CRS given as ``EPSG:xxxx``, a PROJ string or WKT; a one-line error
    otherwise."""
    try:
        crs = CRS.from_user_input(text)
    except Exception:  # noqa: BLE001 - rasterio raises several types
        raise ConfigError(
            f"'{text}' is not a CRS w2w knows; give an EPSG code (e.g. EPSG:6372), a PROJ "
            "string or WKT"
        ) from None
    if not crs.is_projected:
        raise ConfigError(
            f"{text} is not a projected CRS; map a state on a projected grid in metres (e.g. "
            "EPSG:6372 for Mexico, or its UTM zone) so that pixels have one size everywhere"
        )
    return crs.to_wkt()


def snapped_grid(
    crs_wkt: str, resolution: float, bounds: tuple[float, float, float, float]
) -> Grid:
    """The grid of ``resolution`` px on ``crs_wkt`` that covers ``bounds`` (left, bottom,
    right, top), its edges on whole multiples of the resolution."""
    left, bottom, right, top = bounds
    if not (right > left and top > bottom):
        raise ConfigError(f"bounds {bounds} are empty: give (left, bottom, right, top)")

    def down(v: float) -> float:
        return math.floor(v / resolution + SNAP_TOLERANCE) * resolution

    def up(v: float) -> float:
        return math.ceil(v / resolution - SNAP_TOLERANCE) * resolution

    x0, x1, y0, y1 = down(left), up(right), down(bottom), up(top)
    width = round((x1 - x0) / resolution)
    height = round((y1 - y0) / resolution)
    if width * height > MAX_PIXELS:
        raise ConfigError(
            f"resolution {resolution:g} over bounds {tuple(round(b, 3) for b in bounds)} makes "
            f"a grid of {height:,} x {width:,} px, more than the {MAX_PIXELS:.0e} w2w maps; "
            "check --resolution (in the CRS's units, metres for a projected CRS) and --bounds"
        )
    return Grid(crs_wkt, Affine(resolution, 0.0, x0, 0.0, -resolution, y1), height, width)
