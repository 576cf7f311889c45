"""Map quality on real imagery: w2w against per-pixel baselines on the same split.

For each scene (the real ones in ``../shared/data/real`` when present, and a synthetic
state) and each split direction (train on the west half and test on the east, then the
reverse), in one run:

1. ingest the scene;
2. split it in halves (``split.mode = halves``): training chips on one side, test chips on
   the other, with the buffer that keeps every test pixel out of every training chip;
3. train w2w with the small-scene recipe below, predict the whole scene, and score the
   mosaic on the test pixels with ``w2w evaluate``;
4. fit a RandomForest (scikit-learn, 200 trees) on exactly the labelled pixels of the
   chips w2w trained on, predict the same test pixels, and score it the same way;
5. read the gradient-boosted baseline ``w2w evaluate`` reports beside every evaluation
   (bands plus spectral indices, fitted on the training split, scored on the same pixels,
   with McNemar's test against the map).

Prints OA, kappa, mean IoU and per-class IoU for each and writes ``quality.json`` plus a
Markdown table (appended to ``benchmarks/RESULTS.md`` with ``--results``). Training runs on
one worker with a fixed seed, so two runs on the same CPU give the same metrics.

    python -m benchmarks.quality [--out DIR] [--scenes chiapas,aberystwyth,synthetic]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import publish, run_header
from w2w.train.fit import SMALL_RECIPE

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "real"
DIRECTIONS = {"west→east": "first", "east→west": "second"}


def _recipe() -> dict[str, Any]:
    """The small-scene recipe ``w2w train`` fits to a small scene (``SMALL_RECIPE`` in
    ``w2w/train/fit.py``, the one statement of it), as one training config: its own stride
    of 8 px, and one worker with both cores."""
    recipe: dict[str, Any] = {k: copy.deepcopy(v) for k, v in SMALL_RECIPE.items() if k}
    recipe.update(copy.deepcopy(SMALL_RECIPE[""]))
    recipe["chips"].update(stride=8, balance=True)
    recipe["workers"] = {"num_workers": 1, "cpus_per_worker": 2}
    return recipe


#: The small-scene recipe: what makes 250-500 px scenes train well with no pretrained weights.
RECIPE: dict[str, Any] = _recipe()


@dataclass(frozen=True)
class Scene:
    """A benchmark scene: image(s), labels and ingest options, or a synthetic state."""

    name: str
    images: tuple[str, ...] = ()
    label: str | None = None
    classes: dict[int, str] | None = None
    synthetic: dict[str, Any] | None = None
    recipe: dict[str, Any] | None = None  # overrides of RECIPE for this scene

    def available(self) -> bool:
        """Whether the scene's files exist (real scenes are optional)."""
        return self.synthetic is not None or all(Path(p).exists() for p in self.images)


SCENES = {
    "chiapas": Scene(
        "chiapas",
        images=(str(REAL / "chiapas_landsat7" / "LE70220491999322EDC01_stack.gtif"),),
        label=str(REAL / "chiapas_landsat7" / "training_data.gtif"),
        classes={1: "forest", 2: "water", 3: "herbaceous", 4: "barren", 5: "urban"},
    ),
    "aberystwyth": Scene(
        "aberystwyth",
        images=(str(REAL / "aberystwyth_sentinel2" / "sen2_20210527_aber_subset.tif"),),
        label=str(REAL / "aberystwyth_sentinel2" / "aber_subset_labels.tif"),
        classes={1: "forest", 2: "grass", 3: "urban", 4: "water"},
    ),
    "synthetic": Scene(
        "synthetic",
        synthetic={"height": 512, "width": 512, "seed": 7},
        recipe={"epochs": 5},
    ),
}


