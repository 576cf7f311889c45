"""How a map looks outside w2w: a quicklook PNG with a legend, and a QGIS layer style."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np
import rasterio
from rasterio.enums import Resampling

from w2w.core.classes import ClassInfo


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
