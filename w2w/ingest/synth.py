"""A procedural synthetic "state": land cover, multispectral imagery and reference labels.

The generator is a pure function of pixel coordinates and a seed, so any window can be made
on its own -- in parallel, streamed, at any size (512 px for tests, 16k x 16k and more for
benchmarks) -- and the same window is identical whichever block produced it.

What it models, so that a segmentation model has something real to learn:

* **Land cover** from smooth noise fields: water in low ground and along rivers, towns in
  clusters, and forest / grassland / shrubland / bare soil along elevation and moisture.
* **Spectra** per class (Sentinel-2-like bands, reflectance x 10 000 in uint16) with
  pixel noise, plus a slowly varying illumination / phenology factor across the state.
* **Context matters**: urban and bare soil have *identical* mean spectra and pixel
  variance; they differ only in texture (towns are blocky, 3 x 3 px buildings; bare soil is
  speckled pixel by pixel). Shrubland and grassland overlap spectrally too and differ in
  patch texture. A per-pixel classifier cannot separate these; a model that sees the
  neighbourhood can -- as with urban vs bare soil or shrubland vs sparse forest in real scenes.
* An irregular **state boundary** with nodata (0) outside it, a real projected CRS
  (UTM zone 13N, as Chihuahua) and transform.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import rasterio
from affine import Affine
from pydantic import Field, field_validator, model_validator
from rasterio.crs import CRS

from w2w.core import storage
from w2w.core.config import Engine, PathStr, StageConfig, engine_field, overwrite_field
from w2w.core.grid import Grid, Window
from w2w.core.guard import OutputKind, Target
from w2w.core.outputs import cleanup, publish_files, remove_path, replace_store, staging_tag
from w2w.core.runtime import run_blocks
from w2w.ingest.build import build_store

log = logging.getLogger("w2w")

BAND_NAMES = ("B02", "B03", "B04", "B08", "B11", "B12")
NODATA = 0
UNLABELLED = 0

#: Class id -> (name, mean reflectance per band in BAND_NAMES order, brightness sd (a
#: multiplicative factor shared by the bands), band noise sd (independent per band)).
CLASSES: dict[int, tuple[str, tuple[float, ...], float, float]] = {
    1: ("forest", (0.030, 0.050, 0.032, 0.300, 0.150, 0.070), 0.012, 0.012),
    2: ("grassland", (0.050, 0.080, 0.062, 0.330, 0.240, 0.135), 0.014, 0.022),
    3: ("shrubland", (0.055, 0.082, 0.075, 0.300, 0.255, 0.160), 0.014, 0.022),
    4: ("water", (0.060, 0.052, 0.032, 0.020, 0.010, 0.008), 0.006, 0.004),
    5: ("urban", (0.100, 0.110, 0.120, 0.210, 0.240, 0.205), 0.030, 0.016),
    6: ("bare", (0.100, 0.110, 0.120, 0.210, 0.240, 0.205), 0.030, 0.016),
}


class SynthConfig(StageConfig):
    """Settings of ``w2w synth``."""

    stage_name: ClassVar[str] = "synth"
    outputs: ClassVar[dict[str, OutputKind]] = {"output": "store"}

    output: PathStr = Field(
        description="folder for GeoTIFFs, or a scene store path with format=store"
    )
    size: str | None = Field(
        default=None,
        description="HEIGHTxWIDTH or one number, in pixels (e.g. 512, 97x130); sets height "
        "and width",
    )
    height: int = Field(default=512, ge=8, le=1_000_000, description="rows of pixels")
    width: int = Field(default=512, ge=8, le=1_000_000, description="columns of pixels")
    seed: int = Field(default=0, description="random seed of the landscape and imagery")
    pixel_size: float = Field(default=10.0, gt=0, description="pixel size in metres")
    epsg: int = Field(default=32613, description="projected CRS of the state (EPSG code)")
    origin: tuple[float, float] = Field(
        default=(300_000.0, 3_500_000.0), description="x, y of the top-left corner"
    )
    format: Literal["geotiff", "store"] = Field(
        default="geotiff", description="GeoTIFFs in a folder, or a scene store"
    )
    separate_bands: bool = Field(default=False, description="one GeoTIFF per band")
    tiles: bool = Field(
        default=False,
        description="also write the state as overlapping tiles in two UTM zones, its boundary "
        "(boundary.gpkg) and field labels as polygons and points (labels.gpkg)",
    )
    tile_size: int = Field(default=320, ge=32, description="tile edge in pixels (with tiles)")
    tile_overlap: int = Field(default=32, ge=0, description="pixels neighbouring tiles share")
    boundary_scale: float = Field(
        default=1.0,
        gt=0,
        le=1.0,
        description="size of the state within its bounding box (1: about 78% of it is state)",
    )
    fill_box: bool = Field(
        default=False,
        description="imagery and labels everywhere in the bounding box (as around a real "
        "state, whose neighbours are imaged and surveyed too); the boundary still marks the "
        "state",
    )
    feature_scale: float | None = Field(
        default=None,
        gt=0,
        description="size of land-cover patches relative to a 2048 px state (default: "
        "scaled with the scene, so small scenes still hold every class)",
    )
    chunk: int = Field(default=512, ge=16, description="store chunk edge (format=store)")
    block: int = Field(default=2048, ge=16, description="pixels per task edge")
    engine: Engine = engine_field()
    overwrite: bool = overwrite_field()

    def output_targets(self) -> list[Target]:
        """The scene store, or the folder and each GeoTIFF and vector file written into it."""
        if self.format == "store":
            return [Target("output store", self.output, "store")]
        names = [*geotiff_names(self), "labels.tif"]
        if self.tiles:
            names += ["boundary.gpkg", "labels.gpkg"]
        files = [Target("output file", storage.join(self.output, n), "file") for n in names]
        if self.tiles:
            files.append(Target("tiles folder", storage.join(self.output, "tiles"), "fileset"))
        return [Target("output folder", self.output, "folder"), *files]

    @model_validator(mode="before")
    @classmethod
    def _size(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("size") is not None:
            text = str(data["size"]).lower()
            h, _, w = text.partition("x")
            try:
                height, width = int(h), int(w or h)
            except ValueError:
                raise ValueError(
                    f"size '{data['size']}' should be HEIGHTxWIDTH or one number"
                ) from None
            data = {**data, "height": height, "width": width}
        return data

    @model_validator(mode="after")
    def _geotiffs_are_local(self) -> SynthConfig:
        if self.format != "store" and storage.is_remote(self.output):
            raise ValueError(
                f"synthetic GeoTIFFs are written to a local folder, not {self.output}; give a "
                "local folder, or --format store for a scene store on object storage"
            )
        return self

    @field_validator("epsg")
    @classmethod
    def _projected(cls, v: int) -> int:
        try:
            crs = CRS.from_epsg(v)
        except Exception:  # noqa: BLE001
            raise ValueError(f"EPSG:{v} is not a known CRS") from None
        if not crs.is_projected:
            raise ValueError(
                f"EPSG:{v} is not a projected CRS; choose one in metres (e.g. a UTM zone)"
            )
        return v

    @property
    def scale(self) -> float:
        """The feature scale in use: as configured, else proportional to the scene's size."""
        if self.feature_scale is not None:
            return self.feature_scale
        return min(1.0, max(0.08, max(self.height, self.width) / 2048))

    @property
    def grid(self) -> Grid:
        """The synthetic scene's grid."""
        x0, y0 = self.origin
        transform = Affine(self.pixel_size, 0.0, x0, 0.0, -self.pixel_size, y0)
        return Grid(CRS.from_epsg(self.epsg).to_wkt(), transform, self.height, self.width)