def merged(base: dict[str, Any], over: dict[str, Any] | None) -> dict[str, Any]:
    """``base`` with ``over`` merged in (nested dicts merged one level deep)."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for k, v in (over or {}).items():
        out[k] = (
            {**out.get(k, {}), **v} if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


def ingest_scene(scene: Scene, workdir: Path) -> str:
    """Make the scene store (synthetic states are generated first)."""
    return ingest_scene_inputs(scene, workdir)[0]


def ingest_scene_inputs(scene: Scene, workdir: Path) -> tuple[str, list[str], dict[int, str]]:
    """Make the scene store; with the images and classes it was ingested from."""
    from w2w.ingest import IngestConfig, ingest
    from w2w.ingest.synth import SynthConfig, class_names, synthesize

    store = workdir / f"{scene.name}.zarr"
    images, label, classes = list(scene.images), scene.label, scene.classes
    if scene.synthetic is not None:
        syn = synthesize(
            SynthConfig(
                output=str(workdir / f"{scene.name}-tif"),
                overwrite=True,
                engine="local",
                **scene.synthetic,
            ),
            progress=False,
        )
        images, label, classes = list(syn.images), syn.label, class_names()
    ingest(
        IngestConfig(
            images=images,
            label=label,
            output=str(store),
            classes=classes or {},
            chunk=128,
            block=256,
            engine="local",
            overwrite=True,
        ),
        progress=False,
    )
    return str(store), images, dict(classes or {})


def train_config(
    scene: Scene,
    store: str,
    side: str,
    workdir: Path,
    seed: int,
    overrides: dict[str, Any],
    tag: str = "",
) -> Any:
    """The w2w training config of one scene and split direction (``tag`` names the run)."""
    from w2w.train import TrainConfig

    recipe = merged(merged(RECIPE, scene.recipe), overrides)
    run = f"{scene.name}-{side}{tag}"
    return TrainConfig.from_dict(
        {
            **recipe,
            "scene": store,
            "run_name": run,
            "storage_path": str(workdir / "runs"),
            "bundle": str(workdir / f"{run}.safetensors"),
            "split": {
                "mode": "halves",
                "axis": "x",
                "train_side": side,
                "block_chips": 1,
                "val_fraction": 0.0,
                "seed": seed,
            },
            "seed": seed,
            "engine": "local",
            "overwrite": True,
        }
    )


def pixel_sets(cfg: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, Any]:
    """The scene's pixels as (bands, features), labels, and the train / test masks that w2w
    uses: labelled valid pixels in the selected training chips, and in the test chips."""
    from w2w.core.grid import Window
    from w2w.core.store import SceneStore
    from w2w.train import prepare

    plan = prepare(cfg, progress=False)
    store = SceneStore.open(cfg.scene)
    full = store.grid.full_window
    image = store.read_image(full)
    valid = store.valid_mask(image)
    lut = np.asarray(plan.reader.lut, dtype=np.uint8)
    classes = lut[store.read_label(full)]
    labelled = valid & (classes != 255)
    in_train = np.zeros(valid.shape, dtype=bool)
    for row in plan.train_rows:
        w = Window(row["row"], row["col"], cfg.chips.size, cfg.chips.size).intersect(full)
        if w is not None:
            in_train[w.slices] = True
    split = plan.split
    in_test = split.pixel_mask(full, "test")
    return image, classes, labelled & in_train, labelled & in_test, plan


def random_forest(
    image: np.ndarray,
    classes: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    n_classes: int,
    seed: int,
) -> np.ndarray:
    """Fit a 200-tree RandomForest on the training pixels; confusion matrix on the test ones."""
    from sklearn.ensemble import RandomForestClassifier

    from w2w.core.metrics import confusion

    x = image.reshape(image.shape[0], -1).T.astype(np.float32)
    flat_train, flat_test = train.ravel(), test.ravel()
    rf = RandomForestClassifier(n_estimators=200, n_jobs=-1, random_state=seed)
    rf.fit(x[flat_train], classes.ravel()[flat_train])
    pred = rf.predict(x[flat_test])
    return confusion(classes.ravel()[flat_test], pred, n_classes)


def run_direction(
    scene: Scene,
    store: str,
    direction: str,
    workdir: Path,
    seed: int,
    overrides: dict[str, Any],
    tag: str = "",
) -> dict[str, Any]:
    """Train, predict and evaluate w2w, and fit and score the RandomForest, on one split."""
    from w2w.core.metrics import summary
    from w2w.evaluate import EvaluateConfig, evaluate
    from w2w.predict import PredictConfig, predict
    from w2w.train import train

    side = DIRECTIONS[direction]
    cfg = train_config(scene, store, side, workdir, seed, overrides, tag)
    t0 = time.time()
    report = train(cfg, progress=False)
    t_train = time.time() - t0
    mosaic = workdir / f"{scene.name}-{side}{tag}-mosaic.zarr"
    predict(
        PredictConfig(
            scene=store, bundle=report.bundle, output=str(mosaic), block=256, overwrite=True
        ),
        progress=False,
    )
    ev = evaluate(
        EvaluateConfig(
            mosaic=str(mosaic),
            scene=store,
            bundle=report.bundle,
            split="test",
            output=str(workdir / f"{scene.name}-{side}{tag}-eval"),
            engine="local",
            overwrite=True,
        )
    )
    image, classes, train_px, test_px, plan = pixel_sets(cfg)
    names = [c.name for c in plan.classes]
    t0 = time.time()
    rf_cm = random_forest(image, classes, train_px, test_px, len(names), seed)
    t_rf = time.time() - t0
    rf = summary(rf_cm, names)
    w2w_scores = {
        "overall_accuracy": ev.overall_accuracy,
        "kappa": ev.kappa,
        "mean_iou": ev.mean_iou,
        "per_class_iou": {n: ev.per_class[n]["iou"] for n in names},
        "test_pixels": ev.reference_pixels,
    }
    rf_scores = {
        "overall_accuracy": rf["overall_accuracy"],
        "kappa": rf["kappa"],
        "mean_iou": rf["mean_iou"],
        "per_class_iou": {n: rf["per_class"][n]["iou"] for n in names},
        "test_pixels": rf["pixels"],
    }
    base = ev.baseline  # w2w evaluate's gradient-boosted baseline, on the same pixels
    if "accuracy" not in base:
        raise RuntimeError(f"{scene.name} {direction}: no baseline ({base.get('skipped')})")
    gb_scores = {
        "overall_accuracy": base["accuracy"]["overall_accuracy"],
        "kappa": base["accuracy"]["kappa"],
        "mean_iou": base["accuracy"]["mean_iou"],
        "per_class_iou": {n: base["accuracy"]["per_class"][n]["iou"] for n in names},
        "features": base["features"],
        "mcnemar_p": base["mcnemar"]["p_value"],
        "better": base["mcnemar"]["better"],
    }
    if w2w_scores["test_pixels"] != rf_scores["test_pixels"]:
        raise RuntimeError(
            f"{scene.name} {direction}: w2w scored {w2w_scores['test_pixels']} test pixels, "
            f"the RandomForest {rf_scores['test_pixels']}; they must be the same pixels"
        )
    return {
        "scene": scene.name,
        "direction": direction,
        "train_pixels": int(train_px.sum()),
        "test_pixels": int(test_px.sum()),
        "w2w": w2w_scores,
        "random_forest": rf_scores,
        "gradient_boosting": gb_scores,
        "epochs": report.epochs_run,
        "seconds": {"w2w_train": round(t_train, 1), "rf_fit": round(t_rf, 1)},
    }


def markdown(results: list[dict[str, Any]], header: dict[str, Any]) -> str:
    """The results as a Markdown section."""
    lines = [
        f"### Map quality vs per-pixel baselines ({header['date']})",
        "",
        f"- Command: `{header['command']}`",
        f"- Commit: `{header['commit']}`; machine: {header['machine']}; "
        f"total {header['seconds']:.0f} s; seed {header.get('seed', 0)}",
        "- RF: a 200-tree RandomForest on the bands, fitted on the labelled pixels of the "
        "chips w2w trained on. GB: `w2w evaluate`'s baseline, gradient boosting on the bands "
        "and the indices their names allow, fitted on the training split's labelled pixels. "
        "All three scored on the same test pixels; p: McNemar's test, w2w vs GB.",
        "",
        "| scene | direction | train px | test px | w2w OA | RF OA | GB OA | w2w mIoU "
        "| RF mIoU | GB mIoU | p (w2w vs GB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        w, f = r["w2w"], r["random_forest"]
        g = r.get("gradient_boosting") or {}
        lines.append(
            f"| {r['scene']} | {r['direction']} | {r['train_pixels']:,} | {r['test_pixels']:,} | "
            f"{w['overall_accuracy']:.3f} | {f['overall_accuracy']:.3f} | "
            f"{g.get('overall_accuracy', float('nan')):.3f} | {w['mean_iou']:.3f} | "
            f"{f['mean_iou']:.3f} | {g.get('mean_iou', float('nan')):.3f} | "
            f"{g.get('mcnemar_p', float('nan')):.2g} |"
        )
    lines += ["", "Per-class IoU (w2w / RF):", ""]
    for r in results:
        pairs = ", ".join(
            f"{n} {r['w2w']['per_class_iou'][n]:.2f}/{r['random_forest']['per_class_iou'][n]:.2f}"
            for n in r["w2w"]["per_class_iou"]
        )
        lines.append(f"- {r['scene']} {r['direction']}: {pairs}")
    lines += ["", "Mean over both directions:", ""]
    for name in dict.fromkeys(r["scene"] for r in results):
        rs = [r for r in results if r["scene"] == name]
        d_oa = np.mean(
            [r["w2w"]["overall_accuracy"] - r["random_forest"]["overall_accuracy"] for r in rs]
        )
        d_iou = np.mean([r["w2w"]["mean_iou"] - r["random_forest"]["mean_iou"] for r in rs])
        w_oa = np.mean([r["w2w"]["overall_accuracy"] for r in rs])
        g_oa = np.mean(
            [
                r["w2w"]["overall_accuracy"]
                - (r.get("gradient_boosting") or {}).get("overall_accuracy", np.nan)
                for r in rs
            ]
        )
        lines.append(
            f"- {name}: w2w OA {w_oa:.3f}; vs RF ΔOA {d_oa * 100:+.1f} points, ΔmIoU "
            f"{d_iou:+.3f}; vs GB ΔOA {g_oa * 100:+.1f} points"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the quality benchmark; see the module docstring."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.quality", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--out", default="bench-out/quality", help="folder for stores, runs, results"
    )
    parser.add_argument("--scenes", default="chiapas,aberystwyth,synthetic")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--results", action="store_true", help="append the table to benchmarks/RESULTS.md"
    )
    parser.add_argument("--recipe", default="{}", help="JSON overrides of the training recipe")
    parser.add_argument(
        "--curves",
        action="store_true",
        help="label-efficiency curves instead: scratch vs pretrained vs per-pixel at --shares",
    )
    parser.add_argument("--shares", default="1,10,100", help="percent of training labels kept")
    parser.add_argument("--seeds", default="0,1", help="seeds of the curves")
    args = parser.parse_args(argv)
    overrides = json.loads(args.recipe)
    logging.basicConfig(level=logging.WARNING)
    try:
        import sklearn  # noqa: F401
    except ImportError:
        print(
            "the quality benchmark needs scikit-learn: pip install -e '.[bench]'", file=sys.stderr
        )
        return 2
    from w2w.core.runtime import ensure_ray

    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")
    ensure_ray()
    workdir = Path(args.out)
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if args.curves:
        return _curves(args, argv, workdir, t0)
    results = []
    for name in [s.strip() for s in args.scenes.split(",") if s.strip()]:
        scene = SCENES[name]
        if not scene.available():
            print(f"skipping {name}: its files are not present", file=sys.stderr)
            continue
        store = ingest_scene(scene, workdir)
        for direction in DIRECTIONS:
            r = run_direction(scene, store, direction, workdir, args.seed, overrides)
            results.append(r)
            w, f = r["w2w"], r["random_forest"]
            print(
                f"{name:12s} {direction}: w2w OA {w['overall_accuracy']:.3f} "
                f"mIoU {w['mean_iou']:.3f}"
                f" | RF OA {f['overall_accuracy']:.3f} mIoU {f['mean_iou']:.3f}"
                f" | GB OA {r['gradient_boosting']['overall_accuracy']:.3f}"
                f" mIoU {r['gradient_boosting']['mean_iou']:.3f}"
                f" | {r['epochs']} epochs, train {r['seconds']['w2w_train']:.0f} s",
                flush=True,
            )
    header = run_header("python -m benchmarks quality", argv)
    header.update(seconds=time.time() - t0, seed=args.seed, recipe=merged(RECIPE, overrides))
    res = {"results": results}
    publish(workdir / "quality.json", header, res, markdown(results, header), record=args.results)
    return 0


def _curves(args: argparse.Namespace, argv: list[str] | None, workdir: Path, t0: float) -> int:
    """The label-efficiency curves (:mod:`benchmarks.curves`)."""
    from benchmarks import curves

    shares = [float(v) / 100 for v in args.shares.split(",")]
    seeds = [int(v) for v in args.seeds.split(",")]
    points: list[dict[str, Any]] = []
    pretraining: dict[str, Any] = {}
    for name in [s.strip() for s in args.scenes.split(",") if s.strip()]:
        if not SCENES[name].available():
            print(f"skipping {name}: its files are not present", file=sys.stderr)
            continue
        got, pre = curves.run_scene(
            name, workdir / "curves", shares, seeds, lambda m: print(m, flush=True)
        )
        points += got
        pretraining[name] = pre
    header = run_header("python -m benchmarks quality", argv)
    header.update(seconds=time.time() - t0, seeds=seeds)
    text = curves.markdown(points, pretraining, header)
    res = {"points": points, "pretraining": pretraining}
    publish(workdir / "curves.json", header, res, text, record=args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
