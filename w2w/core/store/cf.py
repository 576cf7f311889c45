"""CF and Zarr-convention attributes: what lets other tools read w2w's stores as they are.

* The root group declares the Zarr ``proj`` and ``spatial`` conventions (v0.1) in
  ``zarr_conventions`` and carries their attributes: ``proj:wkt2`` (WKT2 2019),
  ``proj:code`` where the CRS has an EPSG code, ``spatial:dimensions``, ``spatial:transform``
  (rasterio's coefficient order), ``spatial:shape``, ``spatial:bbox`` and
  ``spatial:registration``. The grid keeps its own WKT (``w2w.grid.crs_wkt``, GDAL's WKT1)
  for w2w: identities hash it, so its spelling does not change.
* A mosaic's ``class`` is a CF flag variable: ``flag_values`` (the class ids),
  ``flag_meanings`` (the class names as CF words) and ``_FillValue`` 255, so plain
  ``xarray.open_zarr`` masks nodata (to NaN, as floats) and cf-xarray names the classes.
* A mosaic's ``confidence`` is CF-packed: ``scale_factor`` 1/255, ``add_offset`` 0 and
  ``_FillValue`` 0, so ``xarray.open_zarr`` decodes it to floats in [0, 1] with NaN for nodata.

With Zarr format 3 xarray does not take an array's ``fill_value`` as ``_FillValue`` (its
``use_zarr_fill_value_as_mask`` defaults to False there): it reads ``_FillValue`` from the
attributes, so it is written there, equal to the array's ``fill_value``.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from w2w.core.classes import CLASS_NODATA, CONFIDENCE_NODATA, CONFIDENCE_SIEVED, ClassInfo
from w2w.core.grid import Grid

#: The Convention Metadata Objects of the Zarr conventions the root group follows, as the
#: conventions' v0.1 releases publish them (zarr-conventions/proj, zarr-conventions/spatial).
PROJ_CONVENTION: dict[str, str] = {
    "uuid": "f17cb550-5864-4468-aeb7-f3180cfb622f",
    "schema_url": "https://raw.githubusercontent.com/zarr-conventions/proj/refs/tags/v0.1/schema.json",
    "spec_url": "https://github.com/zarr-conventions/proj/blob/v0.1/README.md",
    "name": "proj",
    "description": "Coordinate reference system information for geospatial data",
}
SPATIAL_CONVENTION: dict[str, str] = {
    "uuid": "689b58e2-cf7b-45e0-9fff-9cfc0883d6b4",
    "schema_url": "https://raw.githubusercontent.com/zarr-conventions/spatial/refs/tags/v0.1/schema.json",
    "spec_url": "https://github.com/zarr-conventions/spatial/blob/v0.1/README.md",
    "name": "spatial",
    "description": "Spatial coordinate information",
}
#: Stored confidence x this = the top-class probability.
CONFIDENCE_SCALE = 1 / 255


def wkt2(crs_wkt: str) -> str:
    """The CRS of ``crs_wkt`` (any WKT) as WKT2 (ISO 19162:2019)."""
    from rasterio.crs import CRS

    return str(CRS.from_wkt(crs_wkt).to_wkt(version="WKT2_2019"))


def convention_attrs(grid: Grid) -> dict[str, Any]:
    """Root-group attributes of the Zarr ``proj`` and ``spatial`` conventions, declared."""
    epsg = grid.crs.to_epsg(confidence_threshold=100)
    attrs: dict[str, Any] = {
        "zarr_conventions": [dict(PROJ_CONVENTION), dict(SPATIAL_CONVENTION)],
        "proj:wkt2": wkt2(grid.crs_wkt),
        "spatial:dimensions": ["y", "x"],
        "spatial:transform": [float(v) for v in list(grid.transform)[:6]],
        "spatial:shape": [grid.height, grid.width],
        "spatial:bbox": _bbox(grid),
        "spatial:registration": "pixel",
    }
    if epsg:
        attrs["proj:code"] = f"EPSG:{epsg}"
    return attrs


def _bbox(grid: Grid) -> list[float]:
    """[xmin, ymin, xmax, ymax] of the grid's four corners (exact for a rotated grid too)."""
    corners = [grid.transform @ (c, r) for c in (0, grid.width) for r in (0, grid.height)]
    xs, ys = [x for x, _ in corners], [y for _, y in corners]
    return [float(min(xs)), float(min(ys)), float(max(xs)), float(max(ys))]


def flag_meanings(classes: list[ClassInfo] | tuple[ClassInfo, ...]) -> list[str]:
    """One CF flag meaning per class: its name as one word of letters, digits and ``_``
    (lower case, accents dropped, other characters joined by ``_``); ``class_<id>`` for a name with
    none, and ``<word>_<id>`` where two names give the same word."""
    words: list[str] = []
    for c in classes:
        ascii_name = unicodedata.normalize("NFKD", c.name).encode("ascii", "ignore").decode()
        word = re.sub(r"[^a-z0-9]+", "_", ascii_name.lower()).strip("_") or f"class_{c.id}"
        if word in words:
            word = f"{word}_{c.id}"
        words.append(word)
    return words


def class_attrs(classes: list[ClassInfo] | tuple[ClassInfo, ...]) -> dict[str, Any]:
    """CF attributes of a mosaic's ``class`` array (flags only when there are classes)."""
    attrs: dict[str, Any] = {
        "long_name": "land-cover class",
        "_FillValue": CLASS_NODATA,
        "nodata": CLASS_NODATA,
    }
    if classes:
        attrs["flag_values"] = [int(c.id) for c in classes]
        attrs["flag_meanings"] = " ".join(flag_meanings(classes))
    return attrs


def confidence_attrs() -> dict[str, Any]:
    """CF attributes of a mosaic's ``confidence`` array: packed uint8 probabilities."""
    return {
        "long_name": "probability of the mapped class",
        "units": "1",
        "scale_factor": CONFIDENCE_SCALE,
        "add_offset": 0.0,
        "_FillValue": CONFIDENCE_NODATA,
        "comment": (
            f"top-class probability x 255, rounded; {CONFIDENCE_NODATA} = nodata; "
            f"{CONFIDENCE_SIEVED} (decoded {CONFIDENCE_SIEVED}/255) marks a pixel whose class "
            "the minimum mapping unit set, whose probability is unknown"
        ),
    }
