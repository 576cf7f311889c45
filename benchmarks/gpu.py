"""GPU throughput of prediction: the model alone, and the actor's whole per-block path, in bf16
and fp32, with a projection of the statewide prediction time on A10G GPUs (AWS G5).

On one CUDA GPU, in one run (about 3 minutes):

- **model only**: Unet/resnet34 (6 bands, 6 classes, random init) at 256 px chips in
  channels-last, bf16 and fp32, over a batch-size sweep: chips/s, Mpx/s, peak GPU memory,
  GPU utilisation;
- **block path**: :class:`w2w.predict.engine.BlockEngine`, exactly what a prediction actor
  runs per block -- raw uint16 pixels to the device, normalise, forward over the block's
  chips, Hann blend, argmax, uint8 back -- on 2048 px blocks at stride = chip / 2, at the
  best batch of the sweep, bf16 and fp32: output Mpx/s, chips/s, its ratio to model only,
  and the share of pixels whose class bf16 and fp32 agree on (random-init model);
- **projection** for Chihuahua (about 247,000 km², ~2.47 billion pixels at 10 m) on 1, 4
  and 8 A10G GPUs from the block path's bf16 rate, with the formula printed beside it.

It imports only torch, timm, segmentation-models-pytorch, numpy, safetensors and w2w's pure
modules (no Ray, GDAL, zarr or pydantic), so it runs on a bare machine with PyTorch:

    python -m benchmarks gpu [--out bench-out/gpu] [--batches 8,16,32,64] [--results]

Without a CUDA GPU it says so and exits with status 3; nothing is measured or recorded.
``--device cpu --quick`` runs the same code on a CPU with small sizes (the test suite does,
to keep the module importable and its import list pure).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import publish, run_header

MODEL = {"arch": "Unet", "encoder": "resnet34"}
CHIHUAHUA_KM2 = 247_000.0
BANDS = CLASSES = 6


#: Dense bf16 tensor throughput (TFLOP/s) and memory bandwidth (TB/s) from the vendors'
#: datasheets, for scaling a figure measured on one GPU to another. A CNN's inference sits
#: between the two limits, so the projection is given as the range they span.
GPU_SPECS: dict[str, tuple[float, float]] = {
    "A10G": (70.0, 0.60),
    "A10": (125.0, 0.60),
    "L4": (121.0, 0.30),
    "A100": (312.0, 2.0),
    "H100": (989.0, 3.35),
    "H200": (989.0, 4.8),
}


def spec_of(name: str) -> tuple[str, tuple[float, float]] | None:
    """The datasheet entry whose key appears in a device name, e.g. 'NVIDIA H200' -> H200."""
    for key in sorted(GPU_SPECS, key=len, reverse=True):
        if key.lower() in name.lower():
            return key, GPU_SPECS[key]
    return None


@dataclass(frozen=True)
class Projection:
    """Statewide prediction time on ``gpus`` A10Gs from a chips/s figure measured here."""

    gpus: int
    hours_low: float  # scaled by the larger of the two ratios (compute, bandwidth)
    hours_high: float  # scaled by the smaller one


def project(
    pixels: float,
    chip: int,
    stride: int,
    halo_factor: float,
    chips_per_s: float,
    measured_on: tuple[float, float],
    gpus: tuple[int, ...] = (1, 4, 8),
    target: tuple[float, float] = GPU_SPECS["A10G"],
    scaling_efficiency: float = 0.95,
) -> list[Projection]:
    """hours = pixels / stride² x halo_factor / (chips_per_s x r x N x e) / 3600, where r is
    the A10G / measured-GPU ratio of bf16 compute or of memory bandwidth (the larger ratio
    gives the low bound, the smaller the high one), N the GPUs and e the efficiency of adding
    GPUs (blocks are independent: near 1)."""
    chips = pixels / (stride * stride) * halo_factor
    del chip  # the chip size enters through chips_per_s (measured at that size)
    r_compute = target[0] / measured_on[0]
    r_bandwidth = target[1] / measured_on[1]
    out = []
    for n in gpus:
        e = 1.0 if n == 1 else scaling_efficiency
        fast, slow = max(r_compute, r_bandwidth), min(r_compute, r_bandwidth)
        out.append(
            Projection(
                n,
                chips / (chips_per_s * fast * n * e) / 3600,
                chips / (chips_per_s * slow * n * e) / 3600,
            )
        )
    return out


# -- GPU utilisation ------------------------------------------------------------------------------


@contextlib.contextmanager
def gpu_utilisation(device: str = "cuda", interval: float = 0.2) -> Iterator[dict[str, float]]:
    """Sample ``nvidia-smi`` while a block runs; yields a dict filled with mean / max % and the
    peak memory used (MiB) when the block ends (empty on a CPU)."""
    stats: dict[str, float] = {}
    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    exe = shutil.which("nvidia-smi") if device == "cuda" else None

    def sample() -> None:
        while exe and not stop.wait(interval):
            try:
                line = subprocess.run(
                    [
                        exe,
                        "--query-gpu=utilization.gpu,memory.used",
                        "--format=csv,noheader,nounits",
                        "--id=0",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=5,
                ).stdout.strip()
                util, mem = (float(v) for v in line.split(","))
                samples.append((util, mem))
            except (OSError, ValueError, subprocess.SubprocessError):
                return

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield stats
    finally:
        stop.set()
        thread.join()
        if samples:
            stats["util_mean"] = round(sum(u for u, _ in samples) / len(samples), 1)
            stats["util_max"] = max(u for u, _ in samples)
            stats["mem_used_mib"] = max(m for _, m in samples)


# -- model only -----------------------------------------------------------------------------------


def build(device: str) -> Any:
    """Unet/resnet34 with random weights, on ``device``, in inference mode."""
    import torch

    from w2w.model.models import ModelSpec, build_model

    torch.manual_seed(0)
    spec = ModelSpec(MODEL["arch"], MODEL["encoder"], BANDS, CLASSES)
    return build_model(spec).to(device).eval()


def model_sweep(
    device: str,
    sizes: tuple[int, ...],
    batches: tuple[int, ...],
    seconds: float = 5.0,
    precision: str = "bf16",
) -> list[dict[str, Any]]:
    """Model-only forward throughput (softmax included) per chip size and batch size, in the
    memory layout prediction uses (channels last)."""
    import torch

    from w2w.model.models import channels_last, channels_last_input

    model = channels_last(build(device))
    low = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    rows = []
    for size in sizes:
        for batch in batches:
            x = channels_last_input(torch.randn(batch, BANDS, size, size, device=device))
            if device == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            try:
                with (
                    torch.inference_mode(),
                    torch.autocast(device, dtype=low or torch.float32, enabled=low is not None),
                    gpu_utilisation(device) as util,
                ):
                    for _ in range(3):  # warm-up (cuDNN autotuning)
                        torch.softmax(model(x).float(), dim=1)
                    _sync(device)
                    n, t0 = 0, time.perf_counter()
                    while n < 5 * batch or time.perf_counter() - t0 < seconds:
                        torch.softmax(model(x).float(), dim=1)
                        n += batch
                    _sync(device)
                    dt = time.perf_counter() - t0
            except torch.OutOfMemoryError:
                rows.append({"chip": size, "batch": batch, "error": "out of memory"})
                break
            rows.append(
                {
                    "chip": size,
                    "batch": batch,
                    "precision": precision,
                    "chips_per_s": round(n / dt, 1),
                    "mpx_per_s": round(n * size * size / dt / 1e6, 2),
                    "peak_mem_mib": round(torch.cuda.max_memory_allocated() / 2**20)
                    if device == "cuda"
                    else None,
                    **util,
                }
            )
    return rows


# -- the actor's per-block path ---------------------------------------------------------------


def block_path(
    device: str,
    chip: int,
    batch: int,
    precision: str,
    block: int = 2048,
    seconds: float = 10.0,
) -> tuple[dict[str, Any], Any]:
    """What a prediction actor does per block, timed over whole blocks of smooth synthetic
    uint16 imagery (every pixel valid): raw pixels in, uint8 classes and confidence out.
    Returns the row and the classes of the last block (for the bf16 / fp32 agreement)."""
    import numpy as np

    from w2w.core.windows import Window
    from w2w.model.normalization import Normalizer
    from w2w.predict.engine import BlockEngine, EngineSettings
    from w2w.predict.plan import BlockPlan

    stride = chip // 2
    plan = BlockPlan(4 * block, 4 * block, block, chip, stride)
    norm = Normalizer("percentile", (500.0,) * BANDS, (2500.0,) * BANDS, (500.0,) * BANDS,
                      (3000.0,) * BANDS)  # fmt: skip
    engine = BlockEngine(
        build(device),
        norm,
        list(range(1, CLASSES + 1)),
        plan,
        device,
        EngineSettings(batch_size=batch, precision=precision),
    )
    b = Window(block, block, block, block)  # an inner block: the full halo of chips
    size = plan.window_size
    rng = np.random.default_rng(0)
    coarse = rng.uniform(500, 3000, (BANDS, size // 32 + 1, size // 32 + 1))
    image = coarse.repeat(32, axis=1).repeat(32, axis=2)[:, :size, :size].astype(np.uint16)
    valid = np.ones((size, size), dtype=bool)
    engine.predict(b, engine.stage(b, image, valid))  # warm-up
    _sync(device)
    n, t0 = 0, time.perf_counter()
    with gpu_utilisation(device) as util:
        while n < 2 or time.perf_counter() - t0 < seconds:
            cls, _ = engine.predict(b, engine.stage(b, image, valid))  # uint8 on the host
            n += 1
    dt = time.perf_counter() - t0
    chips = len(plan.chips(b))
    distinct = (block // stride) ** 2
    row = {
        "chip": chip,
        "stride": stride,
        "block": block,
        "batch": batch,
        "precision": precision,
        "blocks": n,
        "chips_per_block": chips,
        "halo_factor": round(chips / distinct, 4),
        "chips_per_s": round(n * chips / dt, 1),
        "mpx_per_s": round(n * block * block / dt / 1e6, 2),
        **util,
    }
    return row, cls


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


# -- the run --------------------------------------------------------------------------------------


def markdown(res: dict[str, Any], header: dict[str, Any]) -> str:
    """The results as one Markdown table (and the projection) for RESULTS.md."""
    lines = [
        f"### GPU, {header['date']} — {header['machine']}",
        "",
        f"- Command: `{header['command']}`; commit `{header['commit']}`; device "
        f"{res['device_name']}",
        "",
        "| what | chip | stride | batch | precision | chips/s | Mpx/s | ÷ model only | "
        "peak GPU MiB | util % |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in res["sweep"]:
        if "error" in r:
            lines.append(f"| model only | {r['chip']} | | {r['batch']} | | {r['error']} | | | | |")
            continue
        lines.append(
            f"| model only | {r['chip']} | | {r['batch']} | {r['precision']} | "
            f"{r['chips_per_s']} | {r['mpx_per_s']} | | {r['peak_mem_mib'] or ''} | "
            f"{r.get('util_mean', '')} |"
        )
    for r in res["block_path"]:
        lines.append(
            f"| block path ({r['block']} px blocks, output Mpx/s) | {r['chip']} | {r['stride']} "
            f"| {r['batch']} | {r['precision']} | {r['chips_per_s']} | {r['mpx_per_s']} | "
            f"{r['ratio_to_model_only']:.2f} | | {r.get('util_mean', '')} |"
        )
    lines += [
        "",
        f"bf16 and fp32 give the same class on {100 * res['agreement']:.2f}% of a block's pixels "
        "(random-init model).",
        "",
        "Projection for Chihuahua (A10G):",
        "",
        res["formula"],
        "",
        "| A10G GPUs | hours, low bound | hours, high bound |",
        "|---:|---:|---:|",
    ]
    for p in res["projection"]:
        lines.append(f"| {p['gpus']} | {p['hours_low']:.2f} | {p['hours_high']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the GPU benchmark; see the module docstring."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks gpu", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--out", default="bench-out/gpu")
    parser.add_argument("--batches", default="8,16,32,64")
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per point")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    parser.add_argument("--results", action="store_true", help="append to benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    import numpy as np
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU on this machine: nothing measured", file=sys.stderr)
        return 3
    device = args.device
    chip, block = (64, 128) if args.quick else (256, 2048)
    seconds = 0.2 if args.quick else args.seconds
    batches = tuple(int(b) for b in args.batches.split(","))
    name = torch.cuda.get_device_name(0) if device == "cuda" else "CPU"
    sweep = []
    for precision in ("bf16", "fp32"):
        sweep += model_sweep(device, (chip,), batches, seconds, precision)
    print(json.dumps(sweep, indent=1), flush=True)
    paths, classes = [], {}
    for precision in ("bf16", "fp32"):
        ok = [r for r in sweep if r.get("precision") == precision and "error" not in r]
        best = max(ok, key=lambda r: r["chips_per_s"])
        row, classes[precision] = block_path(
            device, chip, best["batch"], precision, block, 2 * seconds
        )
        row["ratio_to_model_only"] = round(row["chips_per_s"] / best["chips_per_s"], 3)
        paths.append(row)
        print(json.dumps(row), flush=True)
    agreement = float(np.mean(classes["bf16"] == classes["fp32"]))
    bf16 = paths[0]
    pixels = CHIHUAHUA_KM2 * 1e6 / (10.0 * 10.0)
    here = spec_of(name)
    projection: list[Projection] = []
    formula = f"no datasheet entry for {name}: no projection"
    if here is not None:
        projection = project(
            pixels, chip, bf16["stride"], bf16["halo_factor"], bf16["chips_per_s"], here[1]
        )
        formula = (
            f"hours = pixels / stride² × halo / (chips/s × r × N × e) / 3600, with pixels = "
            f"{pixels:.3g} (247,000 km² at 10 m), stride {bf16['stride']}, halo "
            f"{bf16['halo_factor']} ({block} px blocks), chips/s {bf16['chips_per_s']} of the "
            f"block path in bf16 on {name}, r = A10G / {here[0]} ratio of bf16 compute "
            f"({GPU_SPECS['A10G'][0]}/{here[1][0]} TFLOP/s) or of memory bandwidth "
            f"({GPU_SPECS['A10G'][1]}/{here[1][1]} TB/s), e = 0.95 for N > 1 (blocks are "
            "independent; reads and writes run on CPU nodes beside the GPUs)."
        )
    res = {
        "device_name": name,
        "sweep": sweep,
        "block_path": paths,
        "agreement": agreement,
        "projection": [p.__dict__ for p in projection],
        "formula": formula,
    }
    header = run_header("python -m benchmarks gpu", argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    publish(out / "gpu.json", header, res, markdown(res, header), record=args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
