"""Vector inputs: the state's boundary (AOI) and field labels (polygons or points).

Read with pyogrio (any format GDAL reads: GeoPackage, shapefile, GeoJSON, FlatGeobuf, ...,
local or ``s3://``), reprojected onto the target grid's CRS with GDAL
(``rasterio.warp.transform_geom``), and rasterised block by block with
``rasterio.features``: a pixel is inside a polygon when its centre is (GDAL's rule), a point
labels the one pixel it falls in, and where polygons overlap the one listed **last** in the
file wins (each burns over the ones before it). A per-block rasterisation equals that of the
whole grid, because it is the same rule applied to the same pixel centres.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from w2w.core import storage
from w2w.core.errors import InputError
from w2w.core.grid import Grid, Window

VECTOR_SUFFIXES = (".gpkg", ".shp", ".geojson", ".json", ".fgb", ".gml", ".kml", ".sqlite")


def is_vector(path: str) -> bool:
    """Whether ``path`` names a vector file (by its suffix)."""
    return path.lower().endswith(VECTOR_SUFFIXES)


@dataclass(frozen=True)
class Features:
    """Geometries (GeoJSON mappings, in ``crs_wkt``) and, for labels, a value each."""

    geometries: tuple[dict[str, Any], ...]
    values: tuple[float, ...] | None
    crs_wkt: str
    kinds: frozenset[str]

    def to_crs(self, crs_wkt: str) -> Features:
        """The same features in another CRS (GDAL's transform, antimeridian handled)."""
        from rasterio.warp import transform_geom

        geoms = tuple(transform_geom(self.crs_wkt, crs_wkt, g) for g in self.geometries)
        return Features(geoms, self.values, crs_wkt, self.kinds)


def read_features(
    path: str,
    *,
    role: str,
    layer: str | None = None,
    where: str | None = None,
    field: str | None = None,
) -> Features:
    """Read every feature of a vector file (optionally a layer, and a ``where`` filter in
    OGR SQL), with the values of ``field`` when given."""
    import pyogrio
    import pyogrio.errors
    import shapely

    if not storage.is_remote(path) and not storage.exists(path):
        raise InputError(f"{role} file not found: {path}; check the path")
    source = "/vsis3/" + path[5:] if path.startswith("s3://") else path
    try:
        if field:
            fields = pyogrio.read_info(source, layer=layer)["fields"].tolist()
            if field not in fields:
                raise InputError(
                    f"{role} file {path} has no field '{field}'; its fields are: "
                    f"{', '.join(fields) or 'none'}"
                )
        meta, _, wkb, data = pyogrio.raw.read(
            source, layer=layer, where=where, columns=[field] if field else []
        )
    except (
        pyogrio.errors.DataSourceError,
        pyogrio.errors.DataLayerError,
        pyogrio.errors.FieldError,
    ) as exc:
        raise InputError(f"cannot read {role} file {path} as vector data ({exc})") from None
    if not meta.get("crs"):
        raise InputError(
            f"{role} file {path} has no CRS; assign one (e.g. `ogr2ogr -a_srs EPSG:xxxx`)"
        )
    geoms = [g for g in shapely.from_wkb(wkb) if g is not None and not g.is_empty]
    if not geoms:
        what = f" matching {where!r}" if where else ""
        raise InputError(f"{role} file {path} has no feature{what}; check the file or the filter")
    kinds = frozenset(g.geom_type.removeprefix("Multi") for g in geoms)
    values = None
    if field:
        column = np.asarray(data[0])
        values = tuple(float(v) if v is not None else math.nan for v in column)
    crs = meta["crs"]
    from pyproj import CRS

    return Features(
        tuple(shapely.geometry.mapping(g) for g in geoms),
        values,
        CRS.from_user_input(crs).to_wkt(),
        kinds,
    )


@dataclass(frozen=True)
class AOI:
    """The state's boundary on the target grid's CRS: one (multi)polygon."""

    geometry: dict[str, Any]
    crs_wkt: str
    source: str

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in the target CRS."""
        import shapely

        return tuple(shapely.geometry.shape(self.geometry).bounds)  # type: ignore[return-value]

    def area(self) -> float:
        """Area in the CRS's units squared (m² for a projected CRS)."""
        import shapely

        return float(shapely.geometry.shape(self.geometry).area)

    def mask(self, grid: Grid, window: Window) -> np.ndarray:
        """(h, w) bool: pixels of ``window`` whose centre is inside the boundary."""
        from rasterio.features import geometry_mask

        return geometry_mask(
            [self.geometry],
            (window.height, window.width),
            grid.window_transform(window),
            invert=True,
        )


def read_aoi(path: str, crs_wkt: str, *, layer: str | None = None, where: str | None = None) -> AOI:
    """The union of a vector file's polygons, on ``crs_wkt``."""
    import shapely

    features = read_features(path, role="AOI", layer=layer, where=where)
    if features.kinds - {"Polygon"}:
        raise InputError(
            f"AOI file {path} holds {', '.join(sorted(features.kinds - {'Polygon'}))} "
            "features; a boundary is made of polygons"
        )
    moved = features.to_crs(crs_wkt)
    union = shapely.union_all([shapely.geometry.shape(g) for g in moved.geometries])
    if union.is_empty or union.area == 0:
        raise InputError(f"AOI file {path} covers no area; check the file and its CRS")
    return AOI(shapely.geometry.mapping(union), crs_wkt, path)


@dataclass(frozen=True)
class VectorLabels:
    """Field labels on the target grid's CRS, ready to rasterise block by block."""

    geometries: tuple[dict[str, Any], ...]
    values: tuple[float, ...]
    source: str

    def rasterize(self, grid: Grid, window: Window, fill: float) -> np.ndarray:
        """(h, w) float64 label codes of ``window``; ``fill`` where no feature lies."""
        from rasterio.features import rasterize

        if not self.geometries:
            return np.full((window.height, window.width), fill, dtype=np.float64)
        return rasterize(
            zip(self.geometries, self.values, strict=True),
            out_shape=(window.height, window.width),
            transform=grid.window_transform(window),
            fill=fill,
            dtype="float64",
        )


def read_vector_labels(
    path: str, field: str, crs_wkt: str, *, layer: str | None = None
) -> VectorLabels:
    """Polygons or points with a class code in ``field``, on ``crs_wkt``."""
    features = read_features(path, role="label", layer=layer, field=field)
    unknown = features.kinds - {"Polygon", "Point"}
    if unknown:
        raise InputError(
            f"label file {path} holds {', '.join(sorted(unknown))} features; labels are "
            "polygons (areas of one class) or points (one pixel each)"
        )
    assert features.values is not None
    moved = features.to_crs(crs_wkt)
    return VectorLabels(moved.geometries, features.values, path)
