"""Opening and checking the GeoTIFFs (or any GDAL raster) that ingest reads.

Each source is checked before anything is written: it exists, GDAL can read it, it has a CRS
and a supported data type, and its last rows can be read (a truncated file fails here rather
than half-way through a statewide ingest).
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioError, RasterioIOError
from rasterio.session import DummySession, Session
from rasterio.vrt import WarpedVRT
from rasterio.warp import Resampling

from w2w.core import storage
from w2w.core.errors import InputError
from w2w.core.grid import Grid, Window

#: Pixel types an image may have. Complex and 64-bit integers cannot be represented in the
#: float32 the models see without loss, so they are refused with a conversion hint.
IMAGE_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
LABEL_DTYPES = (
    "uint8",
    "int8",
    "uint16",
    "int16",
    "uint32",
    "int32",
    "float32",
    "float64",
)


@dataclass(frozen=True)
class RasterSource:
    """A checked raster file: its path, grid, band count, data type, nodata and band names."""

    path: str
    grid: Grid
    count: int
    dtype: str
    nodata: float | None
    descriptions: tuple[str | None, ...]

    @property
    def gdal_path(self) -> str:
        """The path as GDAL wants it (``/vsis3/`` for ``s3://``)."""
        return gdal_path(self.path)


gdal_path = storage.gdal_path


@contextlib.contextmanager
def gdal_env(path: str) -> Iterator[None]:
    """A rasterio environment that lets GDAL reach object storage for ``path``."""
    with rasterio.Env(session=_session(path), **storage.gdal_options(path)):
        yield


def _session(path: str) -> Session | None:
    """The rasterio session for ``path``: none for a local file, and one per process (and
    credentials) for an object store. Left to itself, rasterio builds a new boto3 session for
    every environment whenever AWS keys are in the environment -- ~7 ms of CPU and a heap of
    reference cycles for every window read, local files included."""
    if not storage.is_remote(path):
        return DummySession()
    keys = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION")
    if "AWS_ACCESS_KEY_ID" in os.environ and "AWS_SECRET_ACCESS_KEY" in os.environ:
        return _session_from_environ(tuple(os.environ.get(k) for k in keys))
    return None  # rasterio's default: GDAL finds credentials itself


@functools.lru_cache(maxsize=4)
def _session_from_environ(_credentials: tuple[str | None, ...]) -> Session:
    """The session rasterio builds from the AWS keys in the environment, cached by their values."""
    return Session.from_environ()


@contextlib.contextmanager
def open_raster(path: str, *, role: str) -> Iterator[Any]:
    """Open a raster with rasterio, turning GDAL's errors into ones that say what to fix."""
    if not storage.is_remote(path):
        if not storage.exists(path):
            raise InputError(f"{role} file not found: {path}; check the path")
        if os.path.isdir(path):
            raise InputError(f"{role} file {path} is a folder; give the path of a raster file")
        if os.path.getsize(path) == 0:
            raise InputError(
                f"{role} file {path} is empty (0 bytes); the download or export that made it "
                "failed: make it again"
            )
    with gdal_env(path):
        try:
            with warnings.catch_warnings():  # checked by _check_georeferencing
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                ds = rasterio.open(gdal_path(path))
        except RasterioIOError as exc:
            raise InputError(
                f"cannot read {role} file {path} as a raster ({first_line(exc)}); "
                "is it a complete GeoTIFF?"
            ) from None
        try:
            yield ds
        finally:
            ds.close()


def first_line(exc: BaseException) -> str:
    """GDAL's own message: rasterio often wraps it ("See previous exception") in a cause."""
    inner = exc.__cause__ or exc.__context__
    if inner is not None and "previous exception" in str(exc):
        exc = inner
    args = getattr(exc, "args", ())
    message = args[-1] if len(args) == 3 and isinstance(args[-1], str) else str(exc)
    text = message.strip().splitlines()
    return text[0] if text else type(exc).__name__


def inspect_source(
    path: str, *, role: str, allowed_dtypes: tuple[str, ...], nodata: float | None = None
) -> RasterSource:
    """Open, check and describe one raster; ``nodata`` overrides the file's own value."""
    with open_raster(path, role=role) as ds:
        dtypes = set(ds.dtypes)
        if len(dtypes) != 1:
            raise InputError(
                f"{role} file {path} mixes pixel types {sorted(dtypes)}; convert it to one type "
                "(e.g. `gdal_translate -ot Float32`)"
            )
        dtype = ds.dtypes[0]
        if dtype not in allowed_dtypes:
            raise InputError(
                f"{role} file {path} has unsupported pixel type {dtype}; supported: "
                f"{', '.join(allowed_dtypes)} (convert with `gdal_translate -ot ...`)"
            )
        _check_georeferencing(ds, path, role)
        grid = Grid.from_rasterio(ds)
        _check_size(ds, path, role)
        file_nodata = ds.nodata
        _probe_last_rows(ds, path, role)
        return RasterSource(
            path=path,
            grid=grid,
            count=ds.count,
            dtype=dtype,
            nodata=nodata if nodata is not None else file_nodata,
            descriptions=tuple(ds.descriptions),
        )


#: The pre-check reads at most this many pixels per band in each of three windows.
PROBE_EDGE = 256


def _probe_last_rows(ds: Any, path: str, role: str) -> None:
    """Read small windows at the start, the middle and the end of the file: a truncated file
    fails here, and memory stays bounded whatever size the header claims."""
    h, w = min(ds.height, PROBE_EDGE), min(ds.width, PROBE_EDGE)
    corners = {(0, 0), (ds.height // 2, ds.width // 2), (ds.height - h, ds.width - w)}
    for row, col in sorted(corners):
        try:
            ds.read(window=rasterio.windows.Window(col, row, w, h))
        except (RasterioError, RasterioIOError) as exc:
            raise InputError(
                f"{role} file {path} is corrupt or truncated: reading rows {row}-{row + h} "
                f"failed ({first_line(exc)}); re-download or re-export it"
            ) from None


def _check_size(ds: Any, path: str, role: str) -> None:
    """An uncompressed file must hold the bytes its header claims (a tiny file whose header
    claims a huge raster is refused before anything reads it)."""
    if storage.is_remote(path) or ds.compression is not None:
        return
    claimed = ds.width * ds.height * ds.count * np.dtype(ds.dtypes[0]).itemsize
    actual = os.path.getsize(path)
    if actual < claimed:
        raise InputError(
            f"{role} file {path} is corrupt or truncated: its header claims {ds.width} x "
            f"{ds.height} px x {ds.count} band(s) ({claimed:,} bytes uncompressed) but the "
            f"file holds {actual:,} bytes; re-export or re-download it"
        )


def _check_georeferencing(ds: Any, path: str, role: str) -> None:
    """Refuse georeferencing that is not what it seems, saying how to fix it."""
    t = ds.transform
    gcps, _ = ds.gcps
    if t.is_identity and gcps:
        raise InputError(
            f"{role} file {path} is georeferenced by ground control points only; warp it onto "
            "a grid first, e.g. `gdalwarp -t_srs EPSG:xxxx in.tif out.tif`"
        )
    if t.is_identity:
        raise InputError(
            f"{role} file {path} has no geotransform (its pixels would sit at the origin, one "
            "CRS unit each); set it with `gdal_edit.py -a_ullr ULX ULY LRX LRY` or re-export "
            "the file with its georeferencing"
        )
    if t.b != 0 or t.d != 0:
        raise InputError(
            f"{role} file {path} has a rotated grid; warp it onto a north-up grid first, e.g. "
            "`gdalwarp in.tif out.tif`"
        )
    if t.e > 0 or t.a < 0:
        raise InputError(
            f"{role} file {path} is not north-up (its rows run south to north or its columns "
            "east to west); warp it onto a north-up grid first, e.g. `gdalwarp in.tif out.tif`"
        )


def read_window(
    src: RasterSource,
    window: Window,
    *,
    role: str,
    target: Grid | None = None,
    resampling: Resampling = Resampling.nearest,
    warp_nodata: float | None = None,
) -> np.ndarray:
    """Read all bands of ``window`` (on ``target`` when warping, else on the source grid).

    With ``target`` the source is warped onto that grid (nearest neighbour by default);
    pixels outside the source become ``warp_nodata``.
    """
    with open_raster(src.path, role=role) as ds:
        try:
            if target is None:
                return ds.read(window=window.to_rasterio())
            with WarpedVRT(
                ds,
                crs=target.crs,
                transform=target.transform,
                width=target.width,
                height=target.height,
                resampling=resampling,
                src_nodata=src.nodata,
                nodata=warp_nodata,
            ) as vrt:
                return vrt.read(window=window.to_rasterio())
        except (RasterioError, RasterioIOError) as exc:
            raise InputError(
                f"{role} file {src.path}: reading window {window.to_dict()} failed "
                f"({first_line(exc)}); the file may be corrupt or truncated"
            ) from None
