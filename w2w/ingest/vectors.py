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

import contextlib
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from w2w.core import storage
from w2w.core.errors import InputError
from w2w.core.grid import Grid, Window

log = logging.getLogger("w2w")

VECTOR_SUFFIXES = (".gpkg", ".shp", ".geojson", ".json", ".fgb", ".gml", ".kml", ".sqlite")


def is_vector(path: str) -> bool:
    """Whether ``path`` names a vector file (by its suffix)."""
    return path.lower().endswith(VECTOR_SUFFIXES)


@contextlib.contextmanager
def ogr_env(path: str) -> Iterator[None]:
    """Pyogrio's GDAL (its own, not rasterio's) configured for ``path`` as every other
    object-storage read is (:func:`w2w.core.storage.gdal_options`), restored afterwards."""
    import pyogrio

    options = storage.gdal_options(path)
    before = {k: pyogrio.get_gdal_config_option(k) for k in options}
    pyogrio.set_gdal_config_options(options)
    try:
        yield
    finally:
        pyogrio.set_gdal_config_options(before)


@dataclass(frozen=True)
class Features:
    """Geometries (GeoJSON mappings, in ``crs_wkt``) and, for labels, a value each."""

    geometries: tuple[dict[str, Any], ...]
    values: tuple[Any, ...] | None
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
    source = storage.gdal_path(path)
    try:
        with ogr_env(path):
            meta, wkb, column = _read_raw(source, path, role, layer, where, field)
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
    shapes = shapely.from_wkb(wkb)
    keep = [i for i, g in enumerate(shapes) if g is not None and not g.is_empty]
    if not keep:
        what = f" matching {where!r}" if where else ""
        raise InputError(f"{role} file {path} has no feature{what}; check the file or the filter")
    if len(keep) < len(shapes):
        log.warning(
            "%s file %s: %d features without a geometry (NULL or empty) are left out",
            role,
            path,
            len(shapes) - len(keep),
        )
    geoms = [shapes[i] for i in keep]
    kinds = frozenset(g.geom_type.removeprefix("Multi") for g in geoms)
    values = tuple(column[i] for i in keep) if column is not None else None
    from pyproj import CRS

    return Features(
        tuple(shapely.geometry.mapping(g) for g in geoms),
        values,
        CRS.from_user_input(meta["crs"]).to_wkt(),
        kinds,
    )


def _read_raw(
    source: str, path: str, role: str, layer: str | None, where: str | None, field: str | None
) -> tuple[dict[str, Any], Any, list[Any] | None]:
    """Pyogrio's raw read: metadata, WKB geometries, and the values of ``field``."""
    import pyogrio

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
    return meta, wkb, (list(np.asarray(data[0], dtype=object)) if field else None)


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
    shapes = [shapely.geometry.shape(g) for g in moved.geometries]
    invalid = [i for i, g in enumerate(shapes) if not g.is_valid]
    if invalid:  # e.g. a self-intersecting ring: repaired as GDAL's -makevalid does
        log.warning(
            "AOI file %s: %d invalid polygon(s) (e.g. self-intersecting) repaired with "
            "make_valid; check the boundary if its area looks wrong",
            path,
            len(invalid),
        )
        shapes = [shapely.make_valid(g) if not g.is_valid else g for g in shapes]
        shapes = [_polygonal(g) for g in shapes]
    union = shapely.union_all(shapes)
    if union.is_empty or union.area == 0:
        raise InputError(f"AOI file {path} covers no area; check the file and its CRS")
    return AOI(shapely.geometry.mapping(union), crs_wkt, path)


def _polygonal(geometry: Any) -> Any:
    """The polygons of a repaired geometry (make_valid may add lines or points)."""
    import shapely

    parts = shapely.get_parts(geometry)
    polys = [p for p in parts if p.geom_type in ("Polygon", "MultiPolygon")]
    return shapely.union_all(polys) if polys else shapely.Polygon()


