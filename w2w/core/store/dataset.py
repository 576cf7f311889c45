"""Stores as xarray objects: what a user's notebook or another tool sees of w2w's outputs.

:func:`open_scene` and :func:`open_mosaic` check the store (kind, finished) as every stage
does, then open it lazily with xarray (dask arrays, nothing read yet) and return a Dataset
whose CRS and transform rioxarray reads (``ds.rio.crs``, ``ds.rio.transform()``), with the
scene's band names as the ``band`` coordinate.
"""

from __future__ import annotations

from typing import Any

from w2w.core import storage
from w2w.core.store.mosaic import MosaicStore
from w2w.core.store.scene import SceneStore


def _open(url: str) -> Any:
    import rioxarray  # noqa: F401 - registers the .rio accessor
    import xarray as xr

    options = storage.storage_options(url) if storage.is_remote(url) else None
    ds = xr.open_zarr(url, storage_options=options, decode_coords="all")
    return ds


def open_scene(url: str) -> Any:
    """A scene store as an ``xarray.Dataset``: ``image`` (band, y, x) with band names as the
    ``band`` coordinate, ``label`` (y, x) when the store has labels, CRS and transform."""
    store = SceneStore.open(url)
    ds = _open(store.url)
    ds = ds.assign_coords(band=list(store.info.band_names))
    return ds.rio.write_crs(store.grid.crs_wkt).rio.write_transform(store.grid.transform)


def open_mosaic(url: str) -> Any:
    """A mosaic store as an ``xarray.Dataset``: ``class`` and ``confidence`` (y, x), CRS and
    transform; the class table is in ``ds.attrs['w2w']['classes']``."""
    store = MosaicStore.open(url)
    ds = _open(store.url)
    return ds.rio.write_crs(store.grid.crs_wkt).rio.write_transform(store.grid.transform)
