"""The settings of ``w2w pretrain``: self-supervised pretraining of an encoder on a scene.

Shares its model, optimiser and worker sections with ``w2w train`` (the encoder must be the
one training will build), adds the two views and the loss of the method
(:mod:`.vicreg`). Nothing here imports torch or Ray.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from w2w.core import storage
from w2w.core.config import PathStr, StageConfig
from w2w.core.guard import OutputKind, Target, real_location, relation
from w2w.train.config import ModelConfig, OptimConfig, WorkersConfig

ENCODER_NAME = "encoder.safetensors"


class ViewsConfig(StageConfig):
    """How the two views of a chip differ. Band ratios carry the spectral signal a land-cover
    map needs, so the photometric changes are shared by all bands (brightness, offset) but
    for a small per-band jitter; the geometric ones are the eight rotations and flips."""

    stage_name: ClassVar[str] = "views"

    brightness: float = Field(
        default=0.2, ge=0, lt=1, description="gain of all bands drawn from 1 +- this"
    )
    offset: float = Field(default=0.05, ge=0, description="shift of all bands, +- this")
    band_jitter: float = Field(
        default=0.03, ge=0, lt=1, description="extra gain of each band, 1 +- this"
    )
    noise: float = Field(default=0.02, ge=0, description="std of added Gaussian noise")
    blur: float = Field(
        default=0.3, ge=0, le=1, description="chance of a Gaussian blur (sigma 0.5-1.5 px)"
    )
    erase: float = Field(
        default=0.5, ge=0, le=1, description="chance of blanking a rectangle of up to 1/4 area"
    )
    rotate: bool = Field(default=True, description="rotate and flip each view (8 ways)")


class VICRegConfig(StageConfig):
    """The loss: VICReg's invariance, variance and covariance terms on pooled (global) and
    per-position (local) embeddings of the encoder's deepest features."""

    stage_name: ClassVar[str] = "vicreg"

    invariance: float = Field(default=25.0, ge=0, description="weight of the invariance term")
    variance: float = Field(default=25.0, ge=0, description="weight of the variance term")
    covariance: float = Field(default=1.0, ge=0, description="weight of the covariance term")
    local_weight: float = Field(
        default=0.5, ge=0, le=1, description="share of the local (per-position) loss"
    )
    embedding: int = Field(default=256, ge=8, description="width of the projector's output")
    local_positions: int = Field(
        default=2048, ge=16, description="feature positions per batch in the local loss"
    )


class PretrainConfig(StageConfig):
    """Settings of ``w2w pretrain``."""

    stage_name: ClassVar[str] = "pretrain"
    inputs: ClassVar[dict[str, str]] = {"scene": "scene store"}
    outputs: ClassVar[dict[str, OutputKind]] = {"storage_path": "folder", "output": "file"}

    scene: PathStr = Field(description="scene store (labels are not needed)")
    output: PathStr | None = Field(
        default=None, description=f"the encoder file; default: <run dir>/{ENCODER_NAME}"
    )
    run_name: str = Field(
        default="w2w-pretrain",
        pattern=r"^[A-Za-z0-9._-]+$",
        description="name of the run in storage_path; re-run the same name to resume",
    )
    storage_path: PathStr = Field(default="runs", description="local folder or s3:// prefix")
    model: ModelConfig = Field(default_factory=ModelConfig)
    views: ViewsConfig = Field(default_factory=ViewsConfig)
    vicreg: VICRegConfig = Field(default_factory=VICRegConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    workers: WorkersConfig = Field(default_factory=WorkersConfig)
    chip_size: int = Field(default=64, ge=16, le=1024, description="chip edge in pixels")
    stride: int | None = Field(default=None, ge=1, description="chip step; default = chip size")
    min_valid_fraction: float = Field(
        default=0.5, ge=0, le=1, description="share of valid pixels a chip needs"
    )
    max_chips: int | None = Field(
        default=None, ge=1, description="chips used, drawn once at random; default: all"
    )
    normalization: Literal["percentile", "zscore"] = Field(
        default="percentile", description="per-band scaling; train must use the same"
    )
    epochs: int = Field(default=20, ge=1, description="passes over the chips")
    batch_size: int = Field(default=32, ge=2, description="chips per batch per worker")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        default="auto", description="auto: bf16 autocast on GPUs that have it, else fp32"
    )
    max_failures: int = Field(default=2, ge=0, description="worker failures survived")
    keep_checkpoints: int = Field(default=2, ge=1, description="latest checkpoints kept")
    cache_chips: Literal["auto", "yes", "no"] = Field(
        default="auto",
        description="keep the chips in Ray's object store (auto: when they fit in a third)",
    )
    seed: int = Field(default=0, description="seed of weights, sampling and views")
    engine: Literal["ray", "local"] = Field(default="ray", description="for the chip index scan")
    overwrite: bool = Field(default=False, description="delete an existing run of this name first")

    @model_validator(mode="after")
    def _consistent(self) -> PretrainConfig:
        if self.stride is not None and self.stride > self.chip_size:
            raise ValueError(
                f"stride {self.stride} exceeds chip size {self.chip_size}: pixels would be skipped"
            )
        if set(self.run_name) == {"."}:
            raise ValueError(f"run name '{self.run_name}' names a folder; give a name")
        if self.model.weights or self.model.encoder_weights:
            raise ValueError(
                "pretrain starts from random weights; model.weights and model.encoder_weights "
                "are for train (to continue a pretraining, re-run its --run-name)"
            )
        return self

    def output_targets(self) -> list[Target]:
        """The run folder (resumed when it holds this run) and the encoder file when it lies
        outside the run folder."""
        targets = [Target("run folder", self.run_dir, "run", resumable=True)]
        if relation(real_location(self.output_url), real_location(self.run_dir)) is None:
            targets.append(Target("encoder file", self.output_url, "file"))
        return targets

    @property
    def step(self) -> int:
        """The chip stride in use."""
        return self.stride or self.chip_size

    @property
    def run_dir(self) -> str:
        """Where Ray Train keeps the run's checkpoints."""
        return storage.join(self.storage_path, self.run_name)

    @property
    def output_url(self) -> str:
        """Where the encoder file is written."""
        return self.output or storage.join(self.run_dir, ENCODER_NAME)
