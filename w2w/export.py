"""Export: a mosaic store to a Cloud-Optimized GeoTIFF, a STAC Item and a quicklook.

What ``w2w export`` writes, beside each other (``map.tif`` named by ``output``):

* ``map.tif`` -- the classes as a COG: uint8, nodata 255, an embedded colour table built from
  the class table, class names in the band metadata (``CLASSES`` as JSON and one
  ``CLASS_<id>`` item per class, which ``gdalinfo`` lists), provenance in the dataset
  metadata (``W2W_PROVENANCE``, ``W2W_BUNDLE_HASH``), and internal overviews built with
  **mode** resampling, so a zoomed-out view shows the majority class of each cell instead of
  an arbitrary pixel (nearest) or a meaningless mean of class ids (average);
* ``map_confidence.tif`` -- the top-class probability x 255 as a COG (``confidence="file"``,
  the default), overviews by **average**, nodata 0 (a predicted pixel cannot have
  confidence 0: the top class of K has probability >= 1/K);
* ``map.json`` -- a STAC Item (STAC 1.1, projection, classification, raster, file and
  processing extensions) describing the assets, with class counts;
* ``map_quicklook.png`` -- a picture of the map with a legend of class colours and names;
* ``map.qml`` -- a QGIS layer style (paletted renderer with class names), which QGIS applies
  on its own when it opens ``map.tif`` from a folder.

How memory stays bounded whatever the size of the state: the mosaic is read one write unit
(chunk or shard) at a time and written window by window into a tiled GeoTIFF in a local
scratch folder, through GDAL's block cache (``cache_mb``); GDAL then builds the overviews
from that file and the COG driver copies file and overviews into the final layout. No step
holds the raster in memory; the quicklook is a decimated read that GDAL serves from an
overview level. The finished files are checked (COG layout, grid, overviews) and only then
moved into place -- atomically, one file at a time, the STAC Item last -- so an existing
export is never replaced by a broken one and an Item never points at missing files.

``confidence="band"`` writes confidence as a second band of the class COG instead. A GeoTIFF
colour table only goes with a single-sample image (GDAL turns a second band of a paletted
TIFF into alpha, and viewers would use confidence as transparency), so in that mode the COG
carries **no** colour table (colours still travel in the STAC Item and the QGIS style);
GeoTIFF has one nodata value for all bands, so confidence is clipped to 254 (255 means
nodata); and GeoTIFF overviews use one resampling for all bands, so confidence overviews
use the class resampling as well. Prefer the default ``file`` unless one file is a must.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import io
import json
import logging
import math
import os
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal
from xml.sax.saxutils import quoteattr

import numpy as np
import rasterio
from pydantic import Field, field_validator
from rasterio.enums import ColorInterp, Resampling

from w2w import storage
from w2w.config import PathStr, StageConfig
from w2w.errors import ConfigError, InputError, OutputError, StageFailedError
from w2w.grid import Grid
from w2w.progress import progress_bar
from w2w.store import CLASS_NODATA, ClassInfo, MosaicStore

log = logging.getLogger("w2w")

#: Nodata of the separate confidence COG; a predicted pixel never has confidence 0.
CONFIDENCE_NODATA = 0
#: In ``confidence="band"`` the file has one nodata (255) for both bands: confidence <= 254.
CONFIDENCE_BAND_MAX = 254

STAC_VERSION = "1.1.0"
STAC_EXTENSIONS = {
    "projection": "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
    "classification": "https://stac-extensions.github.io/classification/v2.0.0/schema.json",
    "raster": "https://stac-extensions.github.io/raster/v2.0.0/schema.json",
    "file": "https://stac-extensions.github.io/file/v2.1.0/schema.json",
    "processing": "https://stac-extensions.github.io/processing/v1.2.0/schema.json",
}
COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"

Compression = Literal["deflate", "zstd", "lzw"]


class ExportConfig(StageConfig):
    """Settings of ``w2w export``."""

    stage_name: ClassVar[str] = "export"

    input: PathStr = Field(description="mosaic store (local path or s3:// URL)")
    output: PathStr = Field(description="the class COG to write: a .tif path or s3:// URL")
    confidence: Literal["none", "band", "file"] = Field(
        default="file",
        description="confidence as <name>_confidence.tif beside the map (file), as a second "
        "band (band), or not at all (none)",
    )
    blocksize: int = Field(default=512, ge=64, le=4096, description="COG tile edge, pixels")
    compress: Compression = Field(
        default="deflate",
        description="COG compression; deflate is read by every GIS, zstd is smaller and "
        "faster but needs GDAL >= 2.3 built with zstd on the reading side",
    )
    overview_resampling: Literal["mode", "nearest"] = Field(
        default="mode", description="overviews of the classes; confidence always uses average"
    )
    quicklook_size: int = Field(default=1024, ge=64, le=8192, description="quicklook long edge")
    datetime: str | None = Field(
        default=None,
        description="nominal date of the map for the STAC Item (e.g. of the imagery), ISO "
        "8601; default: the time of export",
    )
    allow_incomplete: bool = Field(
        default=False, description="export a mosaic whose prediction did not finish"
    )
    cache_mb: int = Field(
        default=256, ge=8, le=65536, description="GDAL block cache; bounds export memory"
    )
    workdir: PathStr | None = Field(
        default=None,
        description="local scratch folder (needs about 3x the COG's size); default: the "
        "system temporary folder",
    )
    overwrite: bool = False

    @field_validator("blocksize")
    @classmethod
    def _tile_multiple_of_16(cls, v: int) -> int:
        if v % 16:
            raise ValueError(f"COG tiles must be a multiple of 16 pixels; try {v - v % 16 or 16}")
        return v

    @field_validator("output")
    @classmethod
    def _tif_name(cls, v: str) -> str:
        if not v.lower().endswith((".tif", ".tiff")):
            raise ValueError("the output must be a GeoTIFF name ending in .tif, e.g. map.tif")
        return v

    @field_validator("datetime")
    @classmethod
    def _iso_datetime(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            parsed = dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError("not an ISO 8601 date or time, e.g. 2024-06-30") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)
        return _iso(parsed)


@dataclass(frozen=True)
class ExportTargets:
    """Where each exported file goes (local paths or URLs)."""

    cog: str
    confidence: str | None
    stac: str
    quicklook: str
    style: str

    def all(self) -> list[str]:
        """Every file the export writes."""
        return [u for u in (self.cog, self.confidence, self.quicklook, self.style, self.stac) if u]


@dataclass(frozen=True)
class ExportResult:
    """What ``w2w export`` wrote."""

    cog: str
    confidence: str | None
    stac: str
    quicklook: str
    style: str
    grid: Grid
    overviews: tuple[int, ...]
    class_counts: dict[str, int]
    nodata_pixels: int
    size_bytes: int


def export_targets(cfg: ExportConfig) -> ExportTargets:
    """The file names an export writes: the COG and its siblings (same stem)."""
    cog = storage.normalize(cfg.output)
    stem = cog[: cog.rfind(".")]
    return ExportTargets(
        cog=cog,
        confidence=f"{stem}_confidence.tif" if cfg.confidence == "file" else None,
        stac=f"{stem}.json",
        quicklook=f"{stem}_quicklook.png",
        style=f"{stem}.qml",
    )


def export(cfg: ExportConfig, *, progress: bool = True) -> ExportResult:
    """Export a mosaic as COG(s), STAC Item, quicklook and QGIS style; see the module notes."""
    mosaic = MosaicStore.open(cfg.input)
    classes = _check_mosaic(mosaic, cfg)
    targets = export_targets(cfg)
    existing = [u for u in targets.all() if storage.exists(u)]
    if existing and not cfg.overwrite:
        raise OutputError(
            f"{existing[0]} exists already; pass --overwrite to replace the export "
            "or choose another output name"
        )
    if not codec_available(cfg.compress):
        raise ConfigError(
            f"this GDAL ({rasterio.__gdal_version__}) cannot write {cfg.compress} "
            "compression; use compress=deflate"
        )
    grid = mosaic.grid
    factors = overview_factors(grid.height, grid.width, cfg.blocksize)
    env = {"GDAL_CACHEMAX": cfg.cache_mb, "GDAL_NUM_THREADS": "ALL_CPUS"}
    with _scratch(cfg) as work, rasterio.Env(**env):
        stage = _write_stages(mosaic, work, cfg, factors, progress=progress)
        cog_path = work / "map.tif"
        _to_cog(stage.classes, cog_path, cfg, predictor=False)
        _check_cog(cog_path, grid, len(factors), targets.cog)
        conf_path = None
        if stage.confidence is not None:
            conf_path = work / "confidence.tif"
            _to_cog(stage.confidence, conf_path, cfg, predictor=True)
            _check_cog(conf_path, grid, len(factors), targets.confidence or "")
        png, ql_shape = render_quicklook(cog_path, classes, cfg.quicklook_size)
        style = qgis_style(classes)
        item = stac_item(
            cfg,
            mosaic,
            targets,
            stage.counts,
            quicklook_shape=ql_shape,
            files={"cog": cog_path, "confidence": conf_path},
        )
        # Publish: the data first, the Item last, so an Item never points at missing files.
        storage.atomic_put_file(cog_path, targets.cog)
        if conf_path is not None and targets.confidence:
            storage.atomic_put_file(conf_path, targets.confidence)
        storage.atomic_write_bytes(targets.quicklook, png)
        storage.atomic_write_bytes(targets.style, style.encode())
        storage.atomic_write_bytes(targets.stac, (json.dumps(item, indent=2) + "\n").encode())
        size = cog_path.stat().st_size
    stale = f"{targets.stac[: -len('.json')]}_confidence.tif"
    if targets.confidence is None and storage.exists(stale):
        log.warning("%s is left from an earlier export and is not part of this one", stale)
    names = {c.id: c.name for c in classes}
    return ExportResult(
        cog=targets.cog,
        confidence=targets.confidence,
        stac=targets.stac,
        quicklook=targets.quicklook,
        style=targets.style,
        grid=grid,
        overviews=tuple(factors),
        class_counts={names[i]: int(stage.counts[i]) for i in names},
        nodata_pixels=int(stage.counts[CLASS_NODATA]),
        size_bytes=size,
    )


# -- checks ---------------------------------------------------------------------------------


def _check_mosaic(mosaic: MosaicStore, cfg: ExportConfig) -> tuple[ClassInfo, ...]:
    """Refuse a mosaic that cannot be exported as asked; returns its class table."""
    if not mosaic.meta.get("complete", False) and not cfg.allow_incomplete:
        done = mosaic.done_blocks()
        raise InputError(
            f"mosaic {mosaic.url} is incomplete ({int(done.sum())} of {done.size} blocks "
            "predicted); finish `w2w predict` (it resumes where it stopped) or pass "
            "--allow-incomplete to export it with holes"
        )
    classes = mosaic.classes
    if not classes:
        raise InputError(f"mosaic {mosaic.url} has an empty class table; nothing to export")
    bad = [c.id for c in classes if not 0 <= c.id < CLASS_NODATA]
    if bad:
        raise InputError(f"mosaic {mosaic.url} has class ids {bad} outside 0..254 (255 is nodata)")
    if cfg.confidence != "none" and not mosaic.has_confidence:
        raise InputError(
            f"mosaic {mosaic.url} has no confidence array; export with --confidence none"
        )
    return classes


@functools.lru_cache(maxsize=8)
def codec_available(name: str) -> bool:
    """Whether this GDAL can write a GeoTIFF with compression ``name``."""
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.io import MemoryFile

    profile = {"driver": "GTiff", "width": 16, "height": 16, "count": 1, "dtype": "uint8"}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with MemoryFile() as mem, mem.open(**profile, compress=name) as ds:
                ds.write(np.zeros((1, 16, 16), dtype="uint8"))
    except Exception:  # noqa: BLE001 - GDAL reports a missing codec as a generic error
        return False
    return True


def overview_factors(height: int, width: int, blocksize: int) -> list[int]:
    """Decimation factors 2, 4, 8, ... until the smallest level fits in one tile."""
    factors: list[int] = []
    f = 1
    while max(height, width) / f > blocksize:
        f *= 2
        factors.append(f)
    return factors


# -- staging: mosaic -> tiled GeoTIFF with overviews ------------------------------------------


@dataclass(frozen=True)
class _Stage:
    classes: Path
    confidence: Path | None
    counts: np.ndarray  # (256,) pixels per stored value, 255 = nodata


@contextlib.contextmanager
def _scratch(cfg: ExportConfig) -> Iterator[Path]:
    base = None
    if cfg.workdir is not None:
        if storage.is_remote(cfg.workdir):
            raise ConfigError("workdir must be a local folder (it holds scratch GeoTIFFs)")
        storage.ensure_writable_dir(cfg.workdir)
        base = cfg.workdir
    with tempfile.TemporaryDirectory(prefix="w2w-export-", dir=base) as tmp:
        yield Path(tmp)


def _stage_profile(grid: Grid, count: int, nodata: int, blocksize: int) -> dict[str, Any]:
    """A tiled GeoTIFF profile for scratch files: fast compression, tiles as in the COG."""
    codec = "zstd" if codec_available("zstd") else "lzw"
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": grid.width,
        "height": grid.height,
        "count": count,
        "dtype": "uint8",
        "crs": grid.crs,
        "transform": grid.transform,
        "nodata": nodata,
        "tiled": True,
        "blockxsize": blocksize,
        "blockysize": blocksize,
        "compress": codec,
        "interleave": "band",
        "BIGTIFF": "IF_SAFER",
    }
    if codec == "zstd":
        profile["ZSTD_LEVEL"] = 1
    return profile


def _write_stages(
    mosaic: MosaicStore, work: Path, cfg: ExportConfig, factors: list[int], *, progress: bool
) -> _Stage:
    """Stream the mosaic into tiled scratch GeoTIFFs, count classes, build the overviews."""
    grid = mosaic.grid
    classes = mosaic.classes
    band_mode = cfg.confidence == "band"
    class_path = work / "stage_classes.tif"
    conf_path = work / "stage_confidence.tif" if cfg.confidence == "file" else None
    counts = np.zeros(256, dtype=np.int64)
    rows, cols = mosaic.chunk_shape("class")
    windows = list(grid.iter_blocks(rows, cols))

    with contextlib.ExitStack() as stack:
        dst = stack.enter_context(
            rasterio.open(
                class_path,
                "w",
                **_stage_profile(grid, 2 if band_mode else 1, CLASS_NODATA, cfg.blocksize),
            )
        )
        conf_dst = None
        if conf_path is not None:
            conf_dst = stack.enter_context(
                rasterio.open(
                    conf_path,
                    "w",
                    **_stage_profile(grid, 1, CONFIDENCE_NODATA, cfg.blocksize),
                )
            )
        _describe_class_dataset(dst, mosaic, classes, band_mode=band_mode)
        if conf_dst is not None:
            _describe_confidence_band(conf_dst, 1)
        advance = stack.enter_context(progress_bar("export", total=len(windows), enabled=progress))
        for window in windows:
            cls = mosaic.read_class(window)
            counts += np.bincount(cls.ravel(), minlength=256)
            rw = window.to_rasterio()
            dst.write(cls, 1, window=rw)
            if band_mode:
                conf = np.minimum(mosaic.read_confidence(window), CONFIDENCE_BAND_MAX)
                conf[cls == CLASS_NODATA] = CLASS_NODATA
                dst.write(conf, 2, window=rw)
            elif conf_dst is not None:
                conf = mosaic.read_confidence(window)
                conf[cls == CLASS_NODATA] = CONFIDENCE_NODATA
                conf_dst.write(conf, 1, window=rw)
            advance(1)
        if factors:
            dst.build_overviews(factors, Resampling[cfg.overview_resampling])
            if conf_dst is not None:
                conf_dst.build_overviews(factors, Resampling.average)
        dst.update_tags(ns="rio_overview", resampling=cfg.overview_resampling)
        if conf_dst is not None:
            conf_dst.update_tags(ns="rio_overview", resampling="average")
    return _Stage(class_path, conf_path, counts)


def _describe_class_dataset(
    dst: Any, mosaic: MosaicStore, classes: tuple[ClassInfo, ...], *, band_mode: bool
) -> None:
    """Colour table, class names, band description and provenance of the class raster."""
    table = [{"value": c.id, "name": c.name, "color": _hex(c.color, "#")} for c in classes]
    dst.set_band_description(1, "land-cover class")
    dst.update_tags(
        1,
        CLASSES=json.dumps(table, separators=(",", ":")),
        NODATA_MEANING="not mapped (outside the state or no valid input)",
        **{f"CLASS_{c.id}": c.name for c in classes},
    )
    if band_mode:
        _describe_confidence_band(dst, 2)
        dst.colorinterp = [ColorInterp.gray, ColorInterp.undefined]
    else:
        colormap = {c.id: (*c.color, 255) for c in classes}
        colormap[CLASS_NODATA] = (0, 0, 0, 0)
        dst.write_colormap(1, colormap)
    provenance = mosaic_provenance(mosaic)
    now = dt.datetime.now(dt.UTC)
    tags = {
        "TIFFTAG_SOFTWARE": f"w2w {w2w_version()}",
        "TIFFTAG_DATETIME": now.strftime("%Y:%m:%d %H:%M:%S"),
        "TIFFTAG_IMAGEDESCRIPTION": "Land-cover classes mapped wall to wall by w2w",
        "W2W_PROVENANCE": json.dumps(provenance, sort_keys=True, separators=(",", ":")),
    }
    bundle_hash = find_bundle_hash(provenance)
    if bundle_hash:
        tags["W2W_BUNDLE_HASH"] = bundle_hash
    dst.update_tags(**tags)


def _describe_confidence_band(dst: Any, band: int) -> None:
    dst.set_band_description(band, "confidence: top-class probability x 255")
    dst.scales = tuple(1 / 255 if b == band else s for b, s in enumerate(dst.scales, start=1))
    dst.offsets = tuple(0.0 for _ in dst.offsets)


# -- COG ------------------------------------------------------------------------------------


def _to_cog(src: Path, dst: Path, cfg: ExportConfig, *, predictor: bool) -> None:
    """Copy a tiled GeoTIFF and its overviews into the COG layout (GDAL's COG driver)."""
    from rasterio.shutil import copy as rio_copy

    options: dict[str, Any] = {
        "driver": "COG",
        "COMPRESS": cfg.compress.upper(),
        "BLOCKSIZE": cfg.blocksize,
        "OVERVIEWS": "FORCE_USE_EXISTING",
        "BIGTIFF": "IF_SAFER",
        "NUM_THREADS": "ALL_CPUS",
    }
    if predictor:
        options["PREDICTOR"] = "YES"
    rio_copy(str(src), str(dst), **options)


def _check_cog(path: Path, grid: Grid, n_overviews: int, name: str) -> None:
    """Refuse to publish a file that is not a COG on the mosaic's grid with its overviews."""
    problems = []
    with rasterio.open(path) as ds:
        if ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") != "COG":
            problems.append("the file does not have the COG layout")
        got = Grid.from_rasterio(ds)
        if not grid.same_pixels(got, tolerance=0) or grid.crs_relation(got) == "different":
            problems.append(f"grid [{got.describe()}] differs from the mosaic's")
        if len(ds.overviews(1)) != n_overviews:
            problems.append(f"{len(ds.overviews(1))} overview levels instead of {n_overviews}")
    if problems:
        raise StageFailedError(
            f"the COG made for {name} failed its checks ({'; '.join(problems)}); nothing was "
            "published -- please report this as a w2w bug"
        )


# -- quicklook and style --------------------------------------------------------------------


def render_quicklook(
    cog: Path | str, classes: tuple[ClassInfo, ...], size: int
) -> tuple[bytes, tuple[int, int]]:
    """A PNG of the class COG whose long edge is ``size`` px, with a legend; (png, (h, w)).

    The read is decimated, so GDAL serves it from the overview level nearest the requested
    size (built with mode resampling); the picture is composed with Pillow at 4 bytes a
    pixel and only the small legend is drawn by matplotlib: memory is the picture's, not
    the map's.
    """
    from PIL import Image

    with rasterio.open(cog) as ds:
        scale = size / max(ds.height, ds.width)
        h, w = max(1, round(ds.height * scale)), max(1, round(ds.width * scale))
        data = ds.read(1, out_shape=(h, w), resampling=Resampling.nearest)
    lut = np.full((256, 3), 255, dtype=np.uint8)  # nodata and unknown values: white
    for c in classes:
        lut[c.id] = c.color
    picture = Image.fromarray(lut[data])  # (h, w, 3) uint8: RGB
    del data
    legend = _legend_image(classes, fontsize=max(6.0, min(18.0, min(h, w) / 70)))
    margin = max(2, min(h, w) // 100)
    room = (w - 2 * margin, h - 2 * margin)
    if room[0] > 0 and room[1] > 0:
        if legend.width > room[0] or legend.height > room[1]:
            fit = min(room[0] / legend.width, room[1] / legend.height)
            legend = legend.resize(
                (max(1, int(legend.width * fit)), max(1, int(legend.height * fit))),
                Image.Resampling.LANCZOS,
            )
        picture.paste(legend, (margin, h - margin - legend.height), legend)
    buf = io.BytesIO()
    picture.save(buf, format="PNG", optimize=True)
    return buf.getvalue(), (h, w)


def _legend_image(classes: tuple[ClassInfo, ...], *, fontsize: float) -> Any:
    """The legend (class colour swatches and names) as a small RGBA Pillow image."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    from PIL import Image

    fig = Figure(figsize=(8, 8), dpi=100)
    canvas = FigureCanvasAgg(fig)
    handles = [Patch(facecolor=_rgb01(c.color), edgecolor="0.3", label=c.name) for c in classes]
    legend = fig.legend(
        handles=handles, loc="lower left", fontsize=fontsize, framealpha=0.9, handlelength=1.2
    )
    fig.patch.set_alpha(0.0)
    canvas.draw()
    box = legend.get_window_extent(canvas.get_renderer())
    full = Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba())
    height = full.height
    crop = (
        max(0, int(box.x0)),
        max(0, int(height - box.y1)),
        min(full.width, math.ceil(box.x1)),
        min(height, math.ceil(height - box.y0)),
    )
    return full.crop(crop).copy()


def qgis_style(classes: tuple[ClassInfo, ...]) -> str:
    """A QGIS layer style (.qml): paletted renderer with class colours and names."""
    entries = "\n".join(
        f'        <paletteEntry value="{c.id}" color="{_hex(c.color, "#").lower()}" '
        f'alpha="255" label={quoteattr(c.name)}/>'
        for c in classes
    )
    return (
        "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
        '<qgis version="3.28.0" styleCategories="Symbology">\n'
        "  <pipe>\n"
        '    <rasterrenderer type="paletted" band="1" opacity="1" alphaBand="-1" '
        'nodataColor="">\n'
        "      <rasterTransparency/>\n"
        "      <colorPalette>\n"
        f"{entries}\n"
        "      </colorPalette>\n"
        "    </rasterrenderer>\n"
        "  </pipe>\n"
        "</qgis>\n"
    )


# -- STAC -----------------------------------------------------------------------------------


def stac_item(
    cfg: ExportConfig,
    mosaic: MosaicStore,
    targets: ExportTargets,
    counts: np.ndarray,
    *,
    quicklook_shape: tuple[int, int],
    files: dict[str, Path | None],
) -> dict[str, Any]:
    """The STAC Item of an export (assets referenced relative to the Item's folder)."""
    grid = mosaic.grid
    classes = mosaic.classes
    geometry, bbox = footprint_wgs84(grid)
    epsg = grid.crs.to_epsg(confidence_threshold=100)
    provenance = mosaic_provenance(mosaic)
    created = _iso(dt.datetime.now(dt.UTC))
    total = int(counts.sum())
    names = {c.id: c.name for c in classes}

    class_objects: list[dict[str, Any]] = []
    for c in classes:
        class_objects.append(
            {
                "value": c.id,
                "name": slug(c.name),
                "title": c.name,
                "color_hint": _hex(c.color),
                "count": int(counts[c.id]),
                "percentage": round(100 * int(counts[c.id]) / total, 4),
            }
        )
    class_objects.append(
        {
            "value": CLASS_NODATA,
            "name": "nodata",
            "title": "No data",
            "nodata": True,
            "count": int(counts[CLASS_NODATA]),
            "percentage": round(100 * int(counts[CLASS_NODATA]) / total, 4),
        }
    )
    unknown = int(counts.sum() - counts[CLASS_NODATA] - sum(counts[i] for i in names))
    if unknown:
        log.warning("%d mosaic pixels hold values outside the class table", unknown)

    res = grid.res[0] if grid.crs.is_projected else None
    class_band: dict[str, Any] = {"name": "class", "nodata": CLASS_NODATA, "data_type": "uint8"}
    if res is not None:
        class_band["raster:spatial_resolution"] = res
    confidence_band = {
        "name": "confidence",
        "nodata": CLASS_NODATA if cfg.confidence == "band" else CONFIDENCE_NODATA,
        "data_type": "uint8",
        "raster:scale": 1 / 255,
        "raster:offset": 0.0,
        "description": "probability of the mapped class, x 255",
    }
    classes_asset: dict[str, Any] = {
        "href": _relative(targets.cog),
        "type": COG_MEDIA_TYPE,
        "title": "Land-cover classes",
        "roles": ["data"],
        **_file_fields(files["cog"]),
    }
    if cfg.confidence == "band":
        class_band["classification:classes"] = class_objects
        classes_asset["bands"] = [class_band, confidence_band]
    else:
        classes_asset["classification:classes"] = class_objects
        classes_asset["bands"] = [class_band]
    assets: dict[str, Any] = {"classes": classes_asset}
    if targets.confidence:
        assets["confidence"] = {
            "href": _relative(targets.confidence),
            "type": COG_MEDIA_TYPE,
            "title": "Confidence (probability of the mapped class)",
            "roles": ["data", "confidence"],
            "bands": [confidence_band],
            **_file_fields(files["confidence"]),
        }
    assets["quicklook"] = {
        "href": _relative(targets.quicklook),
        "type": "image/png",
        "title": "Quicklook with legend",
        "roles": ["overview", "visual"],
        "proj:code": None,
        "proj:shape": list(quicklook_shape),
    }
    assets["style"] = {
        "href": _relative(targets.style),
        "type": "application/xml",
        "title": "QGIS layer style: class colours and names",
        "roles": ["metadata", "style"],
    }

    properties: dict[str, Any] = {
        "title": f"Land-cover map {_stem(targets.cog)}",
        "description": "Wall-to-wall land-cover classes predicted by w2w, one value per pixel.",
        "datetime": cfg.datetime or created,
        "created": created,
        "proj:code": f"EPSG:{epsg}" if epsg else None,
        "proj:wkt2": grid.crs_wkt,
        "proj:shape": [grid.height, grid.width],
        "proj:transform": [float(v) for v in list(grid.transform)[:6]],
        "proj:bbox": [float(v) for v in grid.bounds],
        "processing:software": {"w2w": w2w_version()},
        "processing:lineage": "mosaic store exported to a COG by `w2w export`; overviews of "
        f"classes by {cfg.overview_resampling}, of confidence by average",
        "w2w:mosaic": cfg.input,
        "w2w:provenance": provenance,
    }
    if res is not None:
        properties["gsd"] = res
    bundle_hash = find_bundle_hash(provenance)
    if bundle_hash:
        properties["w2w:bundle_hash"] = bundle_hash
    return {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": sorted(STAC_EXTENSIONS.values()),
        "id": _stem(targets.cog),
        "geometry": geometry,
        "bbox": bbox,
        "properties": properties,
        "links": [],
        "assets": assets,
    }


def footprint_wgs84(grid: Grid, points_per_edge: int = 11) -> tuple[dict[str, Any], list[float]]:
    """The grid's outline in WGS84 (densified edges: straight in the map CRS, curved in
    longitude/latitude) as a GeoJSON Polygon, and its bounding box.
    """
    from rasterio.warp import transform as warp_transform

    h, w = grid.height, grid.width
    t = np.linspace(0.0, 1.0, points_per_edge)[:-1]
    cols = np.concatenate([t * w, np.full_like(t, w), (1 - t) * w, np.zeros_like(t)])
    rows = np.concatenate([np.zeros_like(t), t * h, np.full_like(t, h), (1 - t) * h])
    a = grid.transform
    xs = a.a * cols + a.b * rows + a.c
    ys = a.d * cols + a.e * rows + a.f
    if grid.crs.is_geographic and grid.crs.to_epsg() == 4326:
        lon, lat = list(xs), list(ys)
    else:
        lon, lat = warp_transform(grid.crs, "EPSG:4326", list(xs), list(ys))
    ring = [[round(float(x), 7), round(float(y), 7)] for x, y in zip(lon, lat, strict=True)]
    ring.append(ring[0])
    xs_, ys_ = [p[0] for p in ring], [p[1] for p in ring]
    return {"type": "Polygon", "coordinates": [ring]}, [min(xs_), min(ys_), max(xs_), max(ys_)]


def _file_fields(path: Path | None) -> dict[str, Any]:
    """``file:size`` and ``file:checksum`` (multihash SHA2-256) of a finished file."""
    if path is None:
        return {}
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(functools.partial(f.read, 1 << 20), b""):
            digest.update(chunk)
    return {"file:size": os.path.getsize(path), "file:checksum": "1220" + digest.hexdigest()}


# -- small helpers --------------------------------------------------------------------------


def mosaic_provenance(mosaic: MosaicStore) -> dict[str, Any]:
    """What the mosaic records about how it was made (bundle hash, configs)."""
    value = mosaic.meta.get("provenance")
    return dict(value) if isinstance(value, dict) else {}


def find_bundle_hash(provenance: dict[str, Any]) -> str | None:
    """The model bundle's content hash recorded in a mosaic's provenance, if any."""
    stack: list[Any] = [provenance]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key in ("bundle_hash", "content_hash", "bundle_content_hash"):
                if isinstance(node.get(key), str):
                    return str(node[key])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return None


def slug(name: str) -> str:
    """A machine-readable class name (letters, digits, ``-`` and ``_``)."""
    out = "".join(ch if ch.isascii() and (ch.isalnum() or ch in "-_") else "_" for ch in name)
    return out.strip("_") or "class"


def w2w_version() -> str:
    """The installed w2w version."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("w2w")
    except PackageNotFoundError:
        return "unknown"


def _rgb01(color: tuple[int, int, int]) -> tuple[float, float, float]:
    return color[0] / 255, color[1] / 255, color[2] / 255


def _hex(color: tuple[int, int, int], prefix: str = "") -> str:
    return prefix + "".join(f"{int(v):02X}" for v in color)


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _stem(url: str) -> str:
    name = url.rstrip("/").rsplit("/", 1)[-1]
    return name[: name.rfind(".")] if "." in name else name


def _relative(url: str) -> str:
    """An asset href relative to the Item, which sits in the same folder."""
    return "./" + url.rstrip("/").rsplit("/", 1)[-1]


__all__ = [
    "ExportConfig",
    "ExportResult",
    "ExportTargets",
    "codec_available",
    "export",
    "export_targets",
    "footprint_wgs84",
    "overview_factors",
    "qgis_style",
    "render_quicklook",
    "stac_item",
]
