"""Class names where GIS tools look for them: a GDAL PAM sidecar beside the class COG.

GeoTIFF has no place for a raster attribute table, so GDAL keeps one in a *PAM* (persistent
auxiliary metadata) file beside the image, ``map.tif.aux.xml``, and reads it whenever it
opens ``map.tif`` -- ``gdalinfo``, QGIS, ArcGIS and everything built on GDAL. For band 1
(the classes) the sidecar holds:

* ``CategoryNames``: one name per value 0 .. the largest class id, empty for values no
  class uses (255 is the band's nodata and needs none); ``gdalinfo`` lists them under
  ``Categories:``;
* a thematic ``GDALRasterAttributeTable``, one row per class: ``Value`` (MinMax usage),
  ``Class_name`` (Name), ``Red``/``Green``/``Blue``/``Alpha`` (the class colour) and
  ``Count`` (PixelCount: the class's pixels in the map). Count is a real column because a
  GDAL integer column has 32 bits and a statewide class can have more pixels than that
  (a double holds every count up to 2**53 exactly).

The sidecar is written after the COG has been written and validated (the COG is never
touched again) and is published with it as one set. In ``confidence="band"`` mode it
describes band 1 only; the confidence COG gets none.

:func:`sidecar_asset` is the sidecar's entry for the STAC Item's assets.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import numpy as np

from w2w.core.classes import ClassInfo

#: GDAL's ``GDALRATFieldType`` and ``GDALRATFieldUsage`` values (gdal.h) of the columns here.
_INTEGER, _REAL, _STRING = 0, 1, 2
_USAGE = {"PixelCount": 1, "Name": 2, "MinMax": 5, "Red": 6, "Green": 7, "Blue": 8, "Alpha": 9}
#: The table's columns: (name, GDAL field type, GDAL usage).
RAT_COLUMNS: tuple[tuple[str, int, str], ...] = (
    ("Value", _INTEGER, "MinMax"),
    ("Class_name", _STRING, "Name"),
    ("Red", _INTEGER, "Red"),
    ("Green", _INTEGER, "Green"),
    ("Blue", _INTEGER, "Blue"),
    ("Alpha", _INTEGER, "Alpha"),
    ("Count", _REAL, "PixelCount"),
)


def pam_sidecar(classes: tuple[ClassInfo, ...], counts: np.ndarray) -> str:
    """The ``.aux.xml`` text for the class band: category names and a thematic RAT.

    ``counts`` holds the pixels per stored value (256 entries, as the export counts them).
    """
    root = ET.Element("PAMDataset")
    band = ET.SubElement(root, "PAMRasterBand", band="1")
    names = ET.SubElement(band, "CategoryNames")
    by_id = {c.id: c.name for c in classes}
    for value in range(max(by_id) + 1):
        ET.SubElement(names, "Category").text = by_id.get(value, "")
    table = ET.SubElement(band, "GDALRasterAttributeTable", tableType="thematic")
    for index, (name, kind, usage) in enumerate(RAT_COLUMNS):
        field = ET.SubElement(table, "FieldDefn", index=str(index))
        ET.SubElement(field, "Name").text = name
        ET.SubElement(field, "Type").text = str(kind)
        ET.SubElement(field, "Usage").text = str(_USAGE[usage])
    for row_index, c in enumerate(sorted(classes, key=lambda c: c.id)):
        row = ET.SubElement(table, "Row", index=str(row_index))
        values = (c.id, c.name, *c.color, 255, float(counts[c.id]))
        for value in values:
            ET.SubElement(row, "F").text = repr(value) if isinstance(value, float) else str(value)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def sidecar_asset(href: str) -> dict[str, Any]:
    """The sidecar as a STAC asset (``href`` relative to the Item)."""
    return {
        "href": href,
        "type": "application/xml",
        "roles": ["metadata"],
        "title": "GDAL PAM sidecar of the classes: category names and raster attribute table",
    }
