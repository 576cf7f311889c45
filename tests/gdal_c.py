"""GDAL's own answers, through its C API: ``gdalinfo`` (as a library call), raster attribute
tables and category names of a file, read by the libgdal that rasterio has loaded.

There is no ``gdalinfo`` binary here and rasterio exposes no RAT, but rasterio's libgdal is
in the process: the helpers find it (``/proc/self/maps``, else the wheel's ``rasterio.libs``
folder) and call it with ctypes. A test that needs them is skipped, with the reason, where
the library or a symbol cannot be found.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

#: gdal.h: GDALRATFieldType, GDALRATFieldUsage and GDALRATTableType values.
GFT_INTEGER, GFT_REAL, GFT_STRING = 0, 1, 2
GFU_PIXEL_COUNT, GFU_NAME, GFU_MIN_MAX = 1, 2, 5
GFU_RED, GFU_GREEN, GFU_BLUE, GFU_ALPHA = 6, 7, 8, 9
GRTT_THEMATIC = 0
GA_READONLY = 0

_P = ctypes.c_void_p
#: The functions used here: name -> (return type, argument types).
_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "GDALAllRegister": (None, []),
    "GDALOpen": (_P, [ctypes.c_char_p, ctypes.c_int]),
    "GDALClose": (None, [_P]),
    "GDALGetRasterCount": (ctypes.c_int, [_P]),
    "GDALGetRasterBand": (_P, [_P, ctypes.c_int]),
    "GDALGetGeoTransform": (ctypes.c_int, [_P, ctypes.POINTER(ctypes.c_double)]),
    "GDALInfoOptionsNew": (_P, [_P, _P]),
    "GDALInfoOptionsFree": (None, [_P]),
    "GDALInfo": (_P, [_P, _P]),
    "VSIFree": (None, [_P]),
    "GDALGetRasterCategoryNames": (ctypes.POINTER(ctypes.c_char_p), [_P]),
    "GDALGetDefaultRAT": (_P, [_P]),
    "GDALRATGetTableType": (ctypes.c_int, [_P]),
    "GDALRATGetRowCount": (ctypes.c_int, [_P]),
    "GDALRATGetColumnCount": (ctypes.c_int, [_P]),
    "GDALRATGetNameOfCol": (ctypes.c_char_p, [_P, ctypes.c_int]),
    "GDALRATGetTypeOfCol": (ctypes.c_int, [_P, ctypes.c_int]),
    "GDALRATGetUsageOfCol": (ctypes.c_int, [_P, ctypes.c_int]),
    "GDALRATGetValueAsInt": (ctypes.c_int, [_P, ctypes.c_int, ctypes.c_int]),
    "GDALRATGetValueAsDouble": (ctypes.c_double, [_P, ctypes.c_int, ctypes.c_int]),
    "GDALRATGetValueAsString": (ctypes.c_char_p, [_P, ctypes.c_int, ctypes.c_int]),
}


def _library_path() -> Path | None:
    """The libgdal file rasterio loaded (its own copy in a wheel, or the system's)."""
    import rasterio
    import rasterio._base  # links libgdal into the process

    maps = Path("/proc/self/maps")
    if maps.exists():
        for line in maps.read_text().splitlines():
            path = line.split(maxsplit=5)[-1] if len(line.split()) >= 6 else ""
            if Path(path).name.startswith("libgdal") and ".so" in path:
                return Path(path)
    libs = Path(rasterio.__file__).parent.parent / "rasterio.libs"
    found = sorted(libs.glob("libgdal*")) if libs.is_dir() else []
    return found[0] if found else None


@functools.lru_cache(maxsize=1)
def _gdal() -> ctypes.CDLL | str:
    """The library with typed functions, or why it cannot be had."""
    path = _library_path()
    if path is None:
        return "libgdal is not among the loaded libraries nor in rasterio.libs"
    lib = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)  # the instance already loaded
    for name, (restype, argtypes) in _SIGNATURES.items():
        try:
            func = getattr(lib, name)
        except AttributeError:
            return f"{path.name} has no symbol {name}"
        func.restype, func.argtypes = restype, argtypes
    lib.GDALAllRegister()
    return lib


