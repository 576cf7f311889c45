"""GPU throughput: model-only and pipeline chips/s, a short bf16 training run, and a projection
of the statewide prediction time on A10G GPUs (AWS G5).

On a CUDA GPU, in one run:

- **model only**: Unet/resnet34 (6 bands, 6 classes, random init) at 256 and 512 px chips,
  bf16 autocast, over a batch-size sweep: chips/s, Mpx/s, peak GPU memory, GPU utilisation;
- **pipeline**: ``w2w predict`` with one GPU actor over a synthetic state, at the best batch
  size of the sweep: chips/s and GPU utilisation, and its ratio to model only;
- **training**: a short ``w2w train`` run of Unet/resnet34 on 256 px chips with bf16 on one
  GPU: chips/s and GPU memory;
- **projection** for Chihuahua (about 247,000 km², ~2.47 billion pixels at 10 m) on 1, 4
  and 8 A10G GPUs, with the formula and its assumptions printed beside it.

    python -m benchmarks gpu [--out bench-out/gpu] [--scene 8192] [--results]

Without a CUDA GPU it says so and exits with status 3; nothing is measured or recorded.
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
def gpu_utilisation(interval: float = 0.2) -> Iterator[dict[str, float]]:
    """Sample ``nvidia-smi`` while a block runs; yields a dict filled with mean / max % and the
    peak memory used (MiB) when the block ends."""
    stats: dict[str, float] = {}
    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    exe = shutil.which("nvidia-smi")

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


def model_sweep(
    device: str,
    sizes: tuple[int, ...],
    batches: tuple[int, ...],
    seconds: float = 5.0,
    bands: int = 6,
    classes: int = 6,
) -> list[dict[str, Any]]:
    """Model-only forward throughput (softmax included) per chip size and batch size."""
    import torch

    from w2w.model.models import ModelSpec, build_model, channels_last, channels_last_input

    # In the memory layout prediction uses (channels last).
    model = build_model(ModelSpec(MODEL["arch"], MODEL["encoder"], bands, classes)).to(device)
    model = channels_last(model.eval())
    bf16 = device == "cuda" and torch.cuda.is_bf16_supported()
    rows = []
    for size in sizes:
        for batch in batches:
            x = channels_last_input(torch.randn(batch, bands, size, size, device=device))
            if device == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            try:
                with (
                    torch.inference_mode(),
                    torch.autocast(device, dtype=torch.bfloat16, enabled=bf16),
                    gpu_utilisation() as util,
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
                    "precision": "bf16" if bf16 else "fp32",
                    "chips_per_s": round(n / dt, 1),
                    "mpx_per_s": round(n * size * size / dt / 1e6, 2),
                    "peak_mem_mib": round(torch.cuda.max_memory_allocated() / 2**20)
                    if device == "cuda"
                    else None,
                    **util,
                }
            )
    return rows


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


# -- pipeline and training ------------------------------------------------------------------------


def pipeline_run(out: Path, size: int, chip: int, batch: int) -> dict[str, Any]:
    """``w2w predict`` on one GPU actor over a synthetic state: chips/s and GPU utilisation."""
    from benchmarks.throughput import chip_forwards, ingest_state, make_bundle, make_state
    from w2w.predict import PredictConfig, predict

    image, label = make_state(out / "state", size, 0)
    store = str(out / "scene.zarr")
    ingest_state(image, label, out / "scene.zarr")
    bundle = make_bundle(store, MODEL, chip, out / f"unet-{chip}.safetensors", 0)
    block = 2048
    cfg = PredictConfig(
        scene=store,
        bundle=bundle,
        output=str(out / f"mosaic-{chip}.zarr"),
        block=block,
        batch_size=batch,
        actors=1,
        use_gpu=True,
        cpus_per_actor=4,
        overwrite=True,
    )
    with gpu_utilisation() as util:
        report = predict(cfg, progress=False)
    stride = chip // 2
    forwards, unique = chip_forwards(size, size, block, chip, stride)
    return {
        "scene": size,
        "chip": chip,
        "batch": batch,
        "block": block,
        "seconds": round(report.seconds, 1),
        "chip_forwards": forwards,
        "distinct_chips": unique,
        "halo_factor": round(forwards / unique, 4),
        "chips_per_s": round(forwards / report.seconds, 1),
        "mpx_per_s": round(report.pixels_per_second / 1e6, 2),
        **util,
    }


def training_run(out: Path, store: str, batch: int, epochs: int = 2) -> dict[str, Any]:
    """A short bf16 ``w2w train`` of Unet/resnet34 on 256 px chips, one GPU worker."""
    from w2w.train import TrainConfig, train

    cfg = TrainConfig.from_dict(
        {
            "scene": store,
            "run_name": "gpu-bench",
            "storage_path": str((out / "runs").absolute()),
            "model": MODEL,
            "chips": {"size": 256, "stride": 128},
            "epochs": epochs,
            "batch_size": batch,
            "precision": "bf16",
            "workers": {"num_workers": 1, "use_gpu": True, "cpus_per_worker": 4},
            "patience": None,
            "overwrite": True,
        }
    )
    with gpu_utilisation() as util:
        report = train(cfg, progress=False)
    per_epoch = report.chips["train"]["samples"]
    secs = [h["seconds"] for h in report.history]
    return {
        "epochs": len(secs),
        "chips_per_epoch": per_epoch,
        "epoch_seconds": secs,
        "chips_per_s_last_epoch": round(per_epoch / secs[-1], 1),
        "batch": batch,
        **util,
    }


# -- the run --------------------------------------------------------------------------------------


def markdown(res: dict[str, Any], header: dict[str, Any]) -> str:
    """The results as a Markdown section for RESULTS.md."""
    lines = [
        f"### GPU, {header['date']} — {header['machine']}",
        "",
        f"- Command: `{header['command']}`; commit `{header['commit']}`",
        "",
        "Model only (Unet/resnet34, 6 bands, bf16):",
        "",
        "| chip | batch | chips/s | Mpx/s | peak GPU MiB | util % |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["sweep"]:
        if "error" in r:
            lines.append(f"| {r['chip']} | {r['batch']} | {r['error']} | | | |")
            continue
        lines.append(
            f"| {r['chip']} | {r['batch']} | {r['chips_per_s']} | {r['mpx_per_s']} | "
            f"{r['peak_mem_mib']} | {r.get('util_mean', '')} |"
        )
    lines += ["", "Pipeline (`w2w predict`, one GPU actor, stride = chip / 2):", ""]
    for p in res["pipeline"]:
        lines.append(
            f"- chip {p['chip']}, batch {p['batch']}: {p['chips_per_s']} chips/s "
            f"({p['ratio_to_model_only']:.2f} of model only), {p['mpx_per_s']} Mpx/s, "
            f"GPU util mean {p.get('util_mean', '?')} %"
        )
    t = res.get("training")
    if t:
        lines.append(
            f"- training, 256 px, batch {t['batch']}, bf16: {t['chips_per_s_last_epoch']} chips/s, "
            f"GPU memory {t.get('mem_used_mib', '?')} MiB"
        )
    lines += ["", "Projection for Chihuahua (A10G, 256 px chips):", "", res["formula"], ""]
    lines += [
        "| A10G GPUs | hours, low bound | hours, high bound |",
        "|---:|---:|---:|",
    ]
    for p in res["projection"]:
        lines.append(f"| {p['gpus']} | {p['hours_low']:.1f} | {p['hours_high']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the GPU benchmark; see the module docstring."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks gpu", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", default="bench-out/gpu")
    parser.add_argument(
        "--scene", type=int, default=8192, help="synthetic state edge for the pipeline run"
    )
    parser.add_argument("--batches", default="8,16,32,64,128")
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per sweep point")
    parser.add_argument("--no-train", action="store_true")
    parser.add_argument("--results", action="store_true", help="append to benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("no CUDA GPU on this machine: nothing measured", file=sys.stderr)
        return 3
    from w2w.core.runtime import ensure_ray

    ensure_ray()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name(0)
    batches = tuple(int(b) for b in args.batches.split(","))
    sweep = model_sweep("cuda", (256, 512), batches, args.seconds)
    print(json.dumps(sweep, indent=1), flush=True)
    pipeline = []
    for chip in (256, 512):
        ok = [r for r in sweep if r["chip"] == chip and "error" not in r]
        best = max(ok, key=lambda r: r["chips_per_s"])
        p = pipeline_run(out / f"pipe-{chip}", args.scene, chip, best["batch"])
        p["ratio_to_model_only"] = round(p["chips_per_s"] / best["chips_per_s"], 3)
        pipeline.append(p)
        print(json.dumps(p), flush=True)
    training = None
    if not args.no_train:
        training = training_run(out, str(out / "pipe-256" / "scene.zarr"), 32)
        print(json.dumps(training), flush=True)
    here = spec_of(name)
    p256 = pipeline[0]
    pixels = CHIHUAHUA_KM2 * 1e6 / (10.0 * 10.0)
    projection: list[Projection] = []
    formula = "no datasheet entry for this GPU: no projection"
    if here is not None:
        projection = project(pixels, 256, 128, p256["halo_factor"], p256["chips_per_s"], here[1])
        formula = (
            f"hours = pixels / stride² × halo / (chips/s × r × N × e) / 3600, with pixels = "
            f"{pixels:.3g} (247,000 km² at 10 m), stride 128, halo {p256['halo_factor']} "
            f"(2048 px blocks), chips/s {p256['chips_per_s']} measured on {name}, r = A10G / "
            f"{here[0]} ratio of bf16 compute ({GPU_SPECS['A10G'][0]}/{here[1][0]} TFLOP/s) or "
            f"of memory bandwidth ({GPU_SPECS['A10G'][1]}/{here[1][1]} TB/s), e = 0.95 for "
            "N > 1 (blocks are independent; the Zarr reads and writes scale with CPU nodes)."
        )
    res = {
        "sweep": sweep,
        "pipeline": pipeline,
        "training": training,
        "projection": [p.__dict__ for p in projection],
        "formula": formula,
    }
    header = run_header("python -m benchmarks gpu", argv)
    publish(out / "gpu.json", header, res, markdown(res, header), record=args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
