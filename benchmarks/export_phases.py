"""Where ``w2w export``'s time goes, phase by phase, beside GDAL's COG driver on the same
classes: ``python -m benchmarks export-phases MOSAIC [--out DIR]``.

The throughput benchmark compares the whole export (classes staged from the mosaic, the COG,
its check, quicklook, footprint, STAC and model Items validated, styles, publish) with GDAL's
COG driver converting a plain GeoTIFF of the same classes. This splits w2w's side into its
phases (each timed where ``w2w.export.run`` calls it, on a warm process: the second of two
runs) so that a ratio below 1 shows what it pays for.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

#: Steps inside staging (``write_stages``), timed as methods of the footprint builder: the
#: valid area's outline, which GDAL's COG driver does not make.
FOOTPRINT = ("add", "outline")

#: The functions ``w2w.export.run`` calls, timed by name.
PHASES = (
    "write_stages",
    "to_cog",
    "check_cog",
    "export_vector",
    "render_quicklook",
    "footprint_wgs84",
    "model_item",
    "stac_item",
    "validate_item",
    "publish_files",
)


def export_phases(mosaic: str, out: Path) -> dict[str, Any]:
    """Seconds per phase of a warm ``w2w export`` of ``mosaic``, its total, and GDAL's COG
    driver on a plain GeoTIFF of the same classes."""
    import w2w.export.run as run
    from benchmarks.throughput import gdal_cog, plain_geotiff
    from w2w.export import ExportConfig, export
    from w2w.export.footprint import FootprintBuilder

    out.mkdir(parents=True, exist_ok=True)
    cfg = ExportConfig(input=mosaic, output=str(out / "map.tif"), confidence="none", overwrite=True)  # type: ignore[arg-type]
    export(cfg, progress=False)  # imports and caches warm, as in a long job
    spent: dict[str, float] = {}
    originals = {name: getattr(run, name) for name in PHASES}
    methods = {name: getattr(FootprintBuilder, name) for name in FOOTPRINT}
    inside: dict[str, float] = {}

    depth: dict[str, int] = {}  # the builder's add calls itself on tiles: outer calls only

    def timed_call(fn: Any, books: dict[str, float], name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            depth[name] = depth.get(name, 0) + 1
            try:
                return fn(*args, **kwargs)
            finally:
                depth[name] -= 1
                if depth[name] == 0:
                    books[name] = books.get(name, 0.0) + time.perf_counter() - t0

        return call

    try:
        for name, fn in originals.items():
            setattr(run, name, timed_call(fn, spent, name))
        for name, fn in methods.items():
            setattr(FootprintBuilder, name, timed_call(fn, inside, "footprint"))
        t0 = time.perf_counter()
        export(cfg, progress=False)
        total = time.perf_counter() - t0
    finally:
        for name, fn in originals.items():
            setattr(run, name, fn)
        for name, fn in methods.items():
            setattr(FootprintBuilder, name, fn)
    plain = out / "plain.tif"
    plain_geotiff(mosaic, plain)
    gdal_cog(plain, out / "gdal-cog.tif")  # warm
    t0 = time.perf_counter()
    gdal_cog(plain, out / "gdal-cog.tif")
    gdal = time.perf_counter() - t0
    core = spent.get("write_stages", 0.0) + spent.get("to_cog", 0.0)
    return {
        "total_seconds": round(total, 3),
        "phases": {k: round(v, 3) for k, v in sorted(spent.items(), key=lambda kv: -kv[1])},
        "other_seconds": round(total - sum(spent.values()), 3),
        "within_write_stages": {k: round(v, 3) for k, v in inside.items()},
        "gdal_cog_seconds": round(gdal, 3),
        "gdal_over_whole_export": round(gdal / total, 3),
        "gdal_over_stage_and_cog": round(gdal / core, 3) if core else None,
    }


def main(argv: list[str] | None = None) -> int:
    """Print the phases of an export of the given mosaic."""
    import json

    parser = argparse.ArgumentParser(prog="python -m benchmarks export-phases")
    parser.add_argument("mosaic")
    parser.add_argument("--out", default="bench-out/export-phases")
    args = parser.parse_args(argv)
    print(json.dumps(export_phases(args.mosaic, Path(args.out)), indent=2))
    return 0
