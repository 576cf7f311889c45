"""A statewide-size run through every stage, and what each stage costs per pixel.

    python -m benchmarks statewide --whole --size 16384 [--s3-sizes 4096,8192] [--results]

The synthetic state at ``--size`` px and at half its edge (a quarter of its area), each as an
agency receives one: overlapping tiles of 2112 px in UTM 12N and 13N (imagery over the whole
box), a boundary, and field labels as polygons and points, mapped on EPSG:6372 at 10 m with
the ingest's default chunking. Every stage of the pipeline runs on it, as ``w2w demo`` runs
them: ingest (tiles, boundary, vector labels) -> pretrain (a fixed sample of chips) -> train
(the tiny recipe, 1 epoch) -> predict -> sieve -> export (COG and ``--vector``) -> evaluate.
Per stage: wall seconds, the peak memory of the whole process tree (driver, raylet, object
store, workers), bytes its outputs hold, and µs per pixel of the state's bounding box; the
ratio of µs per pixel between the two sizes says whether cost stays linear.

With ``--s3-sizes``, the same stages run again with every output on an S3 server on
loopback (moto, server mode, its own process), tiles local: the requests each stage sends,
counted by the server's request log (an independent count: every HTTP request the server
answered), by method and by kind (zarr chunks vs everything else), at each size.

Pretraining and training run a fixed amount of work whatever the state's size (a chip
sample, one epoch over the labelled chips), so their µs per pixel is not a rate to project.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import timed

CLASSES = "1=forest,2=grassland,3=shrubland,4=water,5=urban,6=bare"
TILE = 2112
#: Chihuahua's area and its pixels at 10 m.
CHIHUAHUA_KM2 = 247_000.0
#: Stages whose work is independent Ray tasks or actors over blocks (they spread over every
#: CPU of a cluster); export writes its COG from one process (GDAL's threads), and the
#: others' cost here is a fixed sample (pretrain, train).
PER_BLOCK = ("ingest", "predict", "sieve", "evaluate")
ONE_NODE = ("export",)


@dataclass(frozen=True)
class StageCost:
    """What one stage took on one state."""

    stage: str
    seconds: float
    peak_mib: float
    #: Memory of the process tree when the stage started (what earlier stages left).
    start_mib: float
    out_bytes: int
    pixels: int
    requests: dict[str, int] | None = None


def _us_per_px(cost: dict[str, Any]) -> float:
    """Microseconds per pixel of the state's box, of a :class:`StageCost` as recorded."""
    return cost["seconds"] / cost["pixels"] * 1e6


def pipeline_config(size: int, workdir: str, state: Path, seed: int = 0) -> Any:
    """The whole job on the synthetic state of ``size`` px under ``state``, outputs in
    ``workdir`` (a folder or an ``s3://`` prefix)."""
    from w2w.pipeline import PipelineConfig

    tiny = {
        "arch": "Unet",
        "encoder": "tu-resnet10t",
        "options": {"encoder_depth": 3, "decoder_channels": [32, 16, 8]},
    }
    return PipelineConfig.from_dict(
        {
            "workdir": workdir,
            "synth": {
                "output": str(state),
                "height": size,
                "width": size,
                "seed": seed,
                "tiles": True,
                "tile_size": TILE,
                "tile_overlap": 64,
                "fill_box": True,
                "overwrite": True,
            },
            "ingest": {"crs": "EPSG:6372", "resolution": 10.0, "overwrite": True},
            "pretrain": {
                "run_name": "pretrain",
                "overwrite": True,
                "model": tiny,
                "chip_size": 64,
                "max_chips": 1024,
                "epochs": 1,
                "batch_size": 32,
                "workers": {"num_workers": 1},
                "seed": seed,
            },
            "train": {
                "run_name": "train",
                "overwrite": True,
                "model": tiny,
                "chips": {"size": 64, "stride": 64},
                "epochs": 1,
                "batch_size": 16,
                "workers": {"num_workers": 1},
                "patience": None,
                "seed": seed,
            },
            "predict": {"overwrite": True},
            "sieve": {"min_area_ha": 0.05, "overwrite": True},
            "export": {"overwrite": True, "vector": f"{workdir.rstrip('/')}/landcover.gpkg"},
            "evaluate": {"overwrite": True},
        }
    )


def _bytes_under(url: str) -> int:
    """Bytes a file, a folder or an ``s3://`` prefix holds."""
    if url.startswith("s3://"):
        import boto3

        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        client = boto3.client("s3")
        total = 0
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            total += sum(o["Size"] for o in page.get("Contents", []))
        return total
    p = Path(url)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


