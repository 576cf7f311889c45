"""Stores as xarray objects: what a user's notebook or another tool sees of w2w's outputs.

:func:`open_scene` and :func:`open_mosaic` check the store (kind, finished) as every stage
does, then open it lazily with xarray (dask arrays, nothing read yet) and return a Dataset
whose CRS and transform rioxarray reads (``ds.rio.crs``, ``ds.rio.transform()``), with the
scene's band names as the ``band`` coordinate.

A plain ``xarray.open_zarr`` of a store gives the same variables, decoded by the CF
attributes alone: confidence as floats in [0, 1] with NaN for nodata, and classes masked
where 255 (which makes them floats). :func:`open_mosaic` keeps the classes as uint8 ids
(255 = nodata, its ``_FillValue`` attribute) -- what a class map is counted, compared and
written to GeoTIFF as.
"""

from __future__ import annotations

from typing import Any

from w2w.core import storage
from w2w.core.store.mosaic import MosaicStore
from w2w.core.store.scene import SceneStore


def _open(url: str, **kwargs: Any) -> Any:
    import rioxarray  # noqa: F401 - registers the .rio accessor
    import xarray as xr

    options = storage.storage_options(url) if storage.is_remote(url) else None
    return xr.open_zarr(url, storage_options=options, decode_coords="all", **kwargs)


def open_scene(url: str) -> Any:
    """A scene store as an ``xarray.Dataset``: ``image`` (band, y, x) with band names as the
    ``band`` coordinate, ``label`` (y, x) when the store has labels, CRS and transform."""
    store = SceneStore.open(url)
    ds = _open(store.url)
    if "band" not in ds.coords:  # a format-1 store has no band coordinate array
        ds = ds.assign_coords(band=list(store.info.band_names))
    return ds.rio.write_crs(store.grid.crs_wkt).rio.write_transform(store.grid.transform)


def open_mosaic(url: str) -> Any:
    """A mosaic store as an ``xarray.Dataset``: ``class`` (y, x, uint8 ids, 255 = nodata)
    and ``confidence`` (y, x, floats in [0, 1], NaN = nodata), CRS and transform; the class
    table is in ``ds.attrs['w2w']['classes']`` and the class flags in the ``flag_values`` /
    ``flag_meanings`` attributes of ``class``."""
    store = MosaicStore.open(url)
    ds = _open(store.url, mask_and_scale={"class": False})
    return ds.rio.write_crs(store.grid.crs_wkt).rio.write_transform(store.grid.transform)