@dataclass(frozen=True)
class SynthOutputs:
    """Where the synthetic scene was written."""

    images: tuple[str, ...]
    label: str | None
    store: str | None
    grid: Grid
    tiles: tuple[str, ...] = ()
    boundary: str | None = None
    vector_labels: str | None = None


# -- noise ----------------------------------------------------------------------------------


def _hash(ix: np.ndarray, iy: np.ndarray, seed: int) -> np.ndarray:
    """A well-mixed uint64 hash of integer lattice coordinates (SplitMix64 finaliser)."""
    with np.errstate(over="ignore"):
        h = (ix.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ (
            iy.astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
        )
        h ^= np.uint64((seed * 0x165667B19E3779F9) & 0xFFFFFFFFFFFFFFFF)
        h ^= h >> np.uint64(30)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    return h


def _uniform(ix: np.ndarray, iy: np.ndarray, seed: int) -> np.ndarray:
    """Uniform values in [0, 1) from lattice coordinates."""
    return (_hash(ix, iy, seed) >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _gaussian(ix: np.ndarray, iy: np.ndarray, seed: int) -> np.ndarray:
    """Standard normal values from lattice coordinates (Box-Muller on two hashes)."""
    u1 = np.maximum(_uniform(ix, iy, seed), 1e-12)
    u2 = _uniform(ix, iy, seed + 7919)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def value_noise(window: Window, period: float, seed: int) -> np.ndarray:
    """Smooth noise in [-1, 1] with features of about ``period`` pixels, for ``window``.

    Values live on a global lattice of spacing ``period`` and are interpolated with a
    smoothstep, so overlapping windows agree exactly.
    """
    ys = (np.arange(window.row, window.row_stop) + 0.5) / period
    xs = (np.arange(window.col, window.col_stop) + 0.5) / period
    y0, x0 = np.floor(ys).astype(np.int64), np.floor(xs).astype(np.int64)
    ly0, lx0 = int(y0.min()), int(x0.min())
    ly = np.arange(ly0, int(y0.max()) + 2)
    lx = np.arange(lx0, int(x0.max()) + 2)
    lattice = _uniform(lx[None, :], ly[:, None], seed) * 2.0 - 1.0
    fy, fx = ys - y0, xs - x0
    sy, sx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)
    iy, ix = (y0 - ly0)[:, None], (x0 - lx0)[None, :]
    top = lattice[iy, ix] * (1 - sx) + lattice[iy, ix + 1] * sx
    bottom = lattice[iy + 1, ix] * (1 - sx) + lattice[iy + 1, ix + 1] * sx
    return top * (1 - sy[:, None]) + bottom * sy[:, None]


def fbm(window: Window, period: float, seed: int, octaves: int = 4) -> np.ndarray:
    """Fractal noise: ``octaves`` layers of :func:`value_noise`, each half the period."""
    total = np.zeros((window.height, window.width))
    amp, norm = 1.0, 0.0
    for o in range(octaves):
        total += amp * value_noise(window, period / (2**o), seed * 31 + o)
        norm += amp
        amp *= 0.5
    return total / norm


# -- the scene ------------------------------------------------------------------------------


def land_cover(cfg: SynthConfig, window: Window) -> np.ndarray:
    """(h, w) uint8 class ids of ``window``; 0 outside the state boundary."""
    s = cfg.scale
    seed = cfg.seed
    elevation = fbm(window, 700 * s, seed + 1)
    moisture = fbm(window, 380 * s, seed + 2)
    town = fbm(window, 160 * s, seed + 3, octaves=3)
    river = np.abs(fbm(window, 900 * s, seed + 4, octaves=3))

    cover = np.full(elevation.shape, 2, dtype=np.uint8)  # grassland
    cover[moisture > 0.10] = 1  # forest where moist
    cover[(moisture < -0.02) & (elevation > -0.3)] = 3  # shrubland where dry
    cover[(moisture < -0.2) & (elevation > 0.0)] = 6  # bare soil where dry and high
    cover[(town > 0.33) & (elevation < 0.3)] = 5  # towns in lower ground
    cover[(elevation < -0.42) | (river < 0.022)] = 4  # lakes and rivers
    if not cfg.fill_box:
        cover[~state_mask(cfg, window)] = UNLABELLED
    return cover


def state_mask(cfg: SynthConfig, window: Window) -> np.ndarray:
    """(h, w) bool: inside the irregular state boundary."""
    rows = np.arange(window.row, window.row_stop)[:, None]
    cols = np.arange(window.col, window.col_stop)[None, :]
    ry = (rows + 0.5 - cfg.height / 2) / (cfg.height / 2)
    rx = (cols + 0.5 - cfg.width / 2) / (cfg.width / 2)
    radius = np.sqrt(rx * rx + ry * ry) / cfg.boundary_scale
    wobble = fbm(window, max(cfg.height, cfg.width) / 3.0, cfg.seed + 5, octaves=3)
    return radius + 0.35 * wobble < 1.0


def image(cfg: SynthConfig, window: Window, cover: np.ndarray) -> np.ndarray:
    """(band, h, w) uint16 reflectance x 10 000 for ``window`` given its land cover."""
    rows = np.arange(window.row, window.row_stop)[:, None]
    cols = np.arange(window.col, window.col_stop)[None, :]
    rr, cc = np.broadcast_arrays(rows, cols)
    seed = cfg.seed
    # Slow multiplicative variation across the state: illumination, phenology, haze.
    light = 1.0 + 0.06 * fbm(window, 1500 * cfg.scale, seed + 11, octaves=2)
    # Pixel-level brightness: speckle for bare soil, 3 x 3 px buildings for towns; the same
    # marginal distribution (standard normal), different spatial structure.
    speckle = _gaussian(cc, rr, seed + 21)
    blocks = _gaussian(cc // 3, rr // 3, seed + 22)
    # Patch texture: grassland smooth, shrubland clumpy at ~6 px.
    clumps = value_noise(window, 6.0, seed + 23)

    out = np.zeros((len(BAND_NAMES), *cover.shape), dtype=np.float64)
    for cid, (_, means, sd, band_sd) in CLASSES.items():
        where = cover == cid
        if not where.any():
            continue
        if cid == 5:
            bright = blocks[where]
        elif cid == 6:
            bright = speckle[where]
        elif cid == 3:
            bright = 0.5 * speckle[where] + 1.5 * clumps[where]
        else:
            bright = 0.9 * speckle[where]
        for b, mean in enumerate(means):
            band_noise = _gaussian(cc[where], rr[where], seed + 100 + 13 * b + cid)
            value = mean * (1.0 + bright * sd / 0.1) + band_sd * band_noise
            out[b][where] = value
    out *= light[None]
    dn = np.clip(np.rint(out * 10_000), 1, 10_000).astype(np.uint16)
    dn[:, cover == UNLABELLED] = NODATA
    return dn


class SynthReader:
    """Makes one block of the synthetic scene: (image, labels)."""

    def __init__(self, cfg: SynthConfig) -> None:
        self.cfg = cfg

    def __call__(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        cover = land_cover(self.cfg, window)
        return image(self.cfg, window, cover), cover


def geotiff_names(cfg: SynthConfig) -> list[str]:
    """The image GeoTIFFs of ``format=geotiff``: one, or one a band."""
    return [f"band_{b}.tif" for b in BAND_NAMES] if cfg.separate_bands else ["image.tif"]


def class_names() -> dict[int, str]:
    """Class id -> name of the synthetic land-cover classes."""
    return {cid: name for cid, (name, *_) in CLASSES.items()}


def synthesize(cfg: SynthConfig, *, progress: bool = True) -> SynthOutputs:
    """Generate the synthetic state into GeoTIFFs or straight into a scene store."""
    grid = cfg.grid
    if cfg.format == "store":
        out = cfg.output
        with replace_store(out, overwrite=cfg.overwrite) as work_url:
            build_store(
                work_url,
                grid,
                SynthReader(cfg),
                band_names=list(BAND_NAMES),
                dtype="uint16",
                nodata=NODATA,
                with_label=True,
                unlabelled=UNLABELLED,
                class_names=class_names(),
                chunk=cfg.chunk,
                block=cfg.block,
                engine=cfg.engine,
                source={"synthetic": cfg.to_dict()},
                overwrite=cfg.overwrite,
                progress=progress,
                what_nodata="the synthetic scene has no valid pixel; make it larger",
            )
        return SynthOutputs(images=(), label=None, store=out, grid=grid)
    folder = Path(cfg.output)
    staged = _write_geotiffs(cfg, grid, progress=progress)
    made = SynthOutputs(
        images=tuple(dest for dest, _ in staged[:-1]),
        label=staged[-1][0],
        store=None,
        grid=grid,
    )
    try:
        if cfg.tiles:
            from w2w.ingest.synth_tiles import tile_windows, write_tiles

            staged += write_tiles(
                staged[0][1],
                staged[-1][1],
                grid,
                folder,
                size=cfg.tile_size,
                overlap=cfg.tile_overlap,
                seed=cfg.seed,
                inside=state_mask(cfg, grid.full_window) if cfg.fill_box else None,
            )
            tiles = tuple(
                str(folder / "tiles" / f"tile_{i:02d}_{j:02d}.tif")
                for i, j, _ in tile_windows(grid, cfg.tile_size, cfg.tile_overlap)
            )
            made = replace(
                made,
                tiles=tiles,
                boundary=str(folder / "boundary.gpkg"),
                vector_labels=str(folder / "labels.gpkg"),
            )
    except BaseException:
        for _, path in staged:
            cleanup(f"removing {path}", remove_path, path)
        raise
    # One set: the GeoTIFFs, the tiles folder (replaced whole) and the vector files.
    publish_files([(dest, path) for dest, path in staged])
    return made


def _write_geotiffs(cfg: SynthConfig, grid: Grid, *, progress: bool) -> list[tuple[str, Path]]:
    """The image GeoTIFF(s) and the labels, written under staging names beside where they go;
    ``(destination, staged)``, the labels last."""
    if storage.is_remote(cfg.output):
        raise ValueError(
            "synthetic GeoTIFFs are written to a local folder; use format=store for s3://"
        )
    folder = Path(cfg.output)
    targets = [folder / n for n in geotiff_names(cfg)] + [folder / "labels.tif"]
    # Existing ones need overwrite: the output guard of the stage registry.
    storage.ensure_writable_dir(folder)
    profile = {
        "driver": "GTiff",
        "width": grid.width,
        "height": grid.height,
        "crs": grid.crs,
        "transform": grid.transform,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
        "predictor": 2,
        "BIGTIFF": "IF_SAFER",
    }
    tag = staging_tag()
    tmp = [t.with_name(f".{t.name}.w2w-tmp-{tag}.tif") for t in targets]
    try:
        with storage.writing_to(folder):
            _write_parts(cfg, grid, profile, tmp, progress=progress)
    except BaseException:
        for t in tmp:
            t.unlink(missing_ok=True)
        raise
    return [(str(final), t) for t, final in zip(tmp, targets, strict=True)]


def _write_parts(
    cfg: SynthConfig, grid: Grid, profile: dict[str, Any], tmp: list[Path], *, progress: bool
) -> None:
    """Write the image GeoTIFF(s) and the labels, block by block, under their staging names."""
    band_count = 1 if cfg.separate_bands else len(BAND_NAMES)
    image_dsts = [
        rasterio.open(p, "w", **profile, count=band_count, dtype="uint16", nodata=NODATA)
        for p in tmp[:-1]
    ]
    label_dst = rasterio.open(tmp[-1], "w", **profile, count=1, dtype="uint8", nodata=None)
    try:
        for dst in image_dsts:
            if cfg.separate_bands:
                dst.set_band_description(1, BAND_NAMES[image_dsts.index(dst)])
            else:
                for b, name in enumerate(BAND_NAMES, start=1):
                    dst.set_band_description(b, name)
        for window, (img, cover) in run_blocks(
            _WindowedReader(cfg),
            grid.blocks(cfg.block).windows(),
            engine=cfg.engine,
            what="synthesise",
            progress=progress,
        ):
            rw = window.to_rasterio()
            if cfg.separate_bands:
                for b, dst in enumerate(image_dsts):
                    dst.write(img[b : b + 1], window=rw)
            else:
                image_dsts[0].write(img, window=rw)
            label_dst.write(cover[None], window=rw)
    finally:
        for dst in [*image_dsts, label_dst]:
            dst.close()


class _WindowedReader:
    """Like :class:`SynthReader`, returning the window with the data (for ordered writes)."""

    def __init__(self, cfg: SynthConfig) -> None:
        self.reader = SynthReader(cfg)

    def __call__(self, window: Window) -> tuple[Window, tuple[np.ndarray, np.ndarray]]:
        return window, self.reader(window)
