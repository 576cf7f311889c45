"""How a map looks outside w2w: a quicklook PNG with a legend, a QGIS layer style (``.qml``)
and an OGC Styled Layer Descriptor (``.sld``, SLD 1.0.0) for map servers (GeoServer,
MapServer) and QGIS, with :func:`sld_asset`, its entry for the STAC Item's assets."""

from __future__ import annotations

import io
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np
import rasterio
from rasterio.enums import Resampling

from w2w.core.classes import CLASS_NODATA, ClassInfo

SLD_NAMESPACE = "http://www.opengis.net/sld"


def render_quicklook(
    cog: Path | str, classes: tuple[ClassInfo, ...], size: int
) -> tuple[bytes, tuple[int, int]]:
    """A PNG of the class COG whose long edge is ``size`` px, with a legend; (png, (h, w)).

    The read is decimated, so GDAL serves it from the overview level nearest the requested
    size (built with mode resampling); the picture is composed with Pillow at 4 bytes a
    pixel and only the small legend is drawn by matplotlib: memory is the picture's, not
    the map's.
    """
    from PIL import Image

    with rasterio.open(cog) as ds:
        scale = size / max(ds.height, ds.width)
        h, w = max(1, round(ds.height * scale)), max(1, round(ds.width * scale))
        data = ds.read(1, out_shape=(h, w), resampling=Resampling.nearest)
    lut = np.full((256, 3), 255, dtype=np.uint8)  # nodata and unknown values: white
    for c in classes:
        lut[c.id] = c.color
    picture = Image.fromarray(lut[data])  # (h, w, 3) uint8: RGB
    del data
    legend = _legend_image(classes, fontsize=max(6.0, min(18.0, min(h, w) / 70)))
    margin = max(2, min(h, w) // 100)
    room = (w - 2 * margin, h - 2 * margin)
    if room[0] > 0 and room[1] > 0:
        if legend.width > room[0] or legend.height > room[1]:
            fit = min(room[0] / legend.width, room[1] / legend.height)
            legend = legend.resize(
                (max(1, int(legend.width * fit)), max(1, int(legend.height * fit))),
                Image.Resampling.LANCZOS,
            )
        picture.paste(legend, (margin, h - margin - legend.height), legend)
    buf = io.BytesIO()
    picture.save(buf, format="PNG", optimize=True)
    return buf.getvalue(), (h, w)


def _legend_image(classes: tuple[ClassInfo, ...], *, fontsize: float) -> Any:
    """The legend (class colour swatches and names) as a small RGBA Pillow image."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    from PIL import Image

    fig = Figure(figsize=(8, 8), dpi=100)
    canvas = FigureCanvasAgg(fig)
    handles = [Patch(facecolor=c.rgb01, edgecolor="0.3", label=c.name) for c in classes]
    legend = fig.legend(
        handles=handles, loc="lower left", fontsize=fontsize, framealpha=0.9, handlelength=1.2
    )
    fig.patch.set_alpha(0.0)
    canvas.draw()
    box = legend.get_window_extent(canvas.get_renderer())
    full = Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba())
    height = full.height
    crop = (
        max(0, int(box.x0)),
        max(0, int(height - box.y1)),
        min(full.width, math.ceil(box.x1)),
        min(height, math.ceil(height - box.y0)),
    )
    return full.crop(crop).copy()


def qgis_style(classes: tuple[ClassInfo, ...]) -> str:
    """A QGIS layer style (.qml): paletted renderer with class colours and names."""
    entries = "\n".join(
        f'        <paletteEntry value="{c.id}" color="{c.hex_color("#").lower()}" '
        f'alpha="255" label={quoteattr(c.name)}/>'
        for c in classes
    )
    return (
        "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
        '<qgis version="3.28.0" styleCategories="Symbology">\n'
        "  <pipe>\n"
        '    <rasterrenderer type="paletted" band="1" opacity="1" alphaBand="-1" '
        'nodataColor="">\n'
        "      <rasterTransparency/>\n"
        "      <colorPalette>\n"
        f"{entries}\n"
        "      </colorPalette>\n"
        "    </rasterrenderer>\n"
        "  </pipe>\n"
        "</qgis>\n"
    )


def sld_style(classes: tuple[ClassInfo, ...], *, layer: str) -> str:
    """An OGC SLD 1.0.0 style for the class COG: a RasterSymbolizer whose ColorMap of type
    ``values`` has one entry per class (value, colour, name), ascending, and a transparent
    entry for nodata."""

    def el(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
        node = ET.SubElement(parent, tag, attrs)
        node.text = text
        return node

    # Unprefixed names in the SLD namespace, declared on the root (ElementTree would
    # otherwise invent prefixes, or refuse unqualified attributes beside a default one).
    root = ET.Element(
        "StyledLayerDescriptor",
        {
            "version": "1.0.0",
            "xmlns": SLD_NAMESPACE,
            "xmlns:xsi": "http://www.w3.org/2001/XMLSchema-instance",
            "xsi:schemaLocation": (
                f"{SLD_NAMESPACE} http://schemas.opengis.net/sld/1.0.0/StyledLayerDescriptor.xsd"
            ),
        },
    )
    named = el(root, "NamedLayer")
    el(named, "Name", layer)
    style = el(named, "UserStyle")
    el(style, "Name", f"{layer}-classes")
    el(style, "Title", "Land-cover classes")
    symbolizer = el(el(el(style, "FeatureTypeStyle"), "Rule"), "RasterSymbolizer")
    el(symbolizer, "Opacity", "1.0")
    colormap = el(symbolizer, "ColorMap", type="values")
    for c in sorted(classes, key=lambda c: c.id):
        el(colormap, "ColorMapEntry", color=c.hex_color("#"), quantity=str(c.id), label=c.name)
    el(
        colormap,
        "ColorMapEntry",
        color="#000000",
        quantity=str(CLASS_NODATA),
        label="No data",
        opacity="0",
    )
    ET.indent(root)
    body = ET.tostring(root, encoding="unicode")
    return f'<?xml version="1.0" encoding="UTF-8"?>\n{body}\n'


def sld_asset(href: str) -> dict[str, Any]:
    """The SLD as a STAC asset (``href`` relative to the Item)."""
    return {
        "href": href,
        "type": "application/vnd.ogc.sld+xml",
        "roles": ["metadata", "style"],
        "title": "OGC SLD 1.0.0 style: class colours and names",
    }