class RequestLog:
    """An S3 server (moto, server mode) on loopback in a process of its own, whose request
    log counts what each stage sent."""

    LINE = re.compile(r'"(GET|PUT|POST|HEAD|DELETE) (\S+) HTTP')

    def __init__(self, folder: Path, port: int | None = None) -> None:
        """Start the server on ``port`` (default: a free one), logging to ``folder``."""
        import socket

        if port is None:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = int(s.getsockname()[1])
        self.port = port
        self.path = folder / "s3-requests.log"
        exe = Path(sys.executable).with_name("moto_server")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "moto.server"]
        self._log = self.path.open("w")
        self.proc = subprocess.Popen(
            [*cmd, "-H", "127.0.0.1", "-p", str(self.port)], stdout=self._log, stderr=self._log
        )
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.offset = 0
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.2)
        self.close()
        raise RuntimeError(f"the S3 server (moto) did not start on port {self.port}")

    @staticmethod
    def kind(key: str) -> str:
        """What a request's key is: a data chunk of a zarr array, a cell of w2w's per-block
        books (``_w2w/...``: which blocks are done, their digests), zarr metadata, or any
        other object (files, run records, listings)."""
        if "/c/" in key:
            return "book" if "/_w2w/" in key else "chunk"
        if key.endswith("zarr.json"):
            return "meta"
        return "other"

    def take(self) -> dict[str, int]:
        """Requests answered since the last call: per method and per :meth:`kind`."""
        time.sleep(1.0)  # the server logs a request once it has answered it
        with self.path.open() as f:
            f.seek(self.offset)
            text = f.read()
            self.offset = f.tell()
        counts: Counter[str] = Counter()
        for method, target in self.LINE.findall(text):
            counts[method] += 1
            counts[self.kind(target.split("?")[0])] += 1
        counts["total"] = sum(counts[k] for k in ("chunk", "book", "meta", "other"))
        return dict(counts)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self._log.close()


def run_state(
    size: int,
    work: Path,
    log: Any,
    requests: RequestLog | None = None,
    only: str | None = None,
) -> list[StageCost]:
    """Every stage on the state of ``size`` px; outputs under ``work`` or, with ``requests``,
    on its S3 server (the tiles stay local). With ``only``, that stage alone, over what an
    earlier run left in ``work`` (the synthetic state is made only where it is missing)."""
    from w2w.pipeline import stage_configs
    from w2w.stages import stage_named

    if requests is not None:
        import boto3

        bucket = f"state-{size}"
        boto3.client("s3").create_bucket(Bucket=bucket)
        workdir = f"s3://{bucket}/work"
    else:
        workdir = str(work / "work")
    configs = stage_configs(pipeline_config(size, workdir, work / "state"))
    pixels = size * size
    costs = []
    for name, cfg in configs.items():
        if only and name != only:
            if name == "synth" and not (work / "state" / "tiles").exists():
                stage_named(name).run(cfg, progress=False)
            continue
        log(f"{size} px: {name} ...")
        if requests is not None:
            requests.take()
        os.sync()  # what the stage before wrote reaches the disk before this one is timed
        t = timed(lambda n=name, c=cfg: stage_named(n).run(c, progress=False))
        held = sum(_bytes_under(x.url) for x in cfg.output_targets())
        costs.append(
            StageCost(
                name,
                round(t.seconds, 1),
                round(t.peak_mib),
                round(t.start_mib),
                held,
                pixels,
                requests.take() if requests is not None else None,
            )
        )
        log(f"  {costs[-1]}")
    return costs