def gdal() -> ctypes.CDLL:
    """rasterio's libgdal with the functions above typed; skips the test where it is missing."""
    lib = _gdal()
    if isinstance(lib, str):
        pytest.skip(f"GDAL's C API cannot be reached through ctypes: {lib}")
    return lib


@contextlib.contextmanager
def opened(path: str | Path) -> Iterator[int]:
    """A read-only GDAL dataset handle of ``path`` (sidecars included, as gdalinfo sees it)."""
    lib = gdal()
    handle = lib.GDALOpen(str(path).encode(), GA_READONLY)
    assert handle, f"GDAL cannot open {path}"
    try:
        yield handle
    finally:
        lib.GDALClose(handle)


def gdalinfo(path: str | Path) -> str:
    """What ``gdalinfo path`` prints, from ``GDALInfo()`` with default options."""
    lib = gdal()
    with opened(path) as ds:
        options = lib.GDALInfoOptionsNew(None, None)
        try:
            text = lib.GDALInfo(ds, options)
        finally:
            lib.GDALInfoOptionsFree(options)
    assert text, "GDALInfo returned nothing"
    try:
        return ctypes.string_at(text).decode("utf-8")
    finally:
        lib.VSIFree(text)


def category_names(path: str | Path, band: int = 1) -> list[str]:
    """The band's category names as GDAL reports them (empty when it has none).

    The georeferencing is read first, as gdalinfo and GIS clients do on opening a raster:
    GDAL's GeoTIFF driver loads the PAM sidecar lazily, and (GDAL 3.10) a bare
    ``GDALGetRasterCategoryNames`` right after opening does not trigger that load.
    """
    lib = gdal()
    with opened(path) as ds:
        lib.GDALGetGeoTransform(ds, (ctypes.c_double * 6)())
        names = lib.GDALGetRasterCategoryNames(lib.GDALGetRasterBand(ds, band))
        out: list[str] = []
        while names and names[len(out)] is not None:
            out.append(names[len(out)].decode("utf-8"))
    return out


@dataclass(frozen=True)
class Rat:
    """A raster attribute table as GDAL reads it."""

    thematic: bool
    columns: list[tuple[str, int, int]]  # (name, GDAL type, GDAL usage)
    rows: list[list[int | float | str]]

    def column(self, usage: int) -> list[int | float | str]:
        """The values of the column with GDAL usage ``usage`` (exactly one must have it)."""
        found = [i for i, (_, _, u) in enumerate(self.columns) if u == usage]
        assert len(found) == 1, (usage, self.columns)
        return [row[found[0]] for row in self.rows]


def raster_attribute_table(path: str | Path, band: int = 1) -> Rat | None:
    """The band's default RAT (``GDALGetDefaultRAT``), or None where it has none."""
    lib = gdal()
    getters = {
        GFT_INTEGER: lib.GDALRATGetValueAsInt,
        GFT_REAL: lib.GDALRATGetValueAsDouble,
        GFT_STRING: lib.GDALRATGetValueAsString,
    }
    with opened(path) as ds:
        rat = lib.GDALGetDefaultRAT(lib.GDALGetRasterBand(ds, band))
        if not rat:
            return None
        columns = [
            (
                lib.GDALRATGetNameOfCol(rat, i).decode("utf-8"),
                lib.GDALRATGetTypeOfCol(rat, i),
                lib.GDALRATGetUsageOfCol(rat, i),
            )
            for i in range(lib.GDALRATGetColumnCount(rat))
        ]
        rows = []
        for r in range(lib.GDALRATGetRowCount(rat)):
            row = [getters[kind](rat, r, i) for i, (_, kind, _) in enumerate(columns)]
            rows.append([v.decode("utf-8") if isinstance(v, bytes) else v for v in row])
        thematic = lib.GDALRATGetTableType(rat) == GRTT_THEMATIC
    return Rat(thematic, columns, rows)
