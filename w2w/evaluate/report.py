"""The evaluation report: accuracy, excluded pixels, class areas with CIs -- built once.

:func:`build_result` turns the summed block counts into an :class:`EvaluationResult`, the
object ``evaluate`` returns; its :meth:`~EvaluationResult.to_json` is ``evaluation.json``
and :func:`markdown_report` renders that document as ``evaluation.md``.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from w2w.core.classes import ClassInfo
from w2w.core.grid import Grid
from w2w.core.metrics import stratified_area, summary

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
    reference_pixels: int = 0


@dataclass(frozen=True)
class Excluded:
    """Pixels left out of the confusion matrix, counted rather than dropped silently."""

    map_nodata: int = 0  # reference pixels the map left as nodata (255)
    map_unknown: int = 0  # reference pixels whose map value is not in the class table
    label_unknown: int = 0  # labelled pixels (in the split) whose id is not in the table

    def as_dict(self) -> dict[str, int]:
        """The JSON form (and ``EvaluationResult.excluded``)."""
        return {
            "map_nodata": self.map_nodata,
            "map_value_not_in_class_table": self.map_unknown,
            "label_not_in_class_table": self.label_unknown,
        }


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
    #: The rest of the report: when, from what, on which grid, and the full summary.
    created: str = ""
    inputs: dict[str, Any] = field(default_factory=dict, repr=False)
    grid: str = ""
    accuracy: dict[str, Any] = field(default_factory=dict, repr=False)
    pixel_area_m2: float | None = None
    #: The per-pixel baseline on the same pixels (:mod:`w2w.evaluate.baseline`), or why not.
    baseline: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict[str, Any]:
        """The JSON-ready report (``evaluation.json``)."""
        metric = self.pixel_area_m2 is not None
        classes: dict[str, Any] = {}
        for a in self.areas:
            entry: dict[str, Any] = {
                "mapped_pixels": a.mapped_pixels,
                "reference_pixels": a.reference_pixels,
                "mapped": a.mapped_area,
                "estimated": a.estimated_area,
                "ci95": a.ci95,
                "users_accuracy": a.users_accuracy,
                "producers_accuracy": a.producers_accuracy,
            }
            if metric:
                entry.update(
                    mapped_km2=a.mapped_area / 100,
                    estimated_km2=a.estimated_area / 100,
                    ci95_km2=a.ci95 / 100,
                )
            classes[a.name] = entry
        area: dict[str, Any] = {
            "unit": self.area_unit,
            "pixel_area_m2": self.pixel_area_m2,
            "note": None
            if metric
            else "the mosaic's CRS is not in metres: areas are counted in pixels",
            "estimator": "stratified by map class (Olofsson et al. 2014)",
            "assumption": ESTIMATOR_NOTE,
            "total_mapped": float(sum(a.mapped_area for a in self.areas)),
            "total_estimated": float(sum(a.estimated_area for a in self.areas)),
            "estimated_overall_accuracy": self.estimated_overall_accuracy,
            "classes": classes,
        }
        if metric:
            area["total_mapped_km2"] = area["total_mapped"] / 100
            area["total_estimated_km2"] = area["total_estimated"] / 100
        return json_safe(
            {
                "created": self.created,
                "inputs": self.inputs,
                "grid": self.grid,
                "split": self.split,
                "reference_pixels": self.reference_pixels,
                "excluded": self.excluded,
                "accuracy": self.accuracy,
                "baseline": self.baseline,
                "area": area,
                "warnings": list(self.warnings),
            }
        )


def build_result(
    matrix: np.ndarray,
    mapped_all: np.ndarray,
    excluded: Excluded,
    classes: tuple[ClassInfo, ...],
    grid: Grid,
    *,
    split: str,
    inputs: dict[str, Any],
    files: dict[str, str],
    warnings: list[str],
    baseline: dict[str, Any] | None = None,
) -> EvaluationResult:
    """The evaluation from the summed counts: ``matrix`` (reference x map), ``mapped_all``
    (pixels of each stored map value over the whole mosaic) and the excluded pixels."""
    names = [c.name for c in classes]
    accuracy = summary(matrix, names)
    mapped = np.array([mapped_all[c.id] for c in classes], dtype=np.int64)
    pixel_m2 = grid.pixel_area_m2
    unit_area = pixel_m2 / 10_000 if pixel_m2 is not None else 1.0  # ha per pixel
    estimates, est_oa = stratified_area(matrix, mapped, unit_area)
    sampled = matrix.sum(axis=0)  # reference pixels per map class (stratum sample size)
    warnings = [*warnings, *_warnings(classes, matrix, mapped, sampled, excluded)]
    areas = tuple(
        ClassArea(
            name=c.name,
            mapped_pixels=int(n_map),
            mapped_area=est.mapped_area,
            estimated_area=est.estimated_area,
            ci95=est.ci95,
            users_accuracy=est.users_accuracy,
            producers_accuracy=est.producers_accuracy,
            reference_pixels=int(n_ref),
        )
        for c, est, n_map, n_ref in zip(classes, estimates, mapped, sampled, strict=True)
    )
    return EvaluationResult(
        json=files["json"],
        markdown=files["markdown"],
        figure=files["figure"],
        split=split,
        class_names=tuple(names),
        matrix=matrix.copy(),
        reference_pixels=int(matrix.sum()),
        overall_accuracy=float(accuracy["overall_accuracy"]),
        kappa=float(accuracy["kappa"]),
        mean_iou=float(accuracy["mean_iou"]),
        per_class=accuracy["per_class"],
        area_unit="ha" if pixel_m2 is not None else "pixels",
        areas=areas,
        estimated_overall_accuracy=float(est_oa),
        excluded=excluded.as_dict(),
        warnings=tuple(warnings),
        created=dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
        inputs=inputs,
        grid=grid.describe(),
        accuracy=accuracy,
        pixel_area_m2=pixel_m2,
        baseline=baseline or {},
    )


def _warnings(
    classes: tuple[ClassInfo, ...],
    matrix: np.ndarray,
    mapped: np.ndarray,
    sampled: np.ndarray,
    excluded: Excluded,
) -> list[str]:
    """What a reader of the report must know about the numbers."""
    out = []
    unsampled = [c.name for c, n, m in zip(classes, sampled, mapped, strict=True) if m and not n]
    if unsampled:
        out.append(
            f"map classes without any reference pixel: {', '.join(unsampled)}; their mapped "
            "area cannot be apportioned, so the estimates sum to less than the mapped area"
        )
    if matrix.sum() == 0:
        out.append(
            "no reference pixel to score: no labelled pixel lies in the chosen split with a "
            "class of the map"
        )
    if excluded.map_nodata:
        out.append(
            f"{excluded.map_nodata:,} reference pixels are nodata in the map (not predicted: "
            "invalid input there); they are not in the confusion matrix"
        )
    if excluded.map_unknown:
        out.append(
            f"{excluded.map_unknown:,} reference pixels hold a map value outside the class table"
        )
    if excluded.label_unknown:
        out.append(
            f"{excluded.label_unknown:,} labelled pixels have a label id outside the mosaic's "
            "class table; they are not scored"
        )
    return out


def markdown_report(report: dict[str, Any]) -> str:
    """A readable Markdown version of the report (the JSON document of
    :meth:`EvaluationResult.to_json`)."""
    lines = [
        *_md_headline(report),
        *_md_baseline(report.get("baseline") or {}, report["accuracy"]),
        *_md_per_class(report["accuracy"]),
        *_md_confusion(report["accuracy"]),
        *_md_areas(report["area"], report["accuracy"]["class_names"]),
    ]
    return "\n".join(lines)


def _md_headline(report: dict[str, Any]) -> list[str]:
    acc, area, inputs = report["accuracy"], report["area"], report["inputs"]
    lines = [
        "# Accuracy assessment",
        "",
        f"- Mosaic: `{inputs['mosaic']}`",
        f"- Reference labels: `{inputs['scene']}`",
    ]
    if inputs["bundle"]:
        lines.append(f"- Model bundle: `{inputs['bundle']}` ({inputs['bundle_hash']})")
    ex = report["excluded"]
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
        "Reference pixels not in the confusion matrix: "
        f"{ex['map_nodata']:,} nodata in the map, "
        f"{ex['map_value_not_in_class_table']:,} with a map value outside the class table; "
        f"labelled pixels with a label outside the class table: "
        f"{ex['label_not_in_class_table']:,}.",
        "",
    ]
    if report["warnings"]:
        lines += ["## Warnings", ""] + [f"- {w}" for w in report["warnings"]] + [""]
    return lines


def _md_baseline(base: dict[str, Any], acc: dict[str, Any]) -> list[str]:
    """The map beside the per-pixel baseline on the same pixels."""
    if not base:
        return []
    lines = ["## Against a per-pixel baseline", ""]
    if "accuracy" not in base:
        return [*lines, f"No baseline: {base.get('skipped')}.", ""]
    b, test = base["accuracy"], base["mcnemar"]
    verdict = {
        "network": "the map is better than the baseline",
        "baseline": "**the baseline is better than the map**",
        "neither": "no significant difference",
    }[test["better"]]
    lines += [
        f"{base['model']} on {', '.join(base['features'])}; fitted on "
        f"{base['sampled_pixels']:,} of the {base['training_pixels']:,} labelled pixels of "
        "the training split, scored on the same pixels as the map.",
        "",
        "| Metric | Map | Baseline |",
        "|---|---:|---:|",
        f"| Overall accuracy | {_pct(acc['overall_accuracy'])} | {_pct(b['overall_accuracy'])} |",
        f"| Kappa | {_num(acc['kappa'])} | {_num(b['kappa'])} |",
        f"| Mean IoU | {_num(acc['mean_iou'])} | {_num(b['mean_iou'])} |",
    ]
    lines += [
        f"| IoU {name} | {_num(acc['per_class'][name]['iou'])} | "
        f"{_num(b['per_class'][name]['iou'])} |"
        for name in acc["class_names"]
    ]
    lines += [
        "",
        f"McNemar's test ({test['method']}): {test['network_only_correct']:,} pixels only the "
        f"map got right, {test['baseline_only_correct']:,} only the baseline; "
        f"p = {test['p_value']:.3g}: {verdict}. {base['note']}",
        "",
    ]
    return lines


def _md_per_class(acc: dict[str, Any]) -> list[str]:
    lines = [
        "## Per class",
        "",
        "| Class | Precision (user's) | Recall (producer's) | F1 | IoU | Reference pixels |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in acc["class_names"]:
        s = acc["per_class"][name]
        lines.append(
            f"| {name} | {_pct(s['precision'])} | {_pct(s['recall'])} | {_num(s['f1'])} | "
            f"{_num(s['iou'])} | {s['support']:,} |"
        )
    return lines


def _md_confusion(acc: dict[str, Any]) -> list[str]:
    names = acc["class_names"]
    lines = [
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
    return lines


def _md_areas(area: dict[str, Any], names: list[str]) -> list[str]:
    lines = ["", "## Area by class", ""]
    if area["unit"] == "ha":
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
    return lines


def json_safe(value: Any) -> Any:
    """NaN and infinities become null (JSON has no NaN); numpy scalars become Python ones."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
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