@dataclass(frozen=True, eq=False)
class VectorLabels:
    """Field labels on the target grid's CRS, ready to rasterise block by block.

    Held as WKB with each feature's bounding box: a block rasterises only the features whose
    box meets it, so a block's cost follows the features near it, not every feature of the
    state (which made ingest's cost grow with the square of the state's area), and every
    task holds the features in a sixth of the memory GeoJSON mappings took."""

    wkb: tuple[bytes, ...]
    #: (n, 4) left, bottom, right, top of each feature.
    bounds: np.ndarray = field(repr=False)
    values: tuple[float, ...]
    source: str

    @classmethod
    def from_mappings(
        cls, geometries: tuple[dict[str, Any], ...], values: tuple[float, ...], source: str
    ) -> VectorLabels:
        """From GeoJSON-like geometry mappings and their class codes."""
        import shapely

        shapes = [shapely.geometry.shape(g) for g in geometries]
        wkb = tuple(bytes(b) for b in shapely.to_wkb(shapes)) if shapes else ()
        bounds = shapely.bounds(shapes) if shapes else np.zeros((0, 4))
        return cls(wkb, np.asarray(bounds, dtype=np.float64).reshape(-1, 4), values, source)

    def __len__(self) -> int:
        return len(self.wkb)

    def rasterize(self, grid: Grid, window: Window, fill: float) -> np.ndarray:
        """(h, w) float64 label codes of ``window``; ``fill`` where no feature lies. Later
        features are burnt over earlier ones, as in the file's order."""
        import shapely
        from rasterio.features import rasterize
        from rasterio.transform import array_bounds

        transform = grid.window_transform(window)
        west, south, east, north = array_bounds(window.height, window.width, transform)
        b = self.bounds
        near = np.flatnonzero(
            (b[:, 0] <= east) & (b[:, 2] >= west) & (b[:, 1] <= north) & (b[:, 3] >= south)
        )
        if near.size == 0:
            return np.full((window.height, window.width), fill, dtype=np.float64)
        shapes = shapely.from_wkb([self.wkb[i] for i in near])
        return rasterize(
            zip(shapes, [self.values[i] for i in near], strict=True),
            out_shape=(window.height, window.width),
            transform=transform,
            fill=fill,
            dtype="float64",
        )


def read_vector_labels(
    path: str,
    field: str,
    crs_wkt: str,
    *,
    layer: str | None = None,
    classes: dict[int, str] | None = None,
) -> VectorLabels:
    """Polygons or points with a class code in ``field``, on ``crs_wkt``. A field of class
    names is mapped to ids through ``classes`` (id -> name); a feature without a value
    (NULL) is left unlabelled."""
    features = read_features(path, role="label", layer=layer, field=field)
    unknown = features.kinds - {"Polygon", "Point"}
    if unknown:
        raise InputError(
            f"label file {path} holds {', '.join(sorted(unknown))} features; labels are "
            "polygons (areas of one class) or points (one pixel each)"
        )
    assert features.values is not None
    values = label_codes(features.values, field, path, classes or {})
    moved = features.to_crs(crs_wkt)
    return VectorLabels.from_mappings(moved.geometries, values, path)


def label_codes(
    raw: tuple[Any, ...], field: str, path: str, classes: dict[int, str]
) -> tuple[float, ...]:
    """The class code of each feature: numbers as they are, names through ``classes``
    (case and surrounding spaces ignored), NULL as NaN (no label)."""
    by_name = {name.strip().casefold(): cid for cid, name in classes.items()}
    codes, unknown = [], set()
    for v in raw:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            codes.append(math.nan)
            continue
        if isinstance(v, (bytes, str)):
            text = v.decode() if isinstance(v, bytes) else v
            try:
                codes.append(float(text))
                continue
            except ValueError:
                pass
            cid = by_name.get(text.strip().casefold())
            if cid is None:
                unknown.add(text)
                continue
            codes.append(float(cid))
            continue
        codes.append(float(v))
    if unknown:
        names = ", ".join(sorted(unknown)[:12])
        example = ",".join(f"{i + 1}={n}" for i, n in enumerate(sorted(unknown)[:3]))
        raise InputError(
            f"label field '{field}' of {path} holds class names ({names}) that --classes "
            f"does not name; give each an id, e.g. --classes '{example}'"
        )
    return tuple(codes)
