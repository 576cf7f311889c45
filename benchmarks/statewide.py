"""Statewide inputs: ingest from tiles in two UTM zones against GDAL's warper doing the same
job, memory as the tiles grow, and the whole pipeline inside a boundary against the same
state without one.

    python -m benchmarks statewide [--size 1536] [--out bench-out/statewide] [--results]
    python -m benchmarks statewide --whole --size 16384 [--s3-sizes 4096,8192] [--results]

In one run, on the synthetic state written as overlapping tiles in UTM 12N and 13N (imagery
everywhere in its bounding box) and mapped on EPSG:6372 at 10 m:

- **ingest ÷ GDAL**: ``w2w ingest --tiles`` (one Ray task per block, only the tiles that
  meet it) against GDAL's warper with all threads (``NUM_THREADS=ALL_CPUS``) warping every
  tile onto the whole grid with the same exact transformer and resampling, combined first
  valid first, written to a tiled GeoTIFF: the same pixels (tests/test_tiles.py) -- target
  >= 0.8;
- **memory**: peak memory of the ingest with 4x the tiles (a state of twice the edge) ÷ 1x
  -- target <= 1.2;

(Without a boundary, the area to map is the whole box the tiles image.)
- **boundary**: ingest -> train -> predict -> sieve -> export -> evaluate inside a boundary
  that covers about half the bounding box, ÷ the same state and settings with no boundary
  (the whole box is the area to map) -- target <= 0.6. Imagery and field labels cover the
  whole box, as around a real state; inside a boundary, w2w ingests, trains on, predicts,
  sieves, exports and evaluates only what lies inside it.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import publish, run_header, timed

TARGET = "EPSG:6372"
CLASSES = "1=forest,2=grassland,3=shrubland,4=water,5=urban,6=bare"


@dataclass(frozen=True)
class Settings:
    """What one run measures."""

    size: int = 1536
    seed: int = 0
    block: int = 512
    chunk: int = 256
    pipeline_size: int = 3072
    epochs: int = 5


def make_state(folder: Path, size: int, seed: int, tile: int | None = None) -> Any:
    """The synthetic state as overlapping tiles of ``tile`` px (default: about 3 x 3 of
    them), imagery and labels everywhere in its box."""
    from w2w.ingest import SynthConfig, synthesize

    return synthesize(
        SynthConfig(
            output=str(folder),
            height=size,
            width=size,
            seed=seed,
            tiles=True,
            tile_size=tile or size // 3 + 64,
            tile_overlap=64,
            boundary_scale=1.0,
            fill_box=True,
            engine="local",
            overwrite=True,
        ),
        progress=False,
    )


def write_boundary(path: Path, polygon: Any, crs_wkt: str) -> dict[str, str]:
    """A one-polygon GeoPackage: a boundary for ``--aoi``."""
    import pyogrio.raw
    import shapely

    pyogrio.raw.write(
        str(path),
        shapely.to_wkb(np.asarray([polygon], dtype=object)),
        [],
        [],
        driver="GPKG",
        geometry_type="Polygon",
        crs=crs_wkt,
    )
    return {"aoi": str(path)}


def box_aoi(state: Any, path: Path) -> dict[str, str]:
    """No boundary: the whole box the state's tiles image, as the area to map."""
    import shapely

    return write_boundary(path, shapely.box(*state.grid.bounds), state.grid.crs.to_wkt())


def w2w_ingest(state: Any, out: Path, s: Settings, **kw: Any) -> Any:
    from w2w.ingest import IngestConfig, ingest

    cfg = IngestConfig.from_dict(
        {
            "tiles": list(state.tiles),
            "output": str(out),
            "crs": TARGET,
            "resolution": 10.0,
            "chunk": s.chunk,
            "block": s.block,
            "overwrite": True,
            **kw,
        }
    )
    return ingest(cfg, progress=False)


