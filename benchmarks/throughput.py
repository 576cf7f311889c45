"""Throughput of every stage, each against its limit or a baseline measured in the same run.

On a synthetic state of ``--size`` px (default 6144 x 6144, 6 bands uint16, 10 m pixels; large
enough that predict's fixed start-up -- Ray Data, the actor's torch import and model load,
about 10 s on 2 cores, reported as the time to the first finished block -- does not hide
its throughput):

- **ingest** (GeoTIFF -> scene store, Ray tasks) vs reading the same GeoTIFF windows with
  rasterio in one process and writing nothing: the I/O limit;
- **chips to the trainer** (Ray Data -> a Ray Train worker's ``iter_torch_batches``) vs
  reading the same chips from Zarr in one process;
- **predict** for a realistic model (Unet/resnet34) and an I/O-bound one (a 3-stage
  ResNet-10 with a light decoder), each vs **model only** (the same model, batch size,
  precision and threads on already-loaded tensors: the compute limit; the ratio is the
  pipeline's efficiency) and vs a **naive baseline** as people script it (the raster cut into
  ``.npy`` chip files, a loop predicting them, reassembly into a GeoTIFF), given w2w's own
  settings: the same model, batch, channels-last layout, threads and stride (with overlap,
  it blends softmax files with the same Hann window). Every predict row states its stride;
  ``--overlap`` adds the default stride (chip / 2) with its own naive row;
- **predict with a free model** (a per-pixel linear model, ~36 multiply-adds a pixel): its
  steady-state Mpx/s vs reading the same blocks (with their chip halo) from the scene store
  in one process -- prediction's cost outside the model;
- **sieve** (1 ha minimum mapping unit, block by block) vs ``rasterio.features.sieve`` on the
  whole raster in memory: a first call (its task workers import the sieve's modules, as in
  every ``w2w sieve``) and a second one;
- **export** (mosaic -> COG) vs GDAL's COG driver converting the same classes from a plain
  GeoTIFF;
- a **scaling run**: ingest, predict, sieve and export at 1x, 2x and 4x the area of a quarter
  of the state, with time per pixel and peak memory per stage.

Memory is the peak proportional set size of the whole process tree (driver, Ray's raylet,
object store and workers), sampled every 0.5 s. Nothing here asserts a speed: the runner
prints and records what it measured.

    python -m benchmarks run [--size 6144] [--out bench-out/throughput] [--results]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import Timed, publish, run_header, timed, torch_threads

#: The two model settings of the predict benchmark.
MODELS: dict[str, dict[str, Any]] = {
    "realistic": {"arch": "Unet", "encoder": "resnet34"},
    "io-bound": {
        "arch": "Unet",
        "encoder": "tu-resnet10t",
        "options": {"encoder_depth": 3, "decoder_channels": [32, 16, 8]},
    },
}


#: A per-pixel linear model: prediction's cost outside the model.
FREE_MODEL: dict[str, Any] = {"arch": "PixelMLP", "encoder": "none", "options": {"layers": 0}}


@dataclass(frozen=True)
class Settings:
    """What one benchmark run uses; all of it is printed with the results."""

    size: int = 6144
    chip: int = 256
    block: int = 1024
    batch: int = 8
    threads: int = 0  # torch threads for prediction; 0 = every core
    pixel_m: float = 10.0
    scaling: bool = True
    overlap: bool = False  # also predict the realistic model with stride = chip / 2
    bf16: bool = True  # also predict the realistic model in bf16
    seed: int = 0

    @property
    def torch_threads(self) -> int:
        """Threads the predict actor and the model-only and naive references all use."""
        return self.threads or (os.cpu_count() or 1)


def km2_per_hour(mpx_per_s: float, pixel_m: float) -> float:
    """Area rate for a pixel rate: Mpx/s x pixel area x 3600 s."""
    return mpx_per_s * 1e6 * pixel_m * pixel_m / 1e6 * 3600


# -- the scene ----------------------------------------------------------------------------------


def make_state(folder: Path, size: int, seed: int) -> tuple[str, str]:
    """A synthetic state as GeoTIFFs (image, labels)."""
    from w2w.ingest.synth import SynthConfig, synthesize

    out = synthesize(
        SynthConfig(output=str(folder), height=size, width=size, seed=seed, overwrite=True),
        progress=False,
    )
    return out.images[0], str(out.label)


def ingest_state(image: str, label: str, store: Path) -> Any:
    """w2w ingest of the state (Ray tasks)."""
    from w2w.ingest import IngestConfig, ingest
    from w2w.ingest.synth import class_names

    cfg = IngestConfig(
        images=[image],
        label=label,
        output=str(store),
        classes=class_names(),
        chunk=256,
        block=512,
        overwrite=True,
    )
    return ingest(cfg, progress=False)


def raw_read(image: str, block: int) -> int:
    """The I/O limit of ingest: read every block window of the GeoTIFF, write nothing."""
    import rasterio
    from rasterio.windows import Window as RioWindow

    n = 0
    with rasterio.open(image) as src:
        for row in range(0, src.height, block):
            for col in range(0, src.width, block):
                w = RioWindow(col, row, min(block, src.width - col), min(block, src.height - row))
                n += src.read(window=w).size
    return n


def raw_block_reads(store: str, s: Settings) -> int:
    """The I/O limit of prediction: each block's read window (block + chip halo) read from the
    scene store with its valid mask, in one process, nothing else. Returns block pixels."""
    from w2w.core.store import SceneStore
    from w2w.predict.plan import BlockPlan

    scene = SceneStore.open(store)
    plan = BlockPlan(scene.grid.height, scene.grid.width, s.block, s.chip, s.chip)
    n = 0
    for block in scene.grid.blocks(s.block):
        win = plan.window(block)
        image = scene.read_image(win)
        scene.valid_mask(image, win)
        n += block.size
    return n


def block_costs(store: str, bundle: str, out: Path, s: Settings) -> dict[str, float]:
    """Where a block's time goes outside the model: predict's own read, engine and write steps
    (the functions its Ray tasks and actor run) one after another in this process, no Ray,
    over every block: CPU milliseconds per block of each (all threads: zarr's codec threads,
    the engine's torch threads), and the rate all cores could reach doing the three with no
    overhead and no waiting -- the bound of the free-model row on this machine."""
    import torch

    from w2w.core.store import MosaicStore, SceneStore
    from w2w.model.bundle import load_bundle
    from w2w.predict.actor import Predictor
    from w2w.predict.plan import BlockPlan
    from w2w.predict.run import read_blocks, write_blocks

    scene = SceneStore.open(store)
    plan = BlockPlan(scene.grid.height, scene.grid.width, s.block, s.chip, s.chip)
    threads = torch.get_num_threads()
    actor = Predictor(
        bundle,
        plan.__dict__,
        {"batch_size": s.batch, "tta": False, "use_gpu": False, "threads": s.torch_threads},
    )
    mosaic = MosaicStore.create(
        str(out / "mosaic-costs.zarr"),
        scene.grid,
        block=s.block,
        classes=list(load_bundle(bundle, weights=False).classes),
        provenance={},
        with_confidence=True,
        overwrite=True,
    )
    spent = {"read": 0.0, "engine": 0.0, "write": 0.0}
    blocks = scene.grid.blocks(s.block)
    for block in blocks:
        rows = {k: np.asarray([v]) for k, v in block.to_dict().items()}
        t0 = time.process_time()
        batch = read_blocks(rows, store, scene.identity, plan.__dict__)
        t1 = time.process_time()
        result = actor(batch)
        t2 = time.process_time()
        write_blocks(result, mosaic.url, mosaic.identity, True)
        spent["read"] += t1 - t0
        spent["engine"] += t2 - t1
        spent["write"] += time.process_time() - t2
    torch.set_num_threads(threads)
    shutil.rmtree(out / "mosaic-costs.zarr", ignore_errors=True)
    pixels = sum(b.size for b in blocks)
    return {
        **{f"{k}_cpu_ms_per_block": round(1000 * v / len(blocks), 1) for k, v in spent.items()},
        "mpx_per_s_on_all_cores": round(
            (os.cpu_count() or 1) * pixels / sum(spent.values()) / 1e6, 2
        ),
    }


# -- chips to the trainer -----------------------------------------------------------------------


def chip_plan(store: str, chip: int, out: Path) -> dict[str, Any]:
    """The training chips of the scene exactly as ``w2w train`` selects them."""
    from w2w.train import TrainConfig, prepare

    cfg = TrainConfig.from_dict(
        {
            "scene": store,
            "storage_path": str(out / "runs"),
            "model": MODELS["io-bound"],
            "chips": {"size": chip, "stride": chip // 2, "balance": False},
            "split": {"block_chips": 2, "seed": 0},  # regions of 2 chips
        }
    )
    return prepare(cfg, progress=False)


def raw_chip_reads(plan: Any, batch: int, epochs: int, *, cached: bool) -> int:
    """Reference: the same chips read (and normalised) from Zarr in this one process and
    handed on as torch tensors, as a training loop takes them: every epoch from the store
    (``cached=False``), or from the store once and then from memory (``cached=True``, as
    w2w holds them in Ray's object store)."""
    import torch

    from w2w.core.grid import Window
    from w2w.core.store import SceneStore

    reader = plan.reader
    store = SceneStore.open(reader.store_url)
    windows = [
        Window(r["row"], r["col"], reader.chip_size, reader.chip_size) for r in plan.train_rows
    ]
    held: list[tuple[Any, Any]] = []
    n = 0
    for epoch in range(epochs):
        if cached and epoch:
            batches = held
        else:
            batches = [
                reader.read(windows[i : i + batch], store) for i in range(0, len(windows), batch)
            ]
            held = batches if cached else []
        for images, labels in batches:
            x = torch.from_numpy(np.asarray(images)).float()
            torch.from_numpy(np.asarray(labels)).long()
            n += int(x.shape[0])
    return n


def _iterate_chips(config: dict[str, Any]) -> None:
    """Ray Train worker loop: consume the chip shard as a training loop would, and time it.
    The per-epoch figures go to a JSON file (Train V2 keeps metrics only with checkpoints)."""
    import ray.train
    import torch

    shard = ray.train.get_dataset_shard("train")
    epochs = []
    for _ in range(config["epochs"]):
        t0 = time.perf_counter()
        n = 0
        for batch in shard.iter_torch_batches(
            batch_size=config["batch"], dtypes={"image": torch.float32, "label": torch.long}
        ):
            n += int(batch["image"].shape[0])
        epochs.append({"chips": n, "seconds": time.perf_counter() - t0})
    Path(config["report"]).write_text(json.dumps(epochs))


def chips_to_trainer(
    store: str, plan: Any, batch: int, epochs: int, out: Path, *, cache: bool
) -> list[dict[str, Any]]:
    """Chips delivered to one Ray Train worker per epoch, [{chips, seconds}, ...], by the
    dataset and data config ``w2w train`` itself builds (its defaults: ``reproducible`` on),
    with the chips held in Ray's object store after the first epoch (``cache``: the driver's
    read into it is counted in the first epoch) or read from the store every epoch."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from w2w.train import TrainConfig
    from w2w.train.run import data_config, training_chips

    cfg = TrainConfig.from_dict({"scene": store, "batch_size": batch})
    report = out / "chips-to-trainer.json"
    report.unlink(missing_ok=True)
    # Caching reads every chip on the driver before the trainer starts: that read is part
    # of the first epoch's work, as it is on the one-process side.
    t0 = time.perf_counter()
    chips = training_chips(cfg, plan, cache=cache)
    before = time.perf_counter() - t0
    trainer = TorchTrainer(
        _iterate_chips,
        train_loop_config={"epochs": epochs, "batch": batch, "report": str(report.absolute())},
        scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 0.5}),
        run_config=RunConfig(name="chips", storage_path=str((out / "runs").absolute())),
        datasets={"train": chips},
        dataset_config=data_config(cfg),
    )
    trainer.fit()
    epochs = list(json.loads(report.read_text()))
    epochs[0]["seconds"] += before
    epochs[0]["cache_seconds"] = round(before, 2)
    return epochs


# -- predict --------------------------------------------------------------------------------------


def make_bundle(store: str, model: dict[str, Any], chip: int, path: Path, seed: int) -> str:
    """A randomly initialised model as a bundle for the scene (throughput needs no training)."""
    import torch

    from w2w.core.store import SceneStore
    from w2w.model.bundle import Bundle, save_bundle
    from w2w.model.models import ModelSpec, build_model
    from w2w.model.normalization import Normalizer

    info = SceneStore.open(store).info
    classes = tuple(c for c in info.classes if c.id != info.unlabelled)
    spec = ModelSpec(
        model["arch"], model["encoder"], info.n_bands, len(classes), dict(model.get("options", {}))
    )
    torch.manual_seed(seed)
    net = build_model(spec)
    bundle = Bundle(
        spec=spec,
        bands=tuple(info.band_names),
        normalizer=Normalizer.from_stats(info.stats, list(info.band_names), "percentile"),
        chip_size=chip,
        classes=classes,
        nodata=info.nodata,
    )
    save_bundle(str(path), bundle, net.state_dict())
    return str(path)


def model_only(
    bundle_url: str, store: str, batch: int, threads: int, min_seconds: float = 8.0
) -> float:
    """The compute limit: chips/s of the bundle's model (softmax included) on tensors already
    in memory -- real, normalised chips of the scene -- with the pipeline's batch and threads."""
    import torch

    from w2w.core.grid import Window
    from w2w.core.store import SceneStore
    from w2w.model.bundle import load_bundle
    from w2w.model.models import channels_last, channels_last_input

    bundle = load_bundle(bundle_url)
    scene = SceneStore.open(store)
    c = bundle.chip_size
    chips = []
    for i in range(batch):
        w = Window((i // 4) * c, (i % 4) * c, c, c)
        raw = scene.read_image(w)
        chips.append(bundle.normalizer(raw, scene.valid_mask(raw, w)))
    # The model in the memory layout prediction gives it (channels last): the limit is what
    # this model can do here, not what a default-layout model does.
    x = channels_last_input(torch.from_numpy(np.stack(chips)))
    with torch_threads(threads), torch.inference_mode():
        model = channels_last(bundle.model("cpu"))
        torch.softmax(model(x).float(), dim=1)  # warm-up
        n, t0 = 0, time.perf_counter()
        while n < 3 * batch or time.perf_counter() - t0 < min_seconds:
            torch.softmax(model(x).float(), dim=1)
            n += batch
        return n / (time.perf_counter() - t0)


def w2w_predict(
    store: str,
    bundle: str,
    out: Path,
    s: Settings,
    stride: int | None,
    precision: str = "fp32",
) -> Any:
    """w2w predict: Ray Data read tasks -> one CPU actor (all cores' threads) -> write tasks."""
    from w2w.predict import PredictConfig, predict

    cfg = PredictConfig(
        precision=precision,
        scene=store,
        bundle=bundle,
        output=str(out),
        block=s.block,
        stride=stride,
        batch_size=s.batch,
        actors=1,
        cpus_per_actor=1,
        threads=s.torch_threads,
        overwrite=True,
    )
    return predict(cfg, progress=False)


def steady_state(report: Any) -> tuple[float, float] | None:
    """Prediction after its start-up: (share of the work done between the first and the last
    block written, seconds between them), the blocks being all the same size; ``None`` when
    fewer than two blocks were written."""
    first, last = report.first_block_seconds, report.last_block_seconds
    blocks = report.blocks_written
    if first is None or last is None or blocks < 2 or last <= first:
        return None
    return (blocks - 1) / blocks, last - first


def _agreement(a: str, b: str) -> float:
    """Share of the classified pixels of mosaic ``a`` that mosaic ``b`` gives the same class."""
    from w2w.core.classes import CLASS_NODATA
    from w2w.core.store import MosaicStore

    stores = [MosaicStore.open(m) for m in (a, b)]
    x, y = (m.read_class(m.grid.full_window) for m in stores)
    mapped = x != CLASS_NODATA
    return float((x[mapped] == y[mapped]).mean())


def chip_forwards(height: int, width: int, block: int, chip: int, stride: int) -> tuple[int, int]:
    """(chips the pipeline forwards, distinct chips of the global grid) for a scene: blocks
    recompute the chips that straddle their borders."""
    from w2w.core.grid import Window, chip_origins
    from w2w.predict.plan import BlockPlan

    plan = BlockPlan(height, width, block, chip, stride)
    total = sum(
        len(plan.chips(Window(r, c, min(block, height - r), min(block, width - c))))
        for r in range(0, height, block)
        for c in range(0, width, block)
    )
    unique = len(chip_origins(height, chip, stride)) * len(chip_origins(width, chip, stride))
    return total, unique


def naive_baseline(
    image: str,
    bundle_url: str,
    work: Path,
    threads: int,
    batch: int,
    stride: int,
    *,
    skip_empty: bool = True,
) -> dict[str, float]:
    """Prediction as commonly scripted, given w2w's own settings (same model, batch, memory
    layout, threads and stride): cut the raster into .npy chips every ``stride`` px, predict
    them ``batch`` files at a time in channels-last, and reassemble a GeoTIFF -- each chip's
    argmax when chips do not overlap, else the Hann-weighted sum of their softmax (float16
    files), as w2w blends. With ``skip_empty`` a chip with no valid pixel (every band nodata)
    is neither saved nor predicted -- the chips w2w forwards; without, every chip of the grid
    is, as such loops are usually written. Seconds per step, and ``chips`` predicted."""
    import rasterio
    import torch
    from rasterio.windows import Window as RioWindow

    from w2w.core.windows import chip_origins
    from w2w.model.bundle import load_bundle
    from w2w.model.models import channels_last, channels_last_input
    from w2w.predict.plan import blend_weights

    bundle = load_bundle(bundle_url)
    c = bundle.chip_size
    overlap = stride < c
    chips_dir = work / "chips"
    preds_dir = work / "preds"
    for d in (chips_dir, preds_dir):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    with rasterio.open(image) as src:
        profile = src.profile
        height, width = src.height, src.width
        nodata = src.nodata
        for row in chip_origins(height, c, stride):
            for col in chip_origins(width, c, stride):
                arr = src.read(
                    window=RioWindow(int(col), int(row), c, c),
                    boundless=True,
                    fill_value=nodata or 0,
                )
                if skip_empty and nodata is not None and not np.any(np.all(arr != nodata, axis=0)):
                    continue
                np.save(chips_dir / f"chip_{row}_{col}.npy", arr)
    times["split"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    files = sorted(chips_dir.glob("*.npy"))
    with torch_threads(threads), torch.inference_mode():
        model = channels_last(bundle.model("cpu"))
        for i in range(0, len(files), batch):
            group = files[i : i + batch]
            xs = []
            for f in group:
                raw = np.load(f)
                valid = np.all(raw != (nodata if nodata is not None else np.nan), axis=0)
                xs.append(bundle.normalizer(raw, valid))
            logits = model(channels_last_input(torch.from_numpy(np.stack(xs))))
            if overlap:
                out_b = torch.softmax(logits.float(), dim=1).to(torch.float16).numpy()
            else:
                out_b = logits.argmax(dim=1).numpy().astype(np.uint8)
            for f, pred in zip(group, out_b, strict=True):
                np.save(preds_dir / f.name, pred)
    times["predict"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if overlap:
        k = len(bundle.classes)
        weights = blend_weights(c)
        ph, pw = height + c, width + c
        acc = np.zeros((k, ph, pw), dtype=np.float32)
        for f in sorted(preds_dir.glob("*.npy")):
            _, row, col = f.stem.split("_")
            r, cc = int(row), int(col)
            acc[:, r : r + c, cc : cc + c] += np.load(f).astype(np.float32) * weights
        out = acc[:, :height, :width].argmax(axis=0).astype(np.uint8)
        out[~acc[:, :height, :width].any(axis=0)] = 255  # no chip predicted these pixels
        del acc
    else:
        out = np.full((height, width), 255, dtype=np.uint8)  # skipped chips stay nodata
        for f in preds_dir.glob("*.npy"):
            _, row, col = f.stem.split("_")
            r, cc = int(row), int(col)
            pred = np.load(f)
            out[r : r + c, cc : cc + c] = pred[: height - r, : width - cc]
    profile.update(count=1, dtype="uint8", nodata=255, compress="deflate", tiled=True)
    with rasterio.open(work / "naive.tif", "w", **profile) as dst:
        dst.write(out, 1)
    times["reassemble"] = time.perf_counter() - t0
    times["total"] = times["split"] + times["predict"] + times["reassemble"]
    times["chips"] = float(len(files))
    return times


# -- sieve and export -----------------------------------------------------------------------------


def w2w_sieve(mosaic: str, out: Path, min_pixels: int) -> Any:
    """w2w sieve of the mosaic (block by block, exact)."""
    from w2w.sieve import SieveConfig, sieve

    return sieve(
        SieveConfig(input=mosaic, output=str(out), min_pixels=min_pixels, overwrite=True),
        progress=False,
    )


def whole_raster_sieve(mosaic: str, min_pixels: int) -> int:
    """Reference: rasterio.features.sieve on the whole class raster in memory."""
    from rasterio.features import sieve

    from w2w.core.classes import CLASS_NODATA
    from w2w.core.store import MosaicStore

    m = MosaicStore.open(mosaic)
    classes = m.read("class", m.grid.full_window, CLASS_NODATA)
    out = sieve(classes, size=min_pixels, mask=classes != CLASS_NODATA, connectivity=4)
    return int(out.size)


def w2w_export(mosaic: str, out: Path, confidence: str = "none") -> Any:
    """w2w export: COG with mode overviews, colour table, STAC Item, quicklook."""
    from w2w.export import ExportConfig, export

    cfg = ExportConfig(input=mosaic, output=str(out), confidence=confidence, overwrite=True)  # type: ignore[arg-type]
    return export(cfg, progress=False)


def plain_geotiff(mosaic: str, path: Path) -> None:
    """The classes as a plain GeoTIFF (the input of the GDAL reference; not timed)."""
    import rasterio

    from w2w.core.classes import CLASS_NODATA
    from w2w.core.store import MosaicStore

    m = MosaicStore.open(mosaic)
    classes = m.read("class", m.grid.full_window, CLASS_NODATA)
    profile = {
        "driver": "GTiff",
        "height": m.grid.height,
        "width": m.grid.width,
        "count": 1,
        "dtype": "uint8",
        "crs": m.grid.crs,
        "transform": m.grid.transform,
        "nodata": CLASS_NODATA,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(classes, 1)


def gdal_cog(src: Path, dst: Path) -> None:
    """Reference: GDAL's COG driver, with w2w's settings (deflate, 512 px tiles, mode overviews)."""
    import rasterio
    from rasterio.shutil import copy as rio_copy

    with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS"):
        rio_copy(
            str(src),
            str(dst),
            driver="COG",
            COMPRESS="DEFLATE",
            BLOCKSIZE=512,
            OVERVIEW_RESAMPLING="MODE",
            NUM_THREADS="ALL_CPUS",
        )


# -- the run ------------------------------------------------------------------------------------


def rate(pixels: int, t: Timed) -> float:
    """Mpx/s."""
    return pixels / t.seconds / 1e6


def row(
    stage: str, pixels: int, t: Timed, s: Settings, ref: str = "", ratio: float | None = None
) -> dict[str, Any]:
    """One line of the results table."""
    mpx = rate(pixels, t)
    return {
        "stage": stage,
        "mpx_per_s": round(mpx, 4),
        "km2_per_h": round(km2_per_hour(mpx, s.pixel_m), 1),
        "seconds": round(t.seconds, 2),
        "peak_mib": round(t.peak_mib),
        "grown_mib": round(t.grown_mib),
        "reference": ref,
        "ratio": None if ratio is None else round(ratio, 3),
    }


def run(s: Settings, out: Path, log: Any = print) -> dict[str, Any]:
    """Every measurement; returns the results (rows, scaling, details)."""
    from w2w.core.runtime import ensure_ray

    out.mkdir(parents=True, exist_ok=True)
    ensure_ray()
    rows: list[dict[str, Any]] = []
    details: dict[str, Any] = {}
    threads = s.torch_threads

    log(f"state: {s.size} x {s.size} px")
    t = timed(lambda: make_state(out / "state", s.size, s.seed))
    image, label = t.result
    details["synth_seconds"] = round(t.seconds, 1)
    px = s.size * s.size
    store = str(out / "scene.zarr")

    # ingest vs the I/O limit
    ref = timed(lambda: raw_read(image, 512))
    # The first ingest also starts Ray's worker processes; the figure is the second run's
    # (a statewide ingest runs for hours on warm workers).
    cold = timed(lambda: ingest_state(image, label, Path(store)))
    ing = timed(lambda: ingest_state(image, label, Path(store)))
    details["ingest_cold_seconds"] = round(cold.seconds, 2)
    rows.append(
        row("ingest", px, ing, s, "rasterio window reads, no writes", rate(px, ing) / rate(px, ref))
    )
    rows.append(row("  (reference) raw GeoTIFF reads", px, ref, s))
    log(f"ingest {rate(px, ing):.2f} Mpx/s vs raw reads {rate(px, ref):.2f} Mpx/s")

    # chips to the trainer vs raw chip reads: like for like, cached on both sides and
    # streamed from the store on both sides
    plan = chip_plan(store, s.chip, out)
    epochs = 3
    details["chips"] = {"chips_per_epoch": len(plan.train_rows), "chip_size": s.chip}
    for mode, cached in (("cached", True), ("streamed", False)):
        raw = timed(lambda c=cached: raw_chip_reads(plan, 16, epochs, cached=c))
        raw_cps = raw.result / raw.seconds
        delivered = chips_to_trainer(store, plan, 16, epochs, out, cache=cached)
        # The same epochs on both sides: every chip of every epoch over their total time.
        ray_cps = sum(e["chips"] for e in delivered) / sum(e["seconds"] for e in delivered)
        details["chips"][mode] = {
            "epochs": delivered,
            "raw_chips_per_s": round(raw_cps, 1),
            "ray_data_chips_per_s": round(ray_cps, 1),
            "ratio": round(ray_cps / raw_cps, 3),
        }
        log(f"chips to trainer, {mode}: {ray_cps:.1f} chips/s vs one process {raw_cps:.1f}")

    # predict: both models vs model-only and the naive baseline
    predict_details: dict[str, Any] = {}
    mosaic_for_export = None
    for name, model in MODELS.items():
        bundle = make_bundle(store, model, s.chip, out / f"{name}.safetensors", s.seed)
        limit_cps = model_only(bundle, store, s.batch, threads)
        mosaic = out / f"mosaic-{name}.zarr"
        pr = timed(lambda b=bundle, m=mosaic: w2w_predict(store, b, m, s, s.chip))
        forwards, unique = chip_forwards(s.size, s.size, s.block, s.chip, s.chip)
        # The chips w2w ran through the model (those with a valid pixel): the compute limit is
        # the model alone forwarding exactly those, and the same-work naive loop runs them.
        ran = pr.result.chips_forwarded
        eff = (ran / limit_cps) / pr.seconds
        # Where the rest goes: the start-up until the first block is done, and the steady
        # state between the first and the last block (the blocks here are all the same size).
        first, last = pr.result.first_block_seconds, pr.result.last_block_seconds
        after = steady_state(pr.result)
        steady = None if after is None else (ran * after[0] / limit_cps) / after[1]
        naive_dir, map_path = out / f"naive-{name}", out / f"map-{name}.tif"
        naive = timed(
            lambda b=bundle, d=naive_dir: naive_baseline(image, b, d, threads, s.batch, s.chip)
        )
        every = timed(
            lambda b=bundle, d=naive_dir: naive_baseline(
                image, b, d, threads, s.batch, s.chip, skip_empty=False
            )
        )
        ex = timed(lambda m=mosaic, p=map_path: w2w_export(str(m), p))
        vs_naive = naive.seconds / pr.seconds
        vs_naive_export = naive.seconds / (pr.seconds + ex.seconds)
        same, all_chips = int(naive.result["chips"]), int(every.result["chips"])
        stage = f"predict {name}, stride {s.chip}"
        rows.append(
            row(stage, px, pr, s, f"model only, the same {ran:,} chips (compute limit)", eff)
        )
        rows.append(
            row(stage, px, pr, s, f"naive .npy loop, same settings, {same:,} chips (time ratio)",
                vs_naive)
        )  # fmt: skip
        rows.append(
            row(stage, px, pr, s, f"naive loop as usually written, every chip: {all_chips:,} "
                "(time ratio)", every.seconds / pr.seconds)
        )  # fmt: skip
        rows.append(
            row(
                f"predict+export {name}, stride {s.chip}",
                px,
                Timed(None, pr.seconds + ex.seconds, max(pr.peak_mib, ex.peak_mib), pr.start_mib),
                s,
                f"naive .npy loop -> GeoTIFF, same settings, {same:,} chips (time ratio)",
                vs_naive_export,
            )
        )
        rows.append(row(f"  (reference) naive {name}, {same:,} chips", px, naive, s))
        rows.append(row(f"  (reference) naive {name}, every chip", px, every, s))
        predict_details[name] = {
            "model": model,
            "model_only_chips_per_s": round(limit_cps, 2),
            "pipeline_chips_per_s": round(ran / pr.seconds, 2),
            "chips_forwarded": ran,
            "chips_skipped": pr.result.chips_skipped,
            "naive_chips": same,
            "naive_every_chip": all_chips,
            "grid_chip_forwards": forwards,
            "efficiency": round(eff, 3),
            "efficiency_if_every_chip_counted": round((unique / limit_cps) / pr.seconds, 3),
            "first_block_seconds": None if first is None else round(first, 1),
            "last_block_seconds": None if last is None else round(last, 1),
            "model_only_seconds": round(ran / limit_cps, 1),
            "steady_state_efficiency": None if steady is None else round(steady, 3),
            "naive_seconds": {k: round(v, 2) for k, v in naive.result.items()},
            "naive_every_chip_seconds": {k: round(v, 2) for k, v in every.result.items()},
            "w2w_predict_seconds": round(pr.seconds, 2),
            "w2w_export_seconds": round(ex.seconds, 2),
            "speedup_vs_naive": round(vs_naive, 2),
            "speedup_vs_naive_with_export": round(vs_naive_export, 2),
        }
        log(
            f"predict {name}: {rate(px, pr):.3f} Mpx/s; model only {limit_cps:.2f} chips/s "
            f"-> efficiency {eff:.2f} (first block after {first or 0:.1f} s; "
            f"steady state {steady or 0:.2f}); naive {naive.seconds:.1f} s vs w2w "
            f"{pr.seconds:.1f} s"
        )
        if name == "realistic":
            mosaic_for_export = str(mosaic)
        if name == "realistic" and s.bf16:
            # bf16 on the CPU: a user's choice; its speed and how often its class agrees.
            bf = timed(
                lambda b=bundle: w2w_predict(
                    store, b, out / "bf16.zarr", s, s.chip, precision="bf16"
                )
            )
            agree = _agreement(str(mosaic), str(out / "bf16.zarr"))
            rows.append(
                row(f"predict {name}, stride {s.chip}, bf16", px, bf, s, "fp32 (time ratio)",
                    pr.seconds / bf.seconds)
            )  # fmt: skip
            predict_details[f"{name}-bf16"] = {
                "seconds": round(bf.seconds, 2),
                "speedup_vs_fp32": round(pr.seconds / bf.seconds, 3),
                "class_agreement_with_fp32": round(agree, 5),
            }
            log(f"bf16: {bf.seconds:.1f} s vs fp32 {pr.seconds:.1f} s; agreement {agree:.4f}")
        if name == "realistic" and s.overlap:
            # The default, overlapping chip grid (stride = chip / 2) with blending.
            stride = s.chip // 2
            ov = timed(
                lambda b=bundle, st=stride: w2w_predict(store, b, out / "overlap.zarr", s, st)
            )
            fw, un = chip_forwards(s.size, s.size, s.block, s.chip, stride)
            ran_ov = ov.result.chips_forwarded  # the grid's forwards less the empty chips
            eff_ov = (ran_ov / ov.seconds) / limit_cps
            naive_ov = timed(
                lambda b=bundle, st=stride: naive_baseline(
                    image, b, out / "naive-overlap", threads, s.batch, st
                )
            )
            rows.append(
                row(
                    f"predict {name}, stride {stride}",
                    px,
                    ov,
                    s,
                    "naive .npy loop, same settings, blended, empty chips skipped (time ratio)",
                    naive_ov.seconds / ov.seconds,
                )
            )
            rows.append(
                row(
                    f"predict {name}, stride {stride}",
                    px,
                    ov,
                    s,
                    f"model only, the same {ran_ov:,} chip forwards",
                    eff_ov,
                )
            )
            predict_details[f"{name}-stride-{stride}"] = {
                "chip_forwards": ran_ov,
                "grid_chip_forwards": fw,
                "distinct_chips": un,
                "halo_recompute_factor": round(fw / un, 3),
                "seconds": round(ov.seconds, 2),
                "efficiency_per_forward": round(eff_ov, 3),
                "efficiency_vs_distinct_chips": round((un / ov.seconds) / limit_cps, 3),
                "naive_seconds": {k: round(v, 2) for k, v in naive_ov.result.items()},
                "speedup_vs_naive": round(naive_ov.seconds / ov.seconds, 2),
            }
            log(f"predict {name} stride {stride}: {ov.seconds:.1f} s, {fw} forwards of {un} chips")
    # The cost outside the model: a per-pixel linear model (its forward is ~36 multiply-adds
    # a pixel) against the same blocks' reads from the scene store.
    free = make_bundle(store, FREE_MODEL, s.chip, out / "free.safetensors", s.seed)
    fr = timed(lambda: w2w_predict(store, free, out / "mosaic-free.zarr", s, s.chip))
    reads = timed(lambda: raw_block_reads(store, s))
    first = fr.result.first_block_seconds
    after = steady_state(fr.result)
    steady_mpx = None if after is None else px * after[0] / after[1] / 1e6
    reads_mpx = reads.result / reads.seconds / 1e6
    rows.append(
        row(f"predict, free model, stride {s.chip}", px, fr, s,
            "raw block reads of the scene store (steady state)",
            None if steady_mpx is None else steady_mpx / reads_mpx)
    )  # fmt: skip
    rows.append(row("  (reference) raw block reads of the scene store", px, reads, s))
    predict_details["free"] = {
        "model": FREE_MODEL,
        "seconds": round(fr.seconds, 2),
        "first_block_seconds": None if first is None else round(first, 1),
        "steady_state_mpx_per_s": None if steady_mpx is None else round(steady_mpx, 3),
        "raw_block_reads_mpx_per_s": round(reads_mpx, 3),
        "cpu_us_per_px_outside_model": None
        if steady_mpx is None
        else round(s.torch_threads / steady_mpx, 3),
    }
    costs = block_costs(store, free, out, s)
    costs["bound_vs_raw_block_reads"] = round(costs["mpx_per_s_on_all_cores"] / reads_mpx, 2)
    predict_details["free"]["block_costs_one_process"] = costs
    log(f"free model: steady {steady_mpx or 0:.2f} Mpx/s vs raw block reads {reads_mpx:.2f}")
    log(f"free model, one process: {costs}")
    details["predict"] = predict_details

    # sieve vs the whole raster in memory
    assert mosaic_for_export is not None
    min_px = max(1, round(10_000 / (s.pixel_m * s.pixel_m)))  # 1 ha
    sv = timed(lambda: w2w_sieve(mosaic_for_export, out / "mosaic-mmu.zarr", min_px))
    sref = timed(lambda: whole_raster_sieve(mosaic_for_export, min_px))
    rows.append(
        row(
            "sieve (1 ha)",
            px,
            sv,
            s,
            "rasterio sieve, whole raster in RAM",
            rate(px, sv) / rate(px, sref),
        )
    )
    rows.append(row("  (reference) whole-raster sieve", px, sref, s))
    # The same again: Ray's task workers now have the sieve's modules loaded (importing them,
    # about 1.5 s a worker here, is part of the first call, as of every `w2w sieve`).
    sv2 = timed(lambda: w2w_sieve(mosaic_for_export, out / "mosaic-mmu.zarr", min_px))
    rows.append(
        row(
            "sieve (1 ha), second call",
            px,
            sv2,
            s,
            "rasterio sieve, whole raster in RAM",
            rate(px, sv2) / rate(px, sref),
        )
    )

    # export vs GDAL's COG driver
    plain = out / "plain.tif"
    plain_geotiff(mosaic_for_export, plain)
    ex = timed(lambda: w2w_export(mosaic_for_export, out / "map.tif"))
    gref = timed(lambda: gdal_cog(plain, out / "gdal-cog.tif"))
    rows.append(
        row(
            "export (COG)",
            px,
            ex,
            s,
            "GDAL COG driver from a plain GeoTIFF",
            rate(px, ex) / rate(px, gref),
        )
    )
    rows.append(row("  (reference) GDAL COG driver", px, gref, s))

    scaling = scaling_run(s, out / "scaling", log, (image, label)) if s.scaling else []
    return {"rows": rows, "details": details, "scaling": scaling}


def scaling_run(
    s: Settings, out: Path, log: Any, state: tuple[str, str] | None = None
) -> list[dict[str, Any]]:
    """Ingest, predict (I/O-bound model, stride = chip), sieve and export at 1x, 2x and 4x
    the area of a quarter of the state; the 4x run reuses the state's GeoTIFFs (``state``)."""
    results = []
    base = s.size // 2
    for factor in (1, 2, 4):
        size = round(base * math.sqrt(factor) / 64) * 64
        work = out / f"x{factor}"
        if state is not None and size == s.size:
            image, label = state
        else:
            image, label = make_state(work / "state", size, s.seed)
        store = str(work / "scene.zarr")
        px = size * size
        stages: dict[str, Timed] = {}
        stages["ingest"] = timed(lambda i=image, lb=label, st=store: ingest_state(i, lb, Path(st)))
        bundle = make_bundle(store, MODELS["io-bound"], s.chip, work / "model.safetensors", s.seed)
        mosaic = work / "mosaic.zarr"
        stages["predict"] = timed(
            lambda b=bundle, st=store, m=mosaic: w2w_predict(st, b, m, s, s.chip)
        )
        stages["sieve"] = timed(lambda m=mosaic, w=work: w2w_sieve(str(m), w / "mmu.zarr", 100))
        stages["export"] = timed(
            lambda w=work: w2w_export(str(w / "mmu.zarr"), w / "map.tif", "file")
        )
        for stage, t in stages.items():
            results.append(
                {
                    "area": f"{factor}x",
                    "size": size,
                    "stage": stage,
                    "seconds": round(t.seconds, 2),
                    "us_per_px": round(t.seconds / px * 1e6, 3),
                    "peak_mib": round(t.peak_mib),
                    "grown_mib": round(t.grown_mib),
                }
            )
        log(
            f"scaling {factor}x ({size} px): "
            + ", ".join(f"{k} {v.seconds:.1f} s / {v.peak_mib:.0f} MiB" for k, v in stages.items())
        )
        shutil.rmtree(work / "state", ignore_errors=True)
    return results


def markdown(res: dict[str, Any], header: dict[str, Any]) -> str:
    """The results as a Markdown section for RESULTS.md."""
    lines = [
        f"### Throughput, {header['date']} — {header['machine']}",
        "",
        f"- Command: `{header['command']}`; commit `{header['commit']}`; "
        f"total {header['seconds']:.0f} s",
        f"- Settings: {header['settings']}",
        "",
        "| stage | Mpx/s | km²/h | wall s | peak MiB | vs | ratio |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for r in res["rows"]:
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}"
        lines.append(
            f"| {r['stage']} | {r['mpx_per_s']:.3f} | {r['km2_per_h']:,.0f} | {r['seconds']:.1f} | "
            f"{r['peak_mib']:,} | {r['reference']} | {ratio} |"
        )
    c = res["details"]["chips"]
    lines += [
        "",
        f"Chips to the trainer ({c['chip_size']} px, {c['chips_per_epoch']} per epoch, 3 epochs):",
    ]
    for mode, what in (
        (
            "cached",
            "both hold the chips in memory after the first epoch: Ray's object store, a list",
        ),
        ("streamed", "both read every chip from the store every epoch"),
    ):
        m = c[mode]
        lines.append(
            f"- {mode} ({what}): Ray Data → Ray Train worker "
            f"{m['ray_data_chips_per_s']} chips/s vs one process reading the same chips "
            f"into torch tensors {m['raw_chips_per_s']} "
            f"chips/s: ratio **{m['ratio']:.2f}**"
        )
    lines += ["", "Predict details:", ""]
    for name, d in res["details"]["predict"].items():
        lines.append(f"- {name}: " + ", ".join(f"{k} {v}" for k, v in d.items() if k != "model"))
    if res["scaling"]:
        lines += [
            "",
            "Scaling (I/O-bound model, stride = chip; time per pixel and peak memory of the "
            "process tree):",
            "",
            "| stage | "
            + " | ".join(f"{a} µs/px | {a} peak MiB" for a in ("1x", "2x", "4x"))
            + " | peak 4x/1x |",
            "|---|" + "---:|" * 7,
        ]
        for stage in ("ingest", "predict", "sieve", "export"):
            by = {r["area"]: r for r in res["scaling"] if r["stage"] == stage}
            cells = " | ".join(
                f"{by[a]['us_per_px']:.3f} | {by[a]['peak_mib']:,}" for a in ("1x", "2x", "4x")
            )
            lines.append(
                f"| {stage} | {cells} | {by['4x']['peak_mib'] / by['1x']['peak_mib']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the throughput benchmark; see the module docstring."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks run", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--size", type=int, default=Settings.size, help="state edge in pixels")
    parser.add_argument("--chip", type=int, default=Settings.chip)
    parser.add_argument("--block", type=int, default=Settings.block, help="predict block edge")
    parser.add_argument("--batch", type=int, default=Settings.batch, help="predict batch size")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    parser.add_argument("--no-scaling", action="store_true", help="skip the 1x/2x/4x run")
    parser.add_argument(
        "--overlap", action="store_true", help="also predict the realistic model at stride chip/2"
    )
    parser.add_argument(
        "--no-bf16",
        action="store_true",
        help="skip the bf16 predict (slow where the CPU has no bf16 instructions)",
    )
    parser.add_argument("--out", default="bench-out/throughput")
    parser.add_argument("--results", action="store_true", help="append to benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    s = Settings(
        size=args.size,
        chip=args.chip,
        block=args.block,
        batch=args.batch,
        threads=args.threads,
        scaling=not args.no_scaling,
        overlap=args.overlap,
        bf16=not args.no_bf16,
    )
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")
    t0 = time.time()
    res = run(s, Path(args.out), log=lambda m: print(m, flush=True))
    header = {
        **run_header("python -m benchmarks run", argv),
        "seconds": time.time() - t0,
        "settings": f"state {s.size}² px at {s.pixel_m:g} m, chip {s.chip}, predict block "
        f"{s.block}, batch {s.batch}, {s.torch_threads} torch threads, fp32 on CPU",
    }
    publish(
        Path(args.out, "throughput.json"), header, res, markdown(res, header), record=args.results
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
