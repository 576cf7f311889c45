"""How two coordinate reference systems relate: the same, equivalent, or different.

Agencies' rasters often name one projection in several ways: another realisation of the
same datum (NAD83 vs NAD83(HARN)), or a WKT with a datum binding (``TOWGS84[...]``, read by
pyproj as a BoundCRS). w2w treats such CRSs as *equivalent* (the pixels line up to far below
a pixel) and warns, instead of refusing the file or warping it for nothing.
"""

from __future__ import annotations

import math
from typing import Literal

Relation = Literal["equal", "equivalent", "different"]


def crs_relation(wkt_a: str, wkt_b: str) -> Relation:
    """Compare two CRSs: ``equal``; ``equivalent`` when they share the projection (method and
    parameters), the ellipsoid and the units but name another datum realisation; else
    ``different``.
    """
    from pyproj import CRS as PyprojCRS  # noqa: N811 - rasterio owns the name CRS here

    a, b = PyprojCRS.from_wkt(wkt_a), PyprojCRS.from_wkt(wkt_b)
    if a.equals(b, ignore_axis_order=True):
        return "equal"
    # A datum binding (TOWGS84, as older GDAL and GRASS write) changes where a point lands
    # in another datum, never a pixel's place on the projection: compare what it binds.
    bound = a.is_bound or b.is_bound
    a, b = (c.source_crs if c.is_bound and c.source_crs is not None else c for c in (a, b))
    if bound and a.equals(b, ignore_axis_order=True):
        return "equivalent"
    if a.is_projected != b.is_projected or a.ellipsoid is None or b.ellipsoid is None:
        return "different"
    ea, eb = a.ellipsoid, b.ellipsoid
    if not (
        math.isclose(ea.semi_major_metre, eb.semi_major_metre, rel_tol=1e-12)
        and math.isclose(ea.inverse_flattening, eb.inverse_flattening, rel_tol=1e-9)
    ):
        return "different"
    if a.axis_info and b.axis_info and a.axis_info[0].unit_name != b.axis_info[0].unit_name:
        return "different"
    if a.is_projected:
        ca, cb = a.coordinate_operation, b.coordinate_operation
        if ca is None or cb is None or ca.method_name != cb.method_name:
            return "different"
        pa = {p.name: p.value for p in ca.params}
        pb = {p.name: p.value for p in cb.params}
        if pa.keys() != pb.keys() or any(
            not math.isclose(pa[k], pb[k], rel_tol=1e-12, abs_tol=1e-9) for k in pa
        ):
            return "different"
        if (
            a.prime_meridian
            and b.prime_meridian
            and (a.prime_meridian.longitude != b.prime_meridian.longitude)
        ):
            return "different"
    return "equivalent"