def gdal_mosaic(state: Any, grid: Any, out: Path) -> None:
    """GDAL's warper, all threads, each tile onto the part of the grid its footprint covers
    (as gdalwarp does; exact transformer, as w2w), first valid pixel first; written as a
    tiled GeoTIFF."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT
    from rasterio.warp import transform_bounds
    from rasterio.windows import Window, from_bounds

    bands = None
    filled = np.zeros(grid.shape, dtype=bool)
    for path in state.tiles:
        with rasterio.open(path) as src:
            box = transform_bounds(src.crs, grid.crs, *src.bounds, densify_pts=21)
            w = from_bounds(*box, transform=grid.transform)
            r0, c0 = max(int(w.row_off) - 3, 0), max(int(w.col_off) - 3, 0)
            r1 = min(math.ceil(w.row_off + w.height) + 3, grid.height)
            c1 = min(math.ceil(w.col_off + w.width) + 3, grid.width)
            if r1 <= r0 or c1 <= c0:
                continue
            with WarpedVRT(
                src,
                crs=grid.crs,
                transform=grid.transform,
                width=grid.width,
                height=grid.height,
                resampling=Resampling.bilinear,
                src_nodata=src.nodata,
                nodata=math.nan,
                dtype="float32",
                tolerance=1e-9,
                XSCALE=1,
                YSCALE=1,
                warp_mem_limit=256,
                warp_extras={"NUM_THREADS": "ALL_CPUS"},
            ) as vrt:
                data = vrt.read(window=Window(c0, r0, c1 - c0, r1 - r0))
        if bands is None:
            bands = np.zeros((data.shape[0], *grid.shape), dtype="uint16")
        part = (slice(r0, r1), slice(c0, c1))
        valid = ~np.isnan(data).any(axis=0) & ~filled[part]
        view = bands[(slice(None), *part)]
        view[:, valid] = np.floor(data[:, valid] + 0.5).astype("uint16")
        filled[part] |= valid
    assert bands is not None
    profile = {
        "driver": "GTiff",
        "width": grid.width,
        "height": grid.height,
        "count": bands.shape[0],
        "dtype": "uint16",
        "crs": grid.crs,
        "transform": grid.transform,
        "nodata": 0,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "zstd",
    }
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(bands)


def circle_aoi(state: Any, path: Path, share: float) -> dict[str, str]:
    """A boundary: a disc in the middle of the state covering ``share`` of its box."""
    import shapely

    left, bottom, right, top = state.grid.bounds
    r = math.sqrt(share * (right - left) * (top - bottom) / math.pi)
    disc = shapely.Point((left + right) / 2, (bottom + top) / 2).buffer(r, quad_segs=32)
    return write_boundary(path, disc, state.grid.crs.to_wkt())


def pipeline(state: Any, work: Path, s: Settings, area: dict[str, Any]) -> dict[str, float]:
    """Every stage after synth, on the state's tiles; seconds per stage."""
    from w2w.pipeline import PipelineConfig, run_pipeline

    cfg = PipelineConfig.from_dict(
        {
            "workdir": str(work),
            "ingest": {
                "tiles": list(state.tiles),
                "crs": TARGET,
                "resolution": 10.0,
                "label": state.vector_labels,
                "label_field": "class",
                "classes": CLASSES,
                "chunk": 256,
                "block": 512,
                "overwrite": True,
                **area,
            },
            "train": {
                "run_name": "bench",
                "overwrite": True,
                "epochs": s.epochs,
                "batch_size": 8,
                "model": {
                    "arch": "Unet",
                    "encoder": "tu-resnet10t",
                    "options": {"encoder_depth": 3, "decoder_channels": [32, 16, 8]},
                },
                "chips": {"size": 64, "stride": 64},
                "split": {"block_chips": 4},
                "workers": {"num_workers": 1},
                "patience": None,
            },
            "predict": {"block": 512, "batch_size": 16, "overwrite": True},
            "sieve": {"min_pixels": 4, "overwrite": True},
            "export": {"overwrite": True},
            "evaluate": {"overwrite": True},
        }
    )
    return dict(run_pipeline(cfg, progress=False).seconds)


