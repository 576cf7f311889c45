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
(producer's), F1 and IoU, mean IoU (:func:`w2w.metrics.summary`), and the area of every
class with a 95% confidence interval by the stratified estimator of Olofsson et al. (2014)
(:func:`w2w.metrics.stratified_area`), in hectares and km^2 (pixels for a CRS not in
metres). ``evaluation.json``, ``evaluation.md`` and ``confusion_matrix.png`` are written into
the output folder (or ``s3://`` prefix), each atomically.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from w2w import storage
from w2w.config import PathStr, StageConfig
from w2w.errors import ConfigError, InputError, OutputError
from w2w.export import mosaic_provenance
from w2w.grid import Window
from w2w.metrics import confusion, stratified_area, summary
from w2w.runtime import run_blocks
from w2w.store import CLASS_NODATA, ClassInfo, MosaicStore, SceneStore

log = logging.getLogger("w2w")

SplitChoice = Literal["test", "val", "train", "all"]

#: Names of the files an evaluation writes into its output folder.
REPORT_FILES = ("evaluation.json", "evaluation.md", "confusion_matrix.png")

ESTIMATOR_NOTE = (
    "Areas follow the stratified estimator of Olofsson et al. (2014, Remote Sensing of "
    "Environment 148: 42-57): the map classes are the strata, the mapped pixels of each class "
    "its stratum size, and the reference pixels are treated as a random sample stratified by "
    "map class. Here that holds only approximately: the reference pixels are the labelled "
    "pixels of the evaluated split, which come in spatial clusters (whole chips or label "
    "polygons, not independently placed points), and neighbouring pixels are correlated, so "
    "the intervals are narrower than a probability sample of the same size would give; "
    "and a split that does not represent the state (one half of it, say) biases the "
    "estimates. For official figures, label a probability sample "
    "stratified by map class and evaluate that."
)


class EvaluateConfig(StageConfig):
    """Settings of ``w2w evaluate``."""

    stage_name: ClassVar[str] = "evaluate"

    mosaic: PathStr = Field(description="mosaic store to evaluate")
    scene: PathStr = Field(description="scene store with the reference labels (same grid)")
    bundle: PathStr | None = Field(
        default=None, description="model bundle whose spatial split selects the pixels"
    )
    split: SplitChoice | None = Field(
        default=None,
        description="pixels to score: a split of the bundle (test, val, train) or all "
        "labelled pixels; default: test with a bundle, all without one",
    )
    output: PathStr = Field(description="folder (or s3:// prefix) for the report files")
    engine: Literal["ray", "local"] = "ray"
    allow_incomplete: bool = Field(
        default=False, description="evaluate a mosaic whose prediction did not finish"
    )
    overwrite: bool = False


@dataclass(frozen=True)
class ClassArea:
    """Mapped and estimated area of one class (units: ``EvaluationResult.area_unit``)."""

    name: str
    mapped_pixels: int
    mapped_area: float
    estimated_area: float
    ci95: float
    users_accuracy: float
    producers_accuracy: float


@dataclass(frozen=True)
class EvaluationResult:
    """What ``w2w evaluate`` measured and where it wrote the report."""

    json: str
    markdown: str
    figure: str
    split: str
    class_names: tuple[str, ...]
    matrix: np.ndarray = field(repr=False)
    reference_pixels: int
    overall_accuracy: float
    kappa: float
    mean_iou: float
    per_class: dict[str, dict[str, float]] = field(repr=False)
    area_unit: str
    areas: tuple[ClassArea, ...] = field(repr=False)
    estimated_overall_accuracy: float
    excluded: dict[str, int]
    warnings: tuple[str, ...] = ()


@dataclass
class BlockCounts:
    """Sums over some pixels: what one block task returns and the driver adds up."""

    matrix: np.ndarray  # (K, K) int64, reference x map
    mapped: np.ndarray  # (256,) int64: pixels of each stored map value, whole mosaic
    map_nodata: int = 0  # reference pixels the map left as nodata (255)
    map_unknown: int = 0  # reference pixels whose map value is not in the class table
    label_unknown: int = 0  # labelled pixels (in the split) whose id is not in the table

    @classmethod
    def zeros(cls, n_classes: int) -> BlockCounts:
        """Empty sums for ``n_classes`` classes."""
        return cls(np.zeros((n_classes, n_classes), np.int64), np.zeros(256, np.int64))

    def add(self, other: BlockCounts) -> None:
        """Add another block's sums to these."""
        self.matrix += other.matrix
        self.mapped += other.mapped
        self.map_nodata += other.map_nodata
        self.map_unknown += other.map_unknown
        self.label_unknown += other.label_unknown


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
        split_plan: dict[str, Any] | None = None,
        split: str = "all",
        chip_codes: np.ndarray | None = None,
    ) -> None:
        self.mosaic_url = mosaic_url
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
        return self.count(mosaic.read_class(window), scene.read_label(window), window)

    def count(self, cls: np.ndarray, label: np.ndarray, window: Window) -> BlockCounts:
        """The sums for map classes ``cls`` and labels ``label`` of ``window``."""
        from w2w.split import SplitPlan

        lut = self.lookup()
        k = len(self.class_ids)
        map_idx = lut[cls]
        ref_idx = lut[label]
        scored = np.ones(label.shape, dtype=bool)
        if self.unlabelled is not None:
            scored &= label != self.unlabelled
        if self.split != "all" and self.split_plan is not None:
            plan = SplitPlan.from_dict(self.split_plan)
            scored &= plan.pixel_mask(window, self.split, codes=self.chip_codes)  # type: ignore[arg-type]
        reference = scored & (ref_idx >= 0)
        return BlockCounts(
            matrix=confusion(ref_idx, map_idx, k, mask=reference & (map_idx >= 0)),
            mapped=np.bincount(cls.ravel(), minlength=256).astype(np.int64),
            map_nodata=int((reference & (cls == CLASS_NODATA)).sum()),
            map_unknown=int((reference & (map_idx < 0) & (cls != CLASS_NODATA)).sum()),
            label_unknown=int((scored & (ref_idx < 0)).sum()),
        )


def report_targets(output: str) -> dict[str, str]:
    """Where the report files go: ``json``, ``markdown`` and ``figure``."""
    names = dict(zip(("json", "markdown", "figure"), REPORT_FILES, strict=True))
    return {key: storage.join(output, name) for key, name in names.items()}


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
    if not mosaic.meta.get("complete", False) and not cfg.allow_incomplete:
        done = mosaic.done_blocks()
        raise InputError(
            f"mosaic {cfg.mosaic} is incomplete ({int(done.sum())} of {done.size} blocks "
            "predicted); finish `w2w predict` or pass --allow-incomplete"
        )
    classes = mosaic.classes
    if not classes:
        raise InputError(f"mosaic {cfg.mosaic} has an empty class table; nothing to evaluate")
    split, plan, bundle_hash = _resolve_split(cfg, mosaic, classes, warnings)
    warnings.extend(_scene_class_warnings(info.classes, classes, cfg.scene))

    targets = report_targets(cfg.output)
    existing = [u for u in targets.values() if storage.exists(u)]
    if existing and not cfg.overwrite:
        raise OutputError(
            f"{existing[0]} exists already; pass --overwrite to replace the report or choose "
            "another output folder"
        )

    counter = BlockCounter(
        mosaic.url,
        scene.url,
        [c.id for c in classes],
        info.unlabelled,
        split_plan=plan.to_dict() if plan is not None else None,
        split=split,
        chip_codes=plan.chip_codes() if plan is not None else None,
    )
    totals = BlockCounts.zeros(len(classes))
    for counts in run_blocks(
        counter, mosaic.blocks(), engine=cfg.engine, what="evaluate", progress=progress
    ):
        totals.add(counts)

    report = build_report(cfg, mosaic, classes, totals, split, bundle_hash, warnings)
    for w in report["warnings"]:
        log.warning(w)
    storage.atomic_write_bytes(targets["figure"], confusion_png(totals.matrix, classes))
    storage.atomic_write_bytes(targets["markdown"], markdown_report(report).encode())
    storage.atomic_write_bytes(
        targets["json"], (json.dumps(_json_safe(report), indent=2) + "\n").encode()
    )
    acc = report["accuracy"]
    area = report["area"]
    return EvaluationResult(
        json=targets["json"],
        markdown=targets["markdown"],
        figure=targets["figure"],
        split=split,
        class_names=tuple(c.name for c in classes),
        matrix=totals.matrix.copy(),
        reference_pixels=int(totals.matrix.sum()),
        overall_accuracy=float(acc["overall_accuracy"]),
        kappa=float(acc["kappa"]),
        mean_iou=float(acc["mean_iou"]),
        per_class=acc["per_class"],
        area_unit=area["unit"],
        areas=tuple(
            ClassArea(
                name=name,
                mapped_pixels=a["mapped_pixels"],
                mapped_area=a["mapped"],
                estimated_area=a["estimated"],
                ci95=a["ci95"],
                users_accuracy=a["users_accuracy"],
                producers_accuracy=a["producers_accuracy"],
            )
            for name, a in area["classes"].items()
        ),
        estimated_overall_accuracy=float(area["estimated_overall_accuracy"]),
        excluded=dict(report["excluded"]),
        warnings=tuple(report["warnings"]),
    )


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

    from w2w.bundle import load_bundle

    bundle = load_bundle(cfg.bundle)
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


# -- the report -----------------------------------------------------------------------------


def build_report(
    cfg: EvaluateConfig,
    mosaic: MosaicStore,
    classes: tuple[ClassInfo, ...],
    totals: BlockCounts,
    split: str,
    bundle_hash: str | None,
    warnings: list[str],
) -> dict[str, Any]:
    """The JSON-ready evaluation report."""
    names = [c.name for c in classes]
    warnings = list(warnings)
    matrix = totals.matrix
    accuracy = summary(matrix, names)
    mapped = np.array([totals.mapped[c.id] for c in classes], dtype=np.int64)

    pixel_m2 = mosaic.grid.pixel_area_m2
    unit_area = pixel_m2 / 10_000 if pixel_m2 is not None else 1.0  # ha per pixel
    estimates, est_oa = stratified_area(matrix, mapped, unit_area)
    sampled = matrix.sum(axis=0)  # reference pixels per map class (stratum sample size)
    unsampled = [c.name for c, n, m in zip(classes, sampled, mapped, strict=True) if m and not n]
    if unsampled:
        warnings.append(
            f"map classes without any reference pixel: {', '.join(unsampled)}; their mapped "
            "area cannot be apportioned, so the estimates sum to less than the mapped area"
        )
    if matrix.sum() == 0:
        warnings.append(
            "no reference pixel to score: no labelled pixel lies in the chosen split with a "
            "class of the map"
        )
    excluded = {
        "map_nodata": totals.map_nodata,
        "map_value_not_in_class_table": totals.map_unknown,
        "label_not_in_class_table": totals.label_unknown,
    }
    if totals.map_nodata:
        warnings.append(
            f"{totals.map_nodata:,} reference pixels are nodata in the map (not predicted: "
            "invalid input there); they are not in the confusion matrix"
        )
    if totals.map_unknown:
        warnings.append(
            f"{totals.map_unknown:,} reference pixels hold a map value outside the class table"
        )
    if totals.label_unknown:
        warnings.append(
            f"{totals.label_unknown:,} labelled pixels have a label id outside the mosaic's "
            "class table; they are not scored"
        )

    metric = pixel_m2 is not None
    area_classes: dict[str, Any] = {}
    for c, est, n_map, n_ref in zip(classes, estimates, mapped, sampled, strict=True):
        entry: dict[str, Any] = {
            "mapped_pixels": int(n_map),
            "reference_pixels": int(n_ref),
            "mapped": est.mapped_area,
            "estimated": est.estimated_area,
            "ci95": est.ci95,
            "users_accuracy": est.users_accuracy,
            "producers_accuracy": est.producers_accuracy,
        }
        if metric:
            entry.update(
                mapped_km2=est.mapped_area / 100,
                estimated_km2=est.estimated_area / 100,
                ci95_km2=est.ci95 / 100,
            )
        area_classes[c.name] = entry
    area: dict[str, Any] = {
        "unit": "ha" if metric else "pixels",
        "pixel_area_m2": pixel_m2,
        "note": None
        if metric
        else "the mosaic's CRS is not in metres: areas are counted in pixels",
        "estimator": "stratified by map class (Olofsson et al. 2014)",
        "assumption": ESTIMATOR_NOTE,
        "total_mapped": float(mapped.sum() * unit_area),
        "total_estimated": float(sum(e.estimated_area for e in estimates)),
        "estimated_overall_accuracy": est_oa,
        "classes": area_classes,
    }
    if metric:
        area["total_mapped_km2"] = area["total_mapped"] / 100
        area["total_estimated_km2"] = area["total_estimated"] / 100
    provenance = mosaic_provenance(mosaic)
    return {
        "created": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
        "inputs": {
            "mosaic": cfg.mosaic,
            "scene": cfg.scene,
            "bundle": cfg.bundle,
            "bundle_hash": bundle_hash,
            "mosaic_provenance": provenance,
        },
        "grid": mosaic.grid.describe(),
        "split": split,
        "reference_pixels": int(matrix.sum()),
        "excluded": excluded,
        "accuracy": accuracy,
        "area": area,
        "warnings": warnings,
    }


def markdown_report(report: dict[str, Any]) -> str:
    """A readable Markdown version of the report."""
    acc, area = report["accuracy"], report["area"]
    names = acc["class_names"]
    lines = ["# Accuracy assessment", ""]
    inputs = report["inputs"]
    lines += [
        f"- Mosaic: `{inputs['mosaic']}`",
        f"- Reference labels: `{inputs['scene']}`",
    ]
    if inputs["bundle"]:
        lines.append(f"- Model bundle: `{inputs['bundle']}` ({inputs['bundle_hash']})")
    lines += [
        f"- Grid: {report['grid']}",
        f"- Pixels scored: **{report['split']}** split, {report['reference_pixels']:,} "
        "reference pixels",
        f"- Created: {report['created']}",
        "",
        "## Headline",
        "",
        "| Metric | Value |",
        "|---|---:|",
        f"| Overall accuracy | {_pct(acc['overall_accuracy'])} |",
        f"| Kappa | {_num(acc['kappa'])} |",
        f"| Mean IoU | {_num(acc['mean_iou'])} |",
        f"| Overall accuracy, area-weighted (stratified estimator) | "
        f"{_pct(area['estimated_overall_accuracy'])} |",
        "",
    ]
    ex = report["excluded"]
    lines += [
        "Reference pixels not in the confusion matrix: "
        f"{ex['map_nodata']:,} nodata in the map, "
        f"{ex['map_value_not_in_class_table']:,} with a map value outside the class table; "
        f"labelled pixels with a label outside the class table: "
        f"{ex['label_not_in_class_table']:,}.",
        "",
    ]
    if report["warnings"]:
        lines += ["## Warnings", ""] + [f"- {w}" for w in report["warnings"]] + [""]
    lines += [
        "## Per class",
        "",
        "| Class | Precision (user's) | Recall (producer's) | F1 | IoU | Reference pixels |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in names:
        s = acc["per_class"][name]
        lines.append(
            f"| {name} | {_pct(s['precision'])} | {_pct(s['recall'])} | {_num(s['f1'])} | "
            f"{_num(s['iou'])} | {s['support']:,} |"
        )
    lines += [
        "",
        "## Confusion matrix",
        "",
        "Rows: reference class; columns: map class; pixel counts.",
        "",
        "| Reference \\ Map | " + " | ".join(names) + " | Total |",
        "|---|" + "---:|" * (len(names) + 1),
    ]
    matrix = np.asarray(acc["confusion_matrix"], dtype=np.int64)
    for name, row in zip(names, matrix, strict=True):
        lines.append(f"| **{name}** | " + " | ".join(f"{v:,}" for v in row) + f" | {row.sum():,} |")
    lines.append(
        "| **Total** | "
        + " | ".join(f"{v:,}" for v in matrix.sum(axis=0))
        + f" | {matrix.sum():,} |"
    )
    unit = area["unit"]
    lines += ["", "## Area by class", ""]
    if unit == "ha":
        lines += [
            "| Class | Mapped (ha) | Estimated (ha) | 95% CI (± ha) | Mapped (km²) | "
            "Estimated (km²) | 95% CI (± km²) | User's acc. | Producer's acc. |",
            "|---|" + "---:|" * 8,
        ]
        for name in names:
            a = area["classes"][name]
            lines.append(
                f"| {name} | {_area(a['mapped'])} | {_area(a['estimated'])} | "
                f"{_area(a['ci95'])} | {_area(a['mapped_km2'], 2)} | "
                f"{_area(a['estimated_km2'], 2)} | {_area(a['ci95_km2'], 2)} | "
                f"{_pct(a['users_accuracy'])} | {_pct(a['producers_accuracy'])} |"
            )
        lines.append(
            f"| **Total** | {_area(area['total_mapped'])} | {_area(area['total_estimated'])} "
            f"| | {_area(area['total_mapped_km2'], 2)} | "
            f"{_area(area['total_estimated_km2'], 2)} | | | |"
        )
    else:
        lines += [
            f"*{area['note']}.*",
            "",
            "| Class | Mapped (px) | Estimated (px) | 95% CI (± px) | User's acc. | "
            "Producer's acc. |",
            "|---|" + "---:|" * 5,
        ]
        for name in names:
            a = area["classes"][name]
            lines.append(
                f"| {name} | {_area(a['mapped'])} | {_area(a['estimated'])} | "
                f"{_area(a['ci95'])} | {_pct(a['users_accuracy'])} | "
                f"{_pct(a['producers_accuracy'])} |"
            )
    lines += ["", f"**How the areas are estimated.** {area['assumption']}", ""]
    return "\n".join(lines)


def confusion_png(matrix: np.ndarray, classes: tuple[ClassInfo, ...]) -> bytes:
    """The confusion matrix as a PNG: cells shaded by the share of their reference class
    (row-normalised, i.e. recall on the diagonal), annotated with counts and shares.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    m = np.asarray(matrix, dtype=np.int64)
    k = m.shape[0]
    rows = m.sum(axis=1, keepdims=True)
    share = np.divide(m, rows, out=np.zeros(m.shape, dtype=np.float64), where=rows > 0)
    names = [c.name for c in classes]
    edge = max(4.0, 1.0 + 0.9 * k)
    fig = Figure(figsize=(edge + 1.5, edge), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the reference class")
    ax.set_xticks(range(k), labels=names, rotation=45, ha="right")
    ax.set_yticks(range(k), labels=names)
    ax.set_xlabel("map class")
    ax.set_ylabel("reference class")
    ax.set_title(f"Confusion matrix ({int(m.sum()):,} reference pixels)")
    fontsize = max(5, min(9, 60 // max(k, 1)))
    for i in range(k):
        for j in range(k):
            colour = "white" if share[i, j] > 0.5 else "black"
            ax.text(
                j,
                i,
                f"{m[i, j]:,}\n{share[i, j]:.0%}",
                ha="center",
                va="center",
                color=colour,
                fontsize=fontsize,
            )
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _json_safe(value: Any) -> Any:
    """NaN and infinities become null (JSON has no NaN); numpy scalars become Python ones."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _pct(v: float | None) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{100 * v:.1f}%"


def _num(v: float | None) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.3f}"


def _area(v: float | None, digits: int = 1) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:,.{digits}f}"
