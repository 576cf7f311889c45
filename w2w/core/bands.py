"""What a band is, by its name: the spectral role (``red``, ``nir``, ``swir16``, ...).

Two parts of w2w read band names: the per-pixel baseline derives spectral indices from them
(NDVI from ``nir`` and ``red``), and published encoder weights have their first convolution
matched to the scene's bands by role (a Sentinel-2 encoder's "B4" filter goes to the scene's
``red`` band). Scene bands are read by STAC ``eo:common_name`` names and Sentinel-2's
zero-padded band ids (``B04``, ``B8A``). Bare band numbers are not read for scene bands:
Landsat's "B4" is red on Landsat 8/9 and near infrared on Landsat 5/7; published weights say
which sensor they were trained on, so their band numbers are read with :data:`SENSOR_BANDS`.
"""

from __future__ import annotations

import re

#: Role -> the names a scene band may have for it (lower case, letters and digits only).
ROLES: dict[str, tuple[str, ...]] = {
    "coastal": ("coastal", "b01"),
    "blue": ("blue", "b02"),
    "green": ("green", "b03"),
    "red": ("red", "b04"),
    "rededge1": ("rededge1", "b05"),
    "rededge2": ("rededge2", "b06"),
    "rededge3": ("rededge3", "b07"),
    "nir": ("nir", "b08"),
    "nir08": ("nir08", "b8a"),
    "nir09": ("nir09", "b09"),
    "cirrus": ("cirrus", "b10"),
    "swir16": ("swir16", "swir1", "b11"),
    "swir22": ("swir22", "swir2", "b12"),
    "vv": ("vv",),
    "vh": ("vh",),
}

#: Where a role is missing, the role that may stand in for it (narrow NIR for NIR).
STAND_INS: dict[str, str] = {"nir": "nir08"}

_S2 = {
    "b1": "coastal", "b2": "blue", "b3": "green", "b4": "red", "b5": "rededge1",
    "b6": "rededge2", "b7": "rededge3", "b8": "nir", "b8a": "nir08", "b9": "nir09",
    "b10": "cirrus", "b11": "swir16", "b12": "swir22",
}  # fmt: skip
_OLI = {
    "b1": "coastal", "b2": "blue", "b3": "green", "b4": "red", "b5": "nir", "b6": "swir16",
    "b7": "swir22", "b8": "pan", "b9": "cirrus", "b10": "lwir11", "b11": "lwir12",
}  # fmt: skip
_TM = {
    "b1": "blue", "b2": "green", "b3": "red", "b4": "nir", "b5": "swir16", "b6": "lwir",
    "b6vcid1": "lwir", "b6vcid2": "lwir", "b7": "swir22", "b8": "pan",
}  # fmt: skip

#: Sensor -> its band ids (lower case, zeros and ``sr_`` prefixes stripped) -> role.
SENSOR_BANDS: dict[str, dict[str, str]] = {
    "sentinel2": _S2,
    "landsat_oli": _OLI,
    "landsat_tm": _TM,
    "landsat_etm": _TM,
    "sentinel1": {"vv": "vv", "vh": "vh"},
}


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def role(name: str) -> str | None:
    """The spectral role a scene band's name says (None when it says none)."""
    key = _key(name)
    for found, names in ROLES.items():
        if key in names:
            return found
    return None


def band_roles(band_names: list[str] | tuple[str, ...]) -> dict[str, int]:
    """Role -> band index, for the bands whose name says it (the first such band), with
    :data:`STAND_INS` filling a role no band has."""
    roles: dict[str, int] = {}
    for i, name in enumerate(band_names):
        found = role(name)
        if found and found not in roles:
            roles[found] = i
    for wanted, stand_in in STAND_INS.items():
        if wanted not in roles and stand_in in roles:
            roles[wanted] = roles[stand_in]
    return roles


def sensor_role(sensor: str, band: str) -> str | None:
    """The role of band id ``band`` (e.g. ``B4``, ``SR_B4``, ``B8a``) of ``sensor``."""
    key = _key(band)
    key = key.removeprefix("sr")
    key = re.sub(r"^b0+(?=\d)", "b", key)
    table = SENSOR_BANDS.get(sensor, {})
    return table.get(key) or role(band)
