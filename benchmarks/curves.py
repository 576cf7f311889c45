"""Label-efficiency curves: the network from scratch, after ``w2w pretrain``, and the per-pixel
baselines, at a share of the training labels kept by region.

For each scene, seed, split direction and share (1 %, 10 %, 100 % by default) of the
training split's labelled pixels (kept by region, :mod:`benchmarks.labels`; the test labels
never change), in one run:

1. pretrain the recipe's encoder on the whole scene's imagery, no labels (once per scene and
   seed: pretraining sees no label, so every share and direction starts from it);
2. train the recipe from scratch and from the pretrained encoder on the reduced store,
   predict, and score the test pixels with ``w2w evaluate``, whose gradient-boosted baseline
   is fitted on the same reduced training split; fit the RandomForest on the labelled pixels
   of the chips w2w trained on.

Points with fewer than ``MIN_PIXELS`` training labels are reported, not run. Sized for 2 CPU
cores (:data:`CURVE_RECIPE`, :data:`PRETRAIN`); a GPU run would use the full recipe (stride
8, 18 epochs) and pretrain for 50-100 epochs over every chip.

    python -m benchmarks quality --curves [--shares 1,10,100] [--seeds 0,1] [--scenes ...]
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.labels import reduced_store
from benchmarks.quality import (
    DIRECTIONS,
    RECIPE,
    SCENES,
    Scene,
    ingest_scene_inputs,
    merged,
    pixel_sets,
    run_direction,
    train_config,
)

#: The recipe of every point of the curves: the quality benchmark's, with half the epochs and
#: a quarter of the chips per epoch (stride 16), so that a run fits in about an hour on 2 CPUs.
CURVE_RECIPE: dict[str, Any] = {"chips": {"stride": 16}, "epochs": 10}

#: Pretraining, per scene and seed.
PRETRAIN: dict[str, Any] = {
    "chip_size": 64,
    "stride": 16,
    "max_chips": 400,
    "epochs": 10,
    "batch_size": 32,
    "optim": {"lr": 0.002, "warmup_epochs": 1},
    "workers": {"num_workers": 1, "cpus_per_worker": 2},
}

#: Points with fewer training labels than this are not run (a curve of 3 pixels says nothing).
MIN_PIXELS = 50


def pretrain_scene(scene: Scene, store: str, workdir: Path, seed: int) -> dict[str, Any]:
    """Pretrain the recipe's encoder on the scene; the encoder file and the loss curve."""
    from w2w.api import pretrain
    from w2w.train.pretrain.config import PretrainConfig

    recipe = merged(RECIPE, scene.recipe)
    model = {k: v for k, v in recipe["model"].items() if k not in ("weights", "encoder_weights")}
    cfg = PretrainConfig.from_dict(
        {
            **PRETRAIN,
            "scene": store,
            "storage_path": str(workdir / "runs"),
            "run_name": f"{scene.name}-pretrain-{seed}",
            "model": model,
            "normalization": recipe["normalization"],
            "seed": seed,
            "engine": "local",
            "overwrite": True,
        }
    )
    t0 = time.time()
    report = pretrain(cfg, progress=False)
    return {
        "encoder": report.output,
        "loss": [round(h["loss"], 3) for h in report.history],
        "std": round(report.history[-1]["std"], 3),
        "chips": report.chips["chips"],
        "seconds": round(time.time() - t0, 1),
    }


def _scores(r: dict[str, Any]) -> dict[str, float]:
    return {
        "w2w_oa": r["w2w"]["overall_accuracy"],
        "w2w_miou": r["w2w"]["mean_iou"],
        "rf_oa": r["random_forest"]["overall_accuracy"],
        "rf_miou": r["random_forest"]["mean_iou"],
        "gb_oa": r["gradient_boosting"]["overall_accuracy"],
        "gb_miou": r["gradient_boosting"]["mean_iou"],
        "min_iou": min(r["w2w"]["per_class_iou"].values()),
    }


