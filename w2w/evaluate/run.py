"""Evaluate: accuracy of a mosaic against reference labels, and class areas with their CIs.

The mosaic and the labelled scene store share a grid; the comparison runs block by block
(Ray tasks, or in this process with ``engine="local"``). Each block task returns two small
sums, merged on the driver:

* the **confusion matrix** (reference x map, indices of the mosaic's class table) over the
  *reference pixels*: labelled (label != the scene's unlabelled value), with a label id in
  the class table, and inside the chosen split of the model bundle (``split="test"``: the
  pixels no training or validation chip covers). Reference pixels the map left as nodata
  (255, e.g. invalid input there) or holding a value outside the class table are counted
  and reported, never silently dropped; so are labels whose id the class table lacks;
* the **mapped pixels** of every class over the whole mosaic -- the strata sizes of the area
  estimator.

Because both are plain sums, the result does not depend on the block size or on the number
of workers, and equals a whole-raster computation.

From them: overall accuracy, kappa, per-class precision (user's accuracy), recall
(producer's), F1 and IoU, mean IoU (:func:`w2w.core.metrics.summary`), and the area of every
class with a 95% confidence interval by the stratified estimator of Olofsson et al. (2014)
(:func:`w2w.core.metrics.stratified_area`), in hectares and km^2 (pixels for a CRS not in
metres). ``evaluation.json``, ``evaluation.md`` and ``confusion_matrix.png`` are written into
the output folder (or ``s3://`` prefix), each atomically.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from w2w.core.classes import CLASS_NODATA, ClassInfo
from w2w.core.errors import ConfigError, InputError
from w2w.core.grid import Window
from w2w.core.metrics import confusion, summary
from w2w.core.outputs import publish_files
from w2w.core.plots import plot_confusion
from w2w.core.provenance import find_bundle_hash
from w2w.core.runtime import run_blocks
from w2w.core.split import SplitPlan
from w2w.core.store import MosaicStore, SceneStore
from w2w.core.store.integrity import short
from w2w.evaluate.baseline import BASELINE_NOTE, Baseline, fit, mcnemar
from w2w.evaluate.config import EvaluateConfig, report_targets
from w2w.evaluate.report import EvaluationResult, Excluded, build_result, markdown_report

log = logging.getLogger("w2w")


@dataclass
class BlockCounts:
    """Sums over some pixels: what one block task returns and the driver adds up."""

    matrix: np.ndarray  # (K, K) int64, reference x map
    mapped: np.ndarray  # (256,) int64: pixels of each stored map value, whole mosaic
    map_nodata: int = 0  # reference pixels the map left as nodata (255)
    map_unknown: int = 0  # reference pixels whose map value is not in the class table
    label_unknown: int = 0  # labelled pixels (in the split) whose id is not in the table
    #: The per-pixel baseline on the same pixels as ``matrix`` (reference x baseline), and
    #: the discordant pairs: pixels only the map got right, only the baseline got right.
    baseline: np.ndarray | None = None
    discordant: np.ndarray | None = None

    @classmethod
    def zeros(cls, n_classes: int, *, baseline: bool = False) -> BlockCounts:
        """Empty sums for ``n_classes`` classes."""
        return cls(
            np.zeros((n_classes, n_classes), np.int64),
            np.zeros(256, np.int64),
            baseline=np.zeros((n_classes, n_classes), np.int64) if baseline else None,
            discordant=np.zeros(2, np.int64) if baseline else None,
        )

    def add(self, other: BlockCounts) -> None:
        """Add another block's sums to these."""
        self.matrix += other.matrix
        self.mapped += other.mapped
        self.map_nodata += other.map_nodata
        self.map_unknown += other.map_unknown
        self.label_unknown += other.label_unknown
        if self.baseline is not None and other.baseline is not None:
            self.baseline += other.baseline
            self.discordant += other.discordant  # type: ignore[operator]