def run(
    size: int,
    out: Path,
    s3_sizes: tuple[int, ...],
    log: Any = print,
    *,
    local: bool = True,
    only: str | None = None,
) -> dict[str, Any]:
    """The whole-state rows at ``size`` and ``size // 2`` (unless not ``local``), and request
    counts on S3 at ``s3_sizes``."""
    from w2w.core.runtime import ensure_ray

    res: dict[str, Any] = {"size": size, "local": {}, "s3": {}}
    server = RequestLog(out) if s3_sizes else None
    if server is not None:  # before Ray starts: its workers inherit the endpoint
        os.environ.update(
            {
                "AWS_ENDPOINT_URL": server.endpoint,
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1",
            }
        )
    ensure_ray()
    try:
        run_state(512, out / "warm", log, only=only)  # Ray's workers started, imports cached
        for n in (size // 2, size) if local else ():
            costs = run_state(n, out / f"local-{n}", log, only=only)
            res["local"][n] = [c.__dict__ for c in costs]
        for n in s3_sizes:
            res["s3"][n] = [c.__dict__ for c in run_state(n, out / f"s3-{n}", log, server)]
    finally:
        if server is not None:
            server.close()
    return res


def _mem(cost: dict[str, Any]) -> str:
    """Peak MiB, and (where recorded) what the tree held when the stage started."""
    start = cost.get("start_mib")
    return f"{cost['peak_mib']:,.0f}" + (f" ({start:,.0f})" if start is not None else "")


def _gib(n: float) -> str:
    return f"{n / (1 << 30):.2f}"


def markdown(res: dict[str, Any], header: dict[str, Any]) -> str:
    """The rows, the linearity ratios, the request counts and the Chihuahua projection."""
    size = res["size"]
    lines = [
        f"### Statewide-size run, {header['date']} — {header['machine']}",
        "",
        f"- Command: `{header['command']}`; commit `{header['commit']}`; total "
        f"{res['seconds']:.0f} s",
    ]
    if not res["local"]:
        return "\n".join([*lines, *_requests_table(res)])
    small, big = res["local"][size // 2], res["local"][size]
    lines += [
        f"- The synthetic state at {size}² px ({size * size / 1e6:.0f} Mpx) and {size // 2}² px, "
        f"tiles of {TILE} px in UTM 12N + 13N, boundary, vector labels; EPSG:6372, 10 m, "
        "default chunking; the tiny model; pretrain 1024 chips × 1 epoch, train 1 epoch",
        "",
        f"| stage | {size // 2} px s | {size} px s | µs/px {size // 2} | µs/px {size} | "
        f"ratio | peak MiB {size // 2} (at start) | peak MiB {size} (at start) | GiB out {size} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for a, b in zip(small, big, strict=True):
        ua, ub = _us_per_px(a), _us_per_px(b)
        name = "synth (makes the inputs)" if a["stage"] == "synth" else a["stage"]
        lines.append(
            f"| {name} | {a['seconds']:.1f} | {b['seconds']:.1f} | {ua:.3f} | {ub:.3f} | "
            f"{ub / ua:.2f} | {_mem(a)} | {_mem(b)} | "
            f"{_gib(b['out_bytes'])} |"
        )
    lines += [*_requests_table(res)]
    if len(big) > 1:
        lines += ["", *projection(big)]
    return "\n".join(lines)


def _requests_table(res: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    if res["s3"]:
        sizes = sorted(res["s3"], key=int)
        lines += [
            "",
            "Object-storage requests per stage (every output on the loopback S3 server), "
            "as data chunks / book cells (w2w's per-block records) / zarr metadata / other "
            "objects:",
            "",
            "| stage | " + " | ".join(f"{n} px" for n in sizes) + " |",
            "|---|" + "---:|" * len(sizes),
        ]
        for i, row in enumerate(res["s3"][sizes[0]]):
            cells = []
            for n in sizes:
                r = res["s3"][n][i]["requests"] or {}
                kinds = ("chunk", "book", "meta", "other")
                cells.append(" / ".join(f"{r.get(k, 0):,}" for k in kinds))
            lines.append(f"| {row['stage']} | " + " | ".join(cells) + " |")
    return lines


def projection(costs: list[dict[str, Any]], cores_here: int = 2) -> list[str]:
    """Chihuahua on the CPU nodes of cluster.yaml (4 x c6i.4xlarge, 64 vCPUs) from the
    measured µs per pixel, for the stages that run per block."""
    px = CHIHUAHUA_KM2 * 1e4  # 100 m² a pixel
    out = [
        f"Projection for Chihuahua ({CHIHUAHUA_KM2:,.0f} km², {px / 1e9:.2f} Gpx at 10 m) from "
        f"the {costs[0]['pixels'] ** 0.5:.0f} px row, assuming: cost per pixel of the state's "
        "box as measured here (the synthetic boundary covers part of its box, as Chihuahua's "
        f"does of its own); {cores_here} CPUs here = 2 vCPUs there at the same speed; per-block "
        "stages spread over 64 vCPUs (4 x c6i.4xlarge) at 0.8 efficiency, export on one node "
        "at the rate measured here; predict with this tiny model on CPUs (a GPU run of the "
        "real model: `python -m benchmarks gpu`).",
        "",
        "| stage | hours on 2 CPUs | hours on 64 vCPUs |",
        "|---|---:|---:|",
    ]
    total = 0.0
    for c in costs:
        if c["stage"] not in PER_BLOCK + ONE_NODE:
            continue
        here = _us_per_px(c) * 1e-6 * px / 3600
        there = here * cores_here / (64 * 0.8) if c["stage"] in PER_BLOCK else here
        total += there
        out.append(f"| {c['stage']} | {here:.1f} | {there:.2f} |")
    out.append(f"| these stages | | {total:.2f} |")
    return out