def run(s: Settings, out: Path, log: Any = print) -> dict[str, Any]:
    """Every measurement of this benchmark, in one run."""
    from w2w.core.runtime import ensure_ray
    from w2w.core.store import SceneStore

    ensure_ray()
    res: dict[str, Any] = {"settings": s.__dict__}
    small = make_state(out / "state", s.size, s.seed)
    big = make_state(out / "state4x", 2 * s.size, s.seed, tile=s.size // 3 + 64)
    box = box_aoi(small, out / "box.gpkg")
    w2w_ingest(small, out / "warmup.zarr", s, **box)  # Ray workers started, imports cached
    log("ingest from tiles (w2w) ...")
    w = timed(lambda: w2w_ingest(small, out / "scene.zarr", s, **box))
    grid = SceneStore.open(str(out / "scene.zarr")).grid
    log("the same mosaic by GDAL's warper ...")
    g = timed(lambda: gdal_mosaic(small, grid, out / "gdal.tif"))
    px = grid.height * grid.width
    res["ingest"] = {
        "pixels": px,
        "tiles": len(small.tiles),
        "w2w_s": w.seconds,
        "gdal_s": g.seconds,
        "w2w_mpx_s": px / w.seconds / 1e6,
        "gdal_mpx_s": px / g.seconds / 1e6,
        "ratio": g.seconds / w.seconds,
    }
    log("ingest with 4x the tiles ...")
    big_box = box_aoi(big, out / "box4x.gpkg")
    w4 = timed(lambda: w2w_ingest(big, out / "scene4x.zarr", s, **big_box))
    res["memory"] = {
        "tiles_1x": len(small.tiles),
        "tiles_4x": len(big.tiles),
        "peak_1x_mib": w.peak_mib,
        "peak_4x_mib": w4.peak_mib,
        "grown_1x_mib": w.grown_mib,
        "grown_4x_mib": w4.grown_mib,
        "ratio": w4.peak_mib / w.peak_mib,
        "seconds_4x": w4.seconds,
    }
    log("whole pipeline inside a boundary covering half the box, and without one ...")
    warm = make_state(out / "warm-state", 512, s.seed + 2)
    pipeline(warm, out / "warm", s, box_aoi(warm, out / "warm-box.gpkg"))  # every stage once
    state = make_state(out / "pipe-state", s.pipeline_size, s.seed + 1)
    half = circle_aoi(state, out / "half.gpkg", 0.5)
    inside = pipeline(state, out / "with-boundary", s, half)
    whole = pipeline(state, out / "no-boundary", s, box_aoi(state, out / "pipe-box.gpkg"))
    res["boundary"] = {
        "with_s": inside,
        "without_s": whole,
        "ratio": sum(inside.values()) / sum(whole.values()),
    }
    return res


def markdown(res: dict[str, Any], header: dict[str, Any]) -> str:
    i, m, b = res["ingest"], res["memory"], res["boundary"]
    stages = ", ".join(f"{k} {b['with_s'][k]:.0f}/{b['without_s'][k]:.0f} s" for k in b["with_s"])
    return "\n".join(
        [
            f"## Statewide inputs ({header['date']})",
            "",
            f"Machine: {header['machine']}. Command: `{header['command']}`. Commit: "
            f"`{header['commit']}`.",
            "",
            "| measurement | w2w | reference | ratio | target |",
            "|---|---:|---:|---:|---:|",
            f"| ingest from {i['tiles']} tiles in UTM 12N + 13N onto EPSG:6372, 10 m "
            f"({i['pixels'] / 1e6:.1f} Mpx) | {i['w2w_mpx_s']:.2f} Mpx/s ({i['w2w_s']:.1f} s) "
            f"| GDAL warper, all threads: {i['gdal_mpx_s']:.2f} Mpx/s ({i['gdal_s']:.1f} s) "
            f"| **{i['ratio']:.2f}** | >= 0.8 |",
            f"| peak memory, {m['tiles_4x']} tiles ÷ {m['tiles_1x']} tiles | "
            f"{m['peak_4x_mib']:.0f} MiB | {m['peak_1x_mib']:.0f} MiB | **{m['ratio']:.2f}** "
            "| <= 1.2 |",
            f"| whole pipeline, boundary covering half the box ÷ no boundary | "
            f"{sum(b['with_s'].values()):.0f} s | {sum(b['without_s'].values()):.0f} s | "
            f"**{b['ratio']:.2f}** | <= 0.6 |",
            "",
            f"Stages with / without the boundary: {stages}.",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks statewide")
    parser.add_argument("--size", type=int, default=Settings.size, help="state edge in pixels")
    parser.add_argument("--out", default="bench-out/statewide", help="working folder")
    parser.add_argument("--results", action="store_true", help="append to RESULTS.md")
    parser.add_argument(
        "--whole",
        action="store_true",
        help="every stage on the state at --size and at half its edge (benchmarks/whole_state.py)",
    )
    parser.add_argument(
        "--s3-sizes",
        default="",
        help="with --whole: sizes to run again on a loopback S3 server, counting requests",
    )
    parser.add_argument(
        "--requests-only",
        action="store_true",
        help="with --whole: only the --s3-sizes runs (the request counts)",
    )
    parser.add_argument(
        "--stage",
        default=None,
        help="with --whole: time this stage alone, over what an earlier run left in --out",
    )
    args = parser.parse_args(argv)
    out = Path(args.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    header = run_header("python -m benchmarks statewide", argv)
    t0 = time.time()
    if args.whole:
        from benchmarks import whole_state

        sizes = tuple(int(v) for v in args.s3_sizes.split(",") if v.strip())
        res = whole_state.run(args.size, out, sizes, local=not args.requests_only, only=args.stage)
        res["seconds"] = time.time() - t0
        text = whole_state.markdown(res, header)
        publish(out / "whole-state.json", header, res, text, record=args.results)
        return 0
    res = run(Settings(size=args.size), out)
    res["seconds"] = time.time() - t0
    publish(out / "statewide.json", header, res, markdown(res, header), record=args.results)
    return 0