class BlockCounter:
    """The block task: counts of one window. Small and picklable (URLs and small arrays);
    the stores are opened on the worker on first use.
    """

    def __init__(
        self,
        mosaic_url: str,
        scene_url: str,
        class_ids: list[int],
        unlabelled: int | None,
        split_plan: SplitPlan | None = None,
        split: str = "all",
        chip_codes: np.ndarray | None = None,
        baseline: Baseline | None = None,
    ) -> None:
        self.mosaic_url = mosaic_url
        self.baseline = baseline
        self.scene_url = scene_url
        self.class_ids = list(class_ids)
        self.unlabelled = unlabelled
        self.split_plan = split_plan
        self.split = split
        self.chip_codes = chip_codes
        self._stores: tuple[MosaicStore, SceneStore] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_stores": None}

    def lookup(self) -> np.ndarray:
        """(256,) int64: class-table index of every stored value, -1 when not in the table."""
        lut = np.full(256, -1, dtype=np.int64)
        for i, cid in enumerate(self.class_ids):
            lut[cid] = i
        return lut

    def __call__(self, window: Window) -> BlockCounts:
        if self._stores is None:
            self._stores = (MosaicStore.open(self.mosaic_url), SceneStore.open(self.scene_url))
        mosaic, scene = self._stores
        if mosaic.is_empty(window):  # outside the state: nothing to read, all nodata
            cls = np.full((window.height, window.width), CLASS_NODATA, dtype=np.uint8)
        else:
            cls = mosaic.read_class(window)
        image = scene.read_image(window) if self.baseline is not None else None
        return self.count(cls, scene.read_label(window), window, image)

    def count(
        self,
        cls: np.ndarray,
        label: np.ndarray,
        window: Window,
        image: np.ndarray | None = None,
    ) -> BlockCounts:
        """The sums for map classes ``cls`` and labels ``label`` of ``window`` (and, with
        the scene's ``image`` there, the baseline's on the same pixels)."""
        lut = self.lookup()
        k = len(self.class_ids)
        map_idx = lut[cls]
        ref_idx = lut[label]
        scored = np.ones(label.shape, dtype=bool)
        if self.unlabelled is not None:
            scored &= label != self.unlabelled
        if self.split != "all" and self.split_plan is not None:
            scored &= self.split_plan.pixel_mask(window, self.split, codes=self.chip_codes)  # type: ignore[arg-type]
        reference = scored & (ref_idx >= 0)
        compared = reference & (map_idx >= 0)
        base = None, None
        if self.baseline is not None and image is not None:
            base = self._baseline_counts(image, compared, ref_idx, map_idx, k)
        return BlockCounts(
            baseline=base[0],
            discordant=base[1],
            matrix=confusion(ref_idx, map_idx, k, mask=compared),
            mapped=np.bincount(cls.ravel(), minlength=256).astype(np.int64),
            map_nodata=int((reference & (cls == CLASS_NODATA)).sum()),
            map_unknown=int((reference & (map_idx < 0) & (cls != CLASS_NODATA)).sum()),
            label_unknown=int((scored & (ref_idx < 0)).sum()),
        )

    def _baseline_counts(
        self,
        image: np.ndarray,
        compared: np.ndarray,
        ref_idx: np.ndarray,
        map_idx: np.ndarray,
        k: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The baseline's confusion matrix on the ``compared`` pixels, and the discordant
        pairs (only the map right, only the baseline right) there."""
        assert self.baseline is not None
        pred = self.baseline.predict(image, compared)
        ref, net = ref_idx[compared], map_idx[compared]
        net_ok, base_ok = net == ref, pred == ref
        matrix = confusion(ref, pred, k)
        pairs = np.array([(net_ok & ~base_ok).sum(), (~net_ok & base_ok).sum()], np.int64)
        return matrix, pairs


def evaluate(cfg: EvaluateConfig, *, progress: bool = True) -> EvaluationResult:
    """Score a mosaic against a scene's labels and estimate class areas; see the module notes."""
    mosaic = MosaicStore.open(cfg.mosaic)
    scene = SceneStore.open(cfg.scene)
    info = scene.info
    if not info.has_label:
        raise InputError(
            f"scene store {cfg.scene} has no labels to evaluate against; ingest it with a "
            "label raster (`w2w ingest ... --label labels.tif`)"
        )
    warnings: list[str] = []
    note = scene.grid.check_matches(
        mosaic.grid,
        what=f"mosaic {cfg.mosaic}",
        fix="evaluate the mosaic against the scene store it was predicted from",
    )
    if note:
        warnings.append(note)
    mosaic.require_complete(allow_incomplete=cfg.allow_incomplete, then="evaluate it")
    mosaic.require_whole()
    scene.require_whole(arrays=("label",))  # only the labels are read
    _check_scene_identity(mosaic, scene)
    classes = mosaic.classes
    if not classes:
        raise InputError(f"mosaic {cfg.mosaic} has an empty class table; nothing to evaluate")
    split, plan, bundle_hash = _resolve_split(cfg, mosaic, classes, warnings)
    warnings.extend(_scene_class_warnings(info.classes, classes, cfg.scene))

    targets = report_targets(cfg.output)  # existing ones need overwrite: the output guard

    counter = BlockCounter(
        mosaic.url,
        scene.url,
        [c.id for c in classes],
        info.unlabelled,
        split_plan=plan,
        split=split,
        chip_codes=plan.chip_codes() if plan is not None else None,
    )
    fitted, skipped = _fit_baseline(cfg, scene, counter, split, plan, progress=progress)
    counter.baseline = fitted
    totals = BlockCounts.zeros(len(classes), baseline=fitted is not None)
    for counts in run_blocks(
        counter, mosaic.blocks(), engine=cfg.engine, what="evaluate", progress=progress
    ):
        totals.add(counts)
    if not int(totals.matrix.sum()):
        where = "" if split == "all" else f"the {split} split of "
        raise InputError(
            f"{where}{cfg.scene} holds no labelled pixel that mosaic {cfg.mosaic} maps: "
            "nothing to score; evaluate another split (--split all, or val), or train with "
            "a split whose regions hold labels"
        )
    inputs = {"mosaic": cfg.mosaic, "scene": cfg.scene, "bundle": cfg.bundle}
    inputs.update(bundle_hash=bundle_hash, mosaic_provenance=mosaic.provenance)
    result = build_result(
        totals.matrix,
        totals.mapped,
        Excluded(totals.map_nodata, totals.map_unknown, totals.label_unknown),
        classes,
        mosaic.grid,
        split=split,
        inputs=inputs,
        files=targets,
        warnings=warnings,
        baseline=_baseline_report(fitted, skipped, totals, [c.name for c in classes]),
    )
    for w in result.warnings:
        log.warning(w)
    _write_report(result, targets)
    return result


def _write_report(result: EvaluationResult, targets: dict[str, str]) -> None:
    """The report's files, published as one set (the JSON last: a reader never finds a
    report beside another's figure)."""
    report = result.to_json()
    with tempfile.TemporaryDirectory(prefix="w2w-evaluate-") as tmp:
        staged = {key: Path(tmp) / Path(url).name for key, url in targets.items()}
        staged["figure"].write_bytes(plot_confusion(result.matrix, list(result.class_names)))
        staged["markdown"].write_text(markdown_report(report))
        staged["json"].write_text(json.dumps(report, indent=2) + "\n")
        publish_files([(targets[k], staged[k]) for k in ("figure", "markdown", "json")])


# -- the per-pixel baseline -----------------------------------------------------------------


def _fit_baseline(
    cfg: EvaluateConfig,
    scene: SceneStore,
    counter: BlockCounter,
    split: str,
    plan: SplitPlan | None,
    *,
    progress: bool,
) -> tuple[Baseline | None, str | None]:
    """The baseline fitted on the training split, or None and why not."""
    if not cfg.baseline:
        return None, "turned off (--no-baseline)"
    if plan is None or split not in ("test", "val"):
        return None, (
            "needs the bundle's spatial split, to fit on its training pixels and score on "
            "held-out ones; evaluate with --bundle and --split test"
        )
    log.info("fitting the per-pixel baseline on the training split")
    fitted = fit(scene, counter.lookup(), plan, engine=cfg.engine, progress=progress)
    if fitted is None:
        return None, "the training split has no labelled pixels of two or more classes"
    return fitted, None


def _baseline_report(
    fitted: Baseline | None, skipped: str | None, totals: BlockCounts, names: list[str]
) -> dict[str, Any]:
    """The report's ``baseline`` section: the baseline's accuracy on the map's pixels and
    McNemar's test of the difference."""
    if fitted is None or totals.baseline is None or totals.discordant is None:
        return {"skipped": skipped}
    return {
        **fitted.describe(),
        "accuracy": summary(totals.baseline, names),
        "mcnemar": mcnemar(int(totals.discordant[0]), int(totals.discordant[1])),
        "note": BASELINE_NOTE,
    }


# -- checks ---------------------------------------------------------------------------------


def _resolve_split(
    cfg: EvaluateConfig,
    mosaic: MosaicStore,
    classes: tuple[ClassInfo, ...],
    warnings: list[str],
) -> tuple[str, Any, str | None]:
    """The split to score, its plan (or None for ``all``) and the bundle's content hash."""
    if cfg.bundle is None:
        if cfg.split not in (None, "all"):
            raise ConfigError(
                f"split '{cfg.split}' needs the model bundle that holds the spatial split; "
                "pass --bundle model.safetensors, or --split all to score every labelled pixel"
            )
        return "all", None, None

    from w2w.model.bundle import load_bundle

    bundle = load_bundle(cfg.bundle, weights=False)
    made_with = find_bundle_hash(mosaic.provenance)
    if made_with is not None and made_with != bundle.content_hash:
        raise InputError(
            f"mosaic {cfg.mosaic} was predicted by bundle {short(made_with)}, not by "
            f"{cfg.bundle} ({short(bundle.content_hash)}); its test split would not be the one "
            "the mosaic's model held out: evaluate with the bundle that predicted it"
        )
    check_class_tables(classes, bundle.classes, cfg.mosaic, cfg.bundle)
    split = cfg.split or ("test" if bundle.split is not None else "all")
    if split == "all":
        if cfg.split is None:
            warnings.append(
                f"bundle {cfg.bundle} records no spatial split: scoring every labelled pixel, "
                "training pixels included, so the scores are optimistic"
            )
        else:
            warnings.append(
                "split 'all' includes the pixels the model was trained on: the scores are "
                "optimistic; use --split test for an honest estimate"
            )
        return "all", None, bundle.content_hash
    plan = bundle.split
    if plan is None:
        raise InputError(
            f"bundle {cfg.bundle} records no spatial split, so split '{split}' cannot be "
            "rebuilt; evaluate with --split all (optimistic: includes training pixels) or "
            "train with a split"
        )
    grid = mosaic.grid
    if (plan.height, plan.width) != grid.shape:
        raise InputError(
            f"the split in bundle {cfg.bundle} was made for a {plan.width} x {plan.height} px "
            f"scene but the mosaic is {grid.width} x {grid.height} px; evaluate the mosaic "
            "of the scene the model was trained on, or use --split all"
        )
    return split, plan, bundle.content_hash


def _check_scene_identity(mosaic: MosaicStore, scene: SceneStore) -> None:
    """Refuse scoring a mosaic against another scene than the one it was predicted from."""
    made_from = _scene_identity_of(mosaic.provenance)
    if made_from and scene.identity and made_from != scene.identity:
        raise InputError(
            f"mosaic {mosaic.url} was predicted from scene content {short(made_from)}, but "
            f"{scene.url} holds {short(scene.identity)}; evaluate against the scene store it "
            "was predicted from"
        )


def _scene_identity_of(provenance: dict[str, Any]) -> str | None:
    """The scene identity a mosaic (or the mosaic a sieved one came from) was made from."""
    made_from = provenance.get("made_from") or {}
    if made_from.get("scene"):
        return str(made_from["scene"])
    inner = provenance.get("input_provenance")
    return _scene_identity_of(inner) if isinstance(inner, dict) else None


def check_class_tables(
    mosaic_classes: tuple[ClassInfo, ...],
    bundle_classes: tuple[ClassInfo, ...],
    mosaic_url: str,
    bundle_url: str,
) -> None:
    """Refuse a mosaic and a bundle whose class tables (ids and names) differ."""
    a = [(c.id, c.name) for c in mosaic_classes]
    b = [(c.id, c.name) for c in bundle_classes]
    if a != b:

        def show(table: list[tuple[int, str]]) -> str:
            return ", ".join(f"{i}={n}" for i, n in table)

        raise InputError(
            f"class tables differ: mosaic {mosaic_url} has [{show(a)}], bundle {bundle_url} "
            f"has [{show(b)}]; evaluate the mosaic with the bundle that predicted it"
        )


def _scene_class_warnings(
    scene_classes: tuple[ClassInfo, ...], classes: tuple[ClassInfo, ...], scene_url: str
) -> list[str]:
    names = {c.id: c.name for c in classes}
    out = []
    for c in scene_classes:
        if c.id in names and names[c.id] != c.name:
            out.append(
                f"label {c.id} is '{c.name}' in scene {scene_url} but '{names[c.id]}' in the "
                "mosaic; scoring by id"
            )
    return out
