"""The Zarr (v3) layout of w2w's stores; no module outside this package imports zarr.

* :class:`SceneStore` -- imagery and labels on the state's grid (:mod:`.scene`);
* :class:`MosaicStore` -- a map's classes, confidence and block manifest (:mod:`.mosaic`);
* :class:`GeoStore` -- what both share: georeferencing, padded reads, owned writes, the
  ``_w2w`` sub-group of bookkeeping arrays (:mod:`.base`);
* the CF and Zarr-convention attributes that let plain xarray and GeoZarr readers decode the
  stores (:mod:`.cf`).
"""

from w2w.core.store.base import GeoStore
from w2w.core.store.mosaic import MosaicStore
from w2w.core.store.scene import SceneInfo, SceneStore, valid_pixels

__all__ = ["GeoStore", "MosaicStore", "SceneInfo", "SceneStore", "valid_pixels"]
