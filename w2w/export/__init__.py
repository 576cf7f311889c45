"""The export stage: a mosaic into files GIS tools and catalogues take as they are.

:mod:`.config` (settings), :mod:`.cog` (the streamed COG and its checks), :mod:`.stac`
(the STAC Item), :mod:`.styles` (quicklook, QGIS style and SLD), :mod:`.pam` (class names and
raster attribute table for GDAL, in a sidecar), :mod:`.vector` (the map as
polygons, merged across block borders), :mod:`.run` (the set of files, published together).
"""

from typing import TYPE_CHECKING

from w2w.core.lazy import lazy_exports, make_callable

if TYPE_CHECKING:
    from w2w.export.config import ExportConfig, export_targets
    from w2w.export.run import ExportResult, export

__all__ = ["ExportConfig", "ExportResult", "export", "export_targets"]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "ExportConfig": ".config",
        "ExportResult": ".run",
        "export": "w2w.api",
        "export_targets": ".config",
    },
)

# ``w2w.export(cfg)`` runs the stage through the registry, as its command does (w2w.api).
make_callable(__name__, "w2w.api:export")
