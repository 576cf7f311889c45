"""The stage registry: every stage's name, config class, run function and summary, once.

The pipeline (:mod:`w2w.pipeline`), the command line (:mod:`w2w.cli`) and the cluster jobs
(:mod:`w2w.jobs`) all read :data:`STAGES`: a new stage, or a new setting of one, appears in
all three from its config class alone. Classes and functions are named by import path and
loaded on first use, so listing the stages imports neither torch nor Ray.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from w2w.core import crashpoints, guard, locks, pins
from w2w.core.config import StageConfig


@dataclass(frozen=True)
class StageSummary:
    """What a stage produced, for people: ``outputs`` (what, where) and ``metrics`` for the
    pipeline's summary, ``lines`` for the stage's own command."""

    outputs: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    lines: tuple[str, ...] = ()


@dataclass(frozen=True)
class Stage:
    """One stage of w2w: how to configure it, run it and describe what it did."""

    name: str
    #: One line for ``--help``.
    help: str
    #: ``"module:Class"`` of the stage's config and ``"module:function"`` that runs it
    #: (called as ``run(cfg, progress=...)``).
    config_path: str
    run_path: str
    summarize: Callable[[Any], StageSummary]
    #: Config fields taken as positional command-line arguments, in order.
    arguments: tuple[str, ...] = ()
    #: Short flags: field -> ``-x``.
    short: dict[str, str] = field(default_factory=dict)
    #: Extra option names for (nested) fields: ``chip_size`` -> ``chips.size``.
    aliases: dict[str, str] = field(default_factory=dict)
    #: A field given on the command line drops these fields from a config file (two ways to
    #: say one thing, like a minimum mapping unit in pixels or in hectares).
    replaces: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def config(self) -> type[StageConfig]:
        """The stage's config class."""
        cls = _load(self.config_path)
        if not (isinstance(cls, type) and issubclass(cls, StageConfig)):
            raise TypeError(f"{self.config_path} is not a StageConfig")
        return cls

    def execute(self, cfg: StageConfig, *, progress: bool = True) -> Any:
        """Run the stage through the rules every stage passes -- its outputs locked against
        other writers (:mod:`w2w.core.locks`), the output guard (:mod:`w2w.core.guard`), its
        inputs pinned while it reads them (:mod:`w2w.core.pins`)
        -- and return its own report."""
        if not isinstance(cfg, self.config):
            raise TypeError(f"the {self.name} stage takes a {self.config.__name__}")
        with locks.writing(cfg):
            guard.check(cfg)
            crashpoints.arm()
            with pins.pinned(cfg):
                return _load(self.run_path)(cfg, progress=progress)

    def run(self, cfg: StageConfig, *, progress: bool = True) -> StageSummary:
        """Run the stage (:meth:`execute`) and summarise what it did."""
        return self.summarize(self.execute(cfg, progress=progress))


