"""The whole job: ingest -> (pretrain ->) train -> predict -> sieve -> export -> evaluate.

A pipeline config is one YAML file with a ``workdir`` (local folder or ``s3://`` prefix) and
one section per stage, each holding that stage's own settings. Paths that connect the stages
(the scene store, the run folder, the bundle, the mosaics, the COG, the reports) default to
names under ``workdir``, so a minimal config names only the inputs. Every stage config is
validated before the first stage starts: a typo in the last stage fails in a second, not
after hours of training.

``w2w demo`` runs the same pipeline on a synthetic state (:func:`demo_config`), and the
cluster entry point ``jobs/pipeline.py`` runs it under ``ray job submit``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from w2w.core import guard, locks, storage
from w2w.core.config import PathStr, StageConfig, load_yaml
from w2w.core.errors import ConfigError
from w2w.stages import STAGE_NAMES, stage_named

log = logging.getLogger("w2w")

StageName = Literal[
    "synth", "ingest", "pretrain", "train", "predict", "sieve", "export", "evaluate"
]


class PipelineConfig(StageConfig):
    """A whole run: where outputs go, which stages run, and each stage's settings."""

    stage_name: ClassVar[str] = "pipeline"

    workdir: PathStr = Field(description="folder or s3:// prefix for every output")
    stages: list[StageName] | None = Field(
        default=None, description="stages to run, in order; default: every section given"
    )
    synth: dict[str, Any] | None = None
    ingest: dict[str, Any] | None = None
    pretrain: dict[str, Any] | None = None
    train: dict[str, Any] | None = None
    predict: dict[str, Any] | None = None
    sieve: dict[str, Any] | None = None
    export: dict[str, Any] | None = None
    evaluate: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _stages_have_sections(self) -> PipelineConfig:
        for stage in self.stages or []:
            if getattr(self, stage) is None and stage not in ("pretrain", "sieve", "evaluate"):
                raise ValueError(f"stage '{stage}' is listed but has no '{stage}:' section")
        return self

    @property
    def stage_list(self) -> list[str]:
        """The stages that will run, in pipeline order."""
        if self.stages is not None:
            return [s for s in STAGE_NAMES if s in self.stages]
        return [s for s in STAGE_NAMES if getattr(self, s) is not None]

    @classmethod
    def load(cls, path: str) -> PipelineConfig:
        """Load a pipeline YAML file."""
        return cls.from_dict(load_yaml(path), source=str(path))

    def path(self, name: str) -> str:
        """A default output location under ``workdir``."""
        return storage.join(self.workdir, name)


@dataclass
class PipelineResult:
    """Where every output went, the headline metrics, and how long each stage took."""

    outputs: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def _linked_paths(cfg: PipelineConfig, linked: set[str]) -> dict[str, dict[str, Any]]:
    """Default paths that link the stages, under ``workdir``."""
    scene = cfg.path("scene.zarr")
    bundle = cfg.path("model.safetensors")
    mosaic = cfg.path("mosaic.zarr")
    sieved = cfg.path("mosaic-mmu.zarr")
    final_mosaic = sieved if "sieve" in linked else mosaic
    defaults: dict[str, dict[str, Any]] = {
        "synth": {"output": cfg.path("synthetic"), "format": "geotiff"},
        "ingest": {"output": scene},
        "pretrain": {
            "scene": scene,
            "storage_path": cfg.path("runs"),
            "output": cfg.path("encoder.safetensors"),
            # The encoder pretrained is the one training builds.
            "model": _encoder_model((cfg.train or {}).get("model")),
        },
        "train": {"scene": scene, "storage_path": cfg.path("runs"), "bundle": bundle},
        "predict": {"scene": scene, "bundle": bundle, "output": mosaic},
        "sieve": {"input": mosaic, "output": sieved, "min_area_ha": 1.0},
        "export": {"input": final_mosaic, "output": cfg.path("landcover.tif")},
        "evaluate": {
            "mosaic": final_mosaic,
            "scene": scene,
            "bundle": bundle,
            "output": cfg.path("evaluation"),
        },
    }
    if "synth" in linked:
        defaults["ingest"].update(_synthetic_inputs(cfg, str(defaults["synth"]["output"])))
    return defaults


def _encoder_model(model: dict[str, Any] | None) -> dict[str, Any]:
    """The train section's model settings without the weights it starts from."""
    return {k: v for k, v in (model or {}).items() if k not in ("weights", "encoder_weights")}


def _link_encoder(merged: dict[str, Any], encoder: str) -> dict[str, Any]:
    """Train starts from the pretrained encoder unless its section names other weights."""
    model = dict(merged.get("model") or {})
    if not model.get("encoder_weights") and not model.get("weights"):
        model["encoder_weights"] = encoder
    return {**merged, "model": model}


def _synthetic_inputs(cfg: PipelineConfig, default_output: str) -> dict[str, Any]:
    """Ingest's inputs from the synth stage: its tiles, boundary and vector labels (with
    ``tiles: true``), else its GeoTIFFs on the state's grid."""
    from w2w.ingest.synth import class_names

    synth = cfg.synth or {}
    folder = storage.normalize(str(synth.get("output", default_output)))
    given = cfg.ingest or {}
    if synth.get("tiles") and "images" not in given:
        return {
            "tiles": [storage.join(folder, "tiles", "*.tif")],
            "aoi": storage.join(folder, "boundary.gpkg"),
            "label": storage.join(folder, "labels.gpkg"),
            "label_field": "class",
            "classes": class_names(),
        }
    return {
        "images": [storage.join(folder, "image.tif")],
        "label": storage.join(folder, "labels.tif"),
        "classes": class_names(),
    }