def run_scene(
    name: str, workdir: Path, shares: list[float], seeds: list[int], log: Any
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every point of one scene's curves, and its pretraining runs."""
    from w2w.core.store import SceneStore

    scene = SCENES[name]
    workdir.mkdir(parents=True, exist_ok=True)
    store, images, classes = ingest_scene_inputs(scene, workdir)
    full = SceneStore.open(store).grid.full_window
    points: list[dict[str, Any]] = []
    pretraining: dict[str, Any] = {}
    for seed in seeds:
        pre = pretrain_scene(scene, store, workdir, seed)
        pretraining[str(seed)] = pre
        log(f"{name} seed {seed}: pretrained in {pre['seconds']:.0f} s, loss {pre['loss']}")
        for direction in DIRECTIONS:
            side = DIRECTIONS[direction]
            plan = pixel_sets(train_config(scene, store, side, workdir, seed, CURVE_RECIPE))[4]
            train_mask = plan.split.pixel_mask(full, "train")
            for share in shares:
                tag = f"-{round(share * 100)}pct-s{seed}"
                if share >= 1:
                    point_store, kept = store, None
                else:
                    red = reduced_store(
                        store,
                        images,
                        classes,
                        train_mask,
                        share,
                        seed,
                        workdir,
                        f"{name}-{side}{tag}",
                    )
                    point_store, kept = red.store, red.kept
                    if kept < MIN_PIXELS:
                        points.append(
                            {
                                "scene": name,
                                "direction": direction,
                                "share": share,
                                "seed": seed,
                                "skipped": f"{kept} training pixels",
                            }
                        )
                        log(f"{name} {direction} {share:.0%} seed {seed}: {kept} px, not run")
                        continue
                row: dict[str, Any] = {
                    "scene": name,
                    "direction": direction,
                    "share": share,
                    "seed": seed,
                }
                for method, over in (
                    ("scratch", CURVE_RECIPE),
                    (
                        "pretrained",
                        merged(CURVE_RECIPE, {"model": {"encoder_weights": pre["encoder"]}}),
                    ),
                ):
                    t0 = time.time()
                    r = run_direction(
                        scene, point_store, direction, workdir, seed, over, f"{tag}-{method}"
                    )
                    row[method] = {**_scores(r), "seconds": round(time.time() - t0, 1)}
                    row["train_pixels"] = r["train_pixels"]
                    row["test_pixels"] = r["test_pixels"]
                s, p = row["scratch"], row["pretrained"]
                log(
                    f"{name} {direction} {share:.0%} seed {seed} ({row['train_pixels']:,} px): "
                    f"scratch OA {s['w2w_oa']:.3f} mIoU {s['w2w_miou']:.3f} | pretrained OA "
                    f"{p['w2w_oa']:.3f} mIoU {p['w2w_miou']:.3f} | RF OA {s['rf_oa']:.3f} | "
                    f"GB OA {s['gb_oa']:.3f}"
                )
                points.append(row)
    return points, pretraining


def _mean_sd(values: list[float]) -> str:
    a = np.asarray(values, dtype=float)
    if len(a) < 2:
        return f"{a.mean():.3f}"
    return f"{a.mean():.3f} ± {a.std(ddof=1):.3f}"


def markdown(
    points: list[dict[str, Any]], pretraining: dict[str, Any], header: dict[str, Any]
) -> str:
    """The curves as a Markdown section: mean ± sd over seeds and both directions."""
    lines = [
        f"### Label efficiency: scratch vs pretrained vs per-pixel ({header['date']})",
        "",
        f"- Command: `{header['command']}`",
        f"- Commit: `{header['commit']}`; machine: {header['machine']}; total "
        f"{header['seconds'] / 60:.0f} min; seeds {header['seeds']}",
        f"- Recipe: the quality benchmark's with {CURVE_RECIPE}; pretraining: dense VICReg, "
        f"{PRETRAIN['epochs']} epochs over at most {PRETRAIN['max_chips']} chips of "
        f"{PRETRAIN['chip_size']} px (stride {PRETRAIN['stride']}) of the whole scene, no labels; "
        "the pretrained encoder fine-tunes at a tenth of the learning rate.",
        "- Training labels kept by region (16 px squares, seeded); test pixels the same at "
        "every share. Mean ± sd over seeds x both directions.",
        "",
        "| scene | labels | train px | scratch OA | pretrained OA | RF OA | GB OA "
        "| scratch mIoU | pretrained mIoU | RF mIoU | GB mIoU | Δ mIoU (pre − scratch) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    keys = dict.fromkeys((p["scene"], p["share"]) for p in points)
    for scene, share in keys:
        rows = [p for p in points if p["scene"] == scene and p["share"] == share]
        run = [p for p in rows if "scratch" in p]
        if not run:
            lines.append(
                f"| {scene} | {share:.0%} | — | not run: {rows[0]['skipped']} | | | | | | | | |"
            )
            continue

        def col(method: str, key: str, run: list[dict[str, Any]] = run) -> str:
            return _mean_sd([p[method][key] for p in run])

        delta = _mean_sd([p["pretrained"]["w2w_miou"] - p["scratch"]["w2w_miou"] for p in run])
        px = int(np.mean([p["train_pixels"] for p in run]))
        lines.append(
            f"| {scene} | {share:.0%} | {px:,} | {col('scratch', 'w2w_oa')} | "
            f"{col('pretrained', 'w2w_oa')} | {col('scratch', 'rf_oa')} | "
            f"{col('scratch', 'gb_oa')} | {col('scratch', 'w2w_miou')} | "
            f"{col('pretrained', 'w2w_miou')} | {col('scratch', 'rf_miou')} | "
            f"{col('scratch', 'gb_miou')} | {delta} |"
        )
    lines += ["", "Pretraining (loss first → last epoch, embedding spread, seconds):", ""]
    for scene, runs in pretraining.items():
        for seed, pre in runs.items():
            lines.append(
                f"- {scene} seed {seed}: {pre['loss'][0]} → {pre['loss'][-1]}, std {pre['std']}, "
                f"{pre['chips']} chips, {pre['seconds']:.0f} s"
            )
    return "\n".join(lines) + "\n"