def _load(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


# -- summaries --------------------------------------------------------------------------------


def _synth(r: Any) -> StageSummary:
    if r.store:
        return StageSummary(
            {"synthetic scene store": r.store},
            lines=(f"scene store: {r.store}", f"grid: {r.grid.describe()}"),
        )
    outputs = {"synthetic imagery": r.images[0], "synthetic labels": str(r.label)}
    lines = [f"image: {p}" for p in r.images] + [f"labels: {r.label}"]
    return StageSummary(outputs, lines=(*lines, f"grid: {r.grid.describe()}"))


def _ingest(r: Any) -> StageSummary:
    lines = [
        f"scene store: {r.output}",
        f"grid: {r.grid.describe()}",
        f"bands: {', '.join(r.band_names)}",
        f"valid pixels: {r.valid_pixels:,}",
    ]
    if r.class_histogram:
        hist = ", ".join(f"{k}: {v:,}" for k, v in r.class_histogram.items())
        lines.append(f"labelled pixels per class: {hist}")
    return StageSummary({"scene store": r.output}, lines=tuple(lines))


def _pretrain(r: Any) -> StageSummary:
    lines = [
        f"encoder: {r.output}",
        f"run directory: {r.run_dir}",
        f"chips: {r.chips['chips']:,}, epochs run: {r.epochs_run}",
        f"loss: {r.first_loss:.3f} in the first epoch, {r.last_loss:.3f} in the last",
    ]
    if len(r.starts) > 1:
        lines.append(f"resumed at epoch(s): {', '.join(str(s) for s in r.starts[1:])}")
    return StageSummary(
        {"pretrained encoder": r.output, "pretraining run": r.run_dir},
        {"pretrain_loss": r.last_loss},
        tuple(lines),
    )


def _train(r: Any) -> StageSummary:
    m = r.metrics
    lines = [
        f"model bundle: {r.bundle}",
        f"run directory: {r.run_dir}",
        f"epochs run: {r.epochs_run}, best epoch: {r.best_epoch}",
    ]
    if r.fitted:
        lines.append("fitted to the scene: " + ", ".join(f"{k} {v}" for k, v in r.fitted.items()))
    if len(r.starts) > 1:
        lines.append(f"resumed at epoch(s): {', '.join(str(s) for s in r.starts[1:])}")
    if m.get("val_pixels"):
        lines.append(
            f"validation: OA {m['val_oa']:.3f}, mIoU {m['val_miou']:.3f}, "
            f"kappa {m['val_kappa']:.3f}"
        )
    return StageSummary(
        {"model bundle": r.bundle, "training run": r.run_dir},
        {"val_miou": m.get("val_miou"), "val_oa": m.get("val_oa"), "epochs": r.epochs_run},
        tuple(lines),
    )


def _predict(r: Any) -> StageSummary:
    return StageSummary(
        {"mosaic": r.output},
        {"predict_mpx_per_s": r.pixels_per_second / 1e6},
        (
            f"mosaic: {r.output}",
            f"blocks: {r.blocks_written} written, {r.blocks_done_before} already done "
            f"(skipped), {r.blocks_total} in all",
            f"throughput: {r.pixels_per_second / 1e6:.3f} Mpx/s over {r.seconds:.1f} s"
            + (
                f"; first block written after {r.first_block_seconds:.1f} s (start-up)"
                if r.first_block_seconds is not None
                else ""
            ),
            f"chips: {r.chips_forwarded:,} through the model, {r.chips_skipped:,} skipped (no "
            f"valid pixel); {r.blocks_empty} blocks outside the state never read",
        ),
    )


def _sieve(r: Any) -> StageSummary:
    return StageSummary(
        {"sieved mosaic": r.output},
        {"sieved_pixels": r.changed_pixels},
        (
            f"mosaic store: {r.output}",
            f"minimum mapping unit: {r.min_pixels:,} px, {r.connectivity}-connected",
            f"pixels changed: {r.changed_pixels:,}",
        ),
    )


def _export(r: Any) -> StageSummary:
    outputs = {"COG": r.cog}
    lines = [f"COG: {r.cog} ({r.size_bytes / 2**20:,.1f} MiB)"]
    if r.confidence:
        outputs["confidence COG"] = r.confidence
        lines.append(f"confidence: {r.confidence}")
    outputs.update({"STAC item": r.stac, "quicklook": r.quicklook})
    if r.vector:
        outputs["vector"] = r.vector
    if r.model:
        outputs["model STAC item"] = r.model
    levels = ", ".join(str(f) for f in r.overviews) or "none (fits in one tile)"
    lines += [
        f"STAC item: {r.stac}",
        *([f"model STAC item: {r.model}"] if r.model else []),
        f"quicklook: {r.quicklook}",
        f"QGIS style: {r.style}",
        *([f"vector: {r.vector} ({r.vector_polygons:,} polygons)"] if r.vector else []),
        f"grid: {r.grid.describe()}",
        f"overviews: {levels}",
    ]
    return StageSummary(outputs, lines=tuple(lines))


def _evaluate(r: Any) -> StageSummary:
    lines = [
        f"report: {r.markdown}",
        f"metrics: {r.json}",
        f"confusion matrix: {r.figure}",
        f"split: {r.split}, reference pixels: {r.reference_pixels:,}",
        f"overall accuracy: {r.overall_accuracy:.4f}, kappa: {r.kappa:.4f}, "
        f"mean IoU: {r.mean_iou:.4f}",
    ]
    if r.excluded["map_nodata"]:
        lines.append(f"reference pixels left as nodata in the map: {r.excluded['map_nodata']:,}")
    base = r.baseline or {}
    if "accuracy" in base:
        test = base["mcnemar"]
        lines.append(
            f"per-pixel baseline, same pixels: overall accuracy "
            f"{base['accuracy']['overall_accuracy']:.4f}, mean IoU "
            f"{base['accuracy']['mean_iou']:.4f}; McNemar p = {test['p_value']:.3g}, better: "
            f"{test['better']}"
        )
    elif base.get("skipped"):
        lines.append(f"per-pixel baseline: none ({base['skipped']})")
    unit = r.area_unit
    lines += [
        f"  {a.name}: mapped {a.mapped_area:,.1f} {unit}, estimated "
        f"{a.estimated_area:,.1f} ± {a.ci95:,.1f} {unit} (95% CI)"
        for a in r.areas
    ]
    metrics = {
        f"{r.split}_oa": r.overall_accuracy,
        f"{r.split}_kappa": r.kappa,
        f"{r.split}_miou": r.mean_iou,
    }
    if "accuracy" in base:
        metrics[f"{r.split}_baseline_oa"] = base["accuracy"]["overall_accuracy"]
        metrics[f"{r.split}_baseline_miou"] = base["accuracy"]["mean_iou"]
    return StageSummary({"evaluation report": r.markdown}, metrics, tuple(lines))


# -- the registry -------------------------------------------------------------------------------

STAGES: tuple[Stage, ...] = (
    Stage(
        "synth",
        "Generate a synthetic state: imagery with land-cover labels, as GeoTIFFs or a store.",
        "w2w.ingest.synth:SynthConfig",
        "w2w.ingest.synth:synthesize",
        _synth,
        arguments=("output",),
    ),
    Stage(
        "ingest",
        "Ingest GeoTIFF image(s) and optional labels into a chunked Zarr scene store.",
        "w2w.ingest.config:IngestConfig",
        "w2w.ingest.run:ingest",
        _ingest,
        arguments=("images",),
        short={"output": "-o"},
    ),
    Stage(
        "pretrain",
        "Pretrain a model's encoder on a scene's own imagery, no labels (self-supervised).",
        "w2w.train.pretrain.config:PretrainConfig",
        "w2w.train.pretrain.run:pretrain",
        _pretrain,
        arguments=("scene",),
        short={"output": "-o"},
        aliases={
            "arch": "model.arch",
            "encoder": "model.encoder",
            "lr": "optim.lr",
            "workers": "workers.num_workers",
            "gpu": "workers.use_gpu",
        },
    ),
    Stage(
        "train",
        "Train a segmentation model on a scene store with Ray Train; writes a model bundle.",
        "w2w.train.config:TrainConfig",
        "w2w.train.run:train",
        _train,
        arguments=("scene",),
        short={"bundle": "-m"},
        aliases={
            "arch": "model.arch",
            "encoder": "model.encoder",
            "encoder_weights": "model.encoder_weights",
            "encoder_weights_file": "model.encoder_weights_file",
            "chip_size": "chips.size",
            "lr": "optim.lr",
            "workers": "workers.num_workers",
            "gpu": "workers.use_gpu",
        },
    ),
    Stage(
        "predict",
        "Predict every pixel of a scene into a Zarr mosaic (resumes an unfinished run).",
        "w2w.predict.config:PredictConfig",
        "w2w.predict.run:predict",
        _predict,
        arguments=("scene",),
        short={"bundle": "-m", "output": "-o"},
        aliases={"gpu": "use_gpu"},
    ),
    Stage(
        "sieve",
        "Apply a minimum mapping unit: merge small patches into their largest neighbour.",
        "w2w.sieve.config:SieveConfig",
        "w2w.sieve.run:sieve",
        _sieve,
        arguments=("input",),
        short={"output": "-o"},
        replaces={"min_pixels": ("min_area_ha",), "min_area_ha": ("min_pixels",)},
    ),
    Stage(
        "export",
        "Export a mosaic as a Cloud-Optimized GeoTIFF with a STAC Item and a quicklook.",
        "w2w.export.config:ExportConfig",
        "w2w.export.run:export",
        _export,
        arguments=("input",),
        short={"output": "-o"},
    ),
    Stage(
        "evaluate",
        "Score a mosaic against reference labels and estimate class areas with 95% CIs.",
        "w2w.evaluate.config:EvaluateConfig",
        "w2w.evaluate.run:evaluate",
        _evaluate,
        arguments=("mosaic",),
        short={"bundle": "-m", "output": "-o"},
    ),
)

#: Stage names in pipeline order.
STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)


def _bundle_export(r: Any) -> StageSummary:
    return StageSummary(
        {"served model": r.model, "its metadata": r.metadata},
        lines=(f"model ({r.format}): {r.model}", f"metadata: {r.metadata}"),
    )


#: Commands that write outputs but are not steps of the pipeline: they pass through the same
#: rules (:meth:`Stage.execute`), without a pipeline section.
TOOLS: tuple[Stage, ...] = (
    Stage(
        "bundle-export",
        "Write a bundle's model for serving without w2w (torch.export, TorchScript or ONNX).",
        "w2w.model.serving:BundleExportConfig",
        "w2w.model.serving:run",
        _bundle_export,
        arguments=("bundle",),
        short={"output": "-o"},
    ),
)


def stage_named(name: str) -> Stage:
    """The stage called ``name``."""
    for s in (*STAGES, *TOOLS):
        if s.name == name:
            return s
    raise KeyError(f"no stage '{name}'; stages: {', '.join(STAGE_NAMES)}")