def stage_configs(cfg: PipelineConfig) -> dict[str, StageConfig]:
    """Build and validate every stage's config, filling in the paths that link the stages."""
    stages = cfg.stage_list
    # Paths link every stage the file configures, not only those run now: a job that runs
    # only `export` still exports the sieved mosaic when the file has a `sieve:` section.
    linked = set(stages) | {s for s in STAGE_NAMES if getattr(cfg, s) is not None}
    defaults = _linked_paths(cfg, linked)
    out: dict[str, StageConfig] = {}
    for name in stages:
        section = dict(getattr(cfg, name) or {})
        merged = {**defaults[name], **section}
        if name == "train" and "pretrain" in linked:
            pretrain = cfg.pretrain or {}
            merged = _link_encoder(
                merged, str(pretrain.get("output", defaults["pretrain"]["output"]))
            )
        for given, others in stage_named(name).replaces.items():
            if given in section:
                for other in others:
                    if other not in section:
                        merged.pop(other, None)
        out[name] = stage_named(name).config.from_dict(merged, source=f"pipeline [{name}]")
    return out


def check_pipeline(cfg: PipelineConfig) -> dict[str, StageConfig]:
    """Every stage's config, validated, and every stage's outputs checked by the guard (what
    exists, what may be replaced, where it goes) -- what ``run_pipeline`` does before its
    first stage, and all that ``w2w pipeline --check`` does."""
    configs = stage_configs(cfg)
    if not configs:
        raise ConfigError("the pipeline has no stages; add sections such as 'ingest:' and 'train:'")
    for stage_cfg in configs.values():  # every output, before the first stage runs
        guard.check_outputs(stage_cfg, settle=False)
    return configs


def run_pipeline(cfg: PipelineConfig, *, progress: bool = True) -> PipelineResult:
    """Run the configured stages in order; every config is checked before the first runs."""
    configs = check_pipeline(cfg)
    result = PipelineResult()
    with contextlib.ExitStack() as held:
        # Every stage's outputs locked before the first stage runs: a later stage's output
        # that another command is writing is refused now, not after hours of earlier stages.
        for stage_cfg in configs.values():
            held.enter_context(locks.writing(stage_cfg))
        for name, stage_cfg in configs.items():
            log.info("stage %s", name)
            t0 = time.time()
            summary = stage_named(name).run(stage_cfg, progress=progress)
            result.outputs.update(summary.outputs)
            result.metrics.update(summary.metrics)
            result.seconds[name] = round(time.time() - t0, 1)
    return result


def demo_config(
    workdir: str, *, size: int = 768, epochs: int = 15, seed: int = 0, pretrain_epochs: int = 0
) -> PipelineConfig:
    """The embedded default: a synthetic state through every stage, sized for 2 CPU cores;
    with ``pretrain_epochs``, self-supervised pretraining of the encoder before training."""
    return PipelineConfig.from_dict(
        {
            "workdir": workdir,
            # The state as it arrives: overlapping tiles in UTM 12N and 13N, a boundary, and
            # field labels as polygons and points; mapped on Mexico's national grid.
            "synth": {
                "height": size,
                "width": size,
                "seed": seed,
                "tiles": True,
                "overwrite": True,
            },
            "ingest": {
                "crs": "EPSG:6372",
                "resolution": 10.0,
                "chunk": 256,
                "block": 512,
                "overwrite": True,
            },
            # With pretrain_epochs, the encoder first learns the state's own imagery, no
            # labels (not by default: with every pixel labelled, as here, it does not help).
            "pretrain": None
            if not pretrain_epochs
            else {
                "run_name": "demo-pretrain",
                "overwrite": True,
                "chip_size": 64,
                "epochs": pretrain_epochs,
                "batch_size": 16,
                "optim": {"lr": 0.002, "warmup_epochs": 0},
                "workers": {"num_workers": 2},
                "seed": seed,
            },
            "train": {
                "run_name": "demo",
                "overwrite": True,
                "model": {
                    "arch": "Unet",
                    "encoder": "tu-resnet10t",
                    "options": {"encoder_depth": 3, "decoder_channels": [64, 32, 16]},
                },
                "chips": {"size": 64, "stride": 32},
                "split": {"block_chips": 2, "seed": seed},  # regions of 128 px
                "epochs": epochs,
                "batch_size": 4,
                "optim": {"lr": 0.003},
                "workers": {"num_workers": 2},
                "patience": 8,
                "seed": seed,
            },
            "predict": {"block": 256, "batch_size": 16, "overwrite": True},
            "sieve": {"min_area_ha": 0.05, "overwrite": True},
            # The map as polygons too (GeoPackage), merged across block borders.
            "export": {"overwrite": True, "vector": f"{workdir.rstrip('/')}/landcover.gpkg"},
            "evaluate": {"overwrite": True},
        }
    )
