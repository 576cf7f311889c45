"""The settings of ``w2w predict``."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from w2w.core.config import RAY_UNIT, PathStr, StageConfig
from w2w.core.guard import OutputKind, Target


class PredictConfig(StageConfig):
    """Settings of ``w2w predict``."""

    stage_name: ClassVar[str] = "predict"
    inputs: ClassVar[dict[str, str]] = {"scene": "scene store", "bundle": "model bundle"}
    outputs: ClassVar[dict[str, OutputKind]] = {"output": "store"}

    scene: PathStr = Field(description="scene store to map")
    bundle: PathStr = Field(description="model bundle from `w2w train`")
    output: PathStr = Field(description="mosaic store to write (local path or s3:// URL)")
    block: int = Field(default=1024, ge=32, description="block edge = mosaic write unit (px)")
    chunk: int | None = Field(default=None, ge=16, description="inner chunk when sharding")
    stride: int | None = Field(default=None, ge=1, description="chip step; default chip/2")
    batch_size: int = Field(default=16, ge=1, description="chips per forward pass")
    tta: bool = Field(default=False, description="average over flips (4x compute)")
    actors: int = Field(default=1, ge=1, description="size of the inference actor pool")
    use_gpu: bool = Field(default=False, description="one GPU per inference actor")
    cpus_per_actor: float = Field(default=1, ge=RAY_UNIT, description="CPUs per inference actor")
    threads: int | None = Field(
        default=None,
        ge=1,
        description="torch threads of a CPU actor; default: its CPUs (at least 1). More threads "
        "than CPUs lets one actor use cores the light read/write tasks leave idle",
    )
    read_cpus: float = Field(
        default=0.5,
        ge=RAY_UNIT,
        description="CPUs per read/write task (differs from the actors' so the stages stay apart)",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default="auto",
        description="dtype of the model's forward pass: auto = bf16 on a GPU, fp32 on a CPU "
        "(blending is always fp32)",
    )
    compile: bool = Field(
        default=False, description="torch.compile the model in each actor (slower start-up)"
    )
    confidence: bool = Field(default=True, description="write the confidence array")
    probabilities: bool = Field(
        default=False,
        description="also write each class's probability (uint8 x 255, one band per class) "
        "for `w2w export --probabilities`; the mosaic grows by one byte a pixel per class",
    )
    overwrite: bool = Field(default=False, description="start the mosaic over")
    max_blocks: int | None = Field(default=None, ge=1, description="stop after this many blocks")

    def output_targets(self) -> list[Target]:
        """The mosaic, resumed when unfinished (predict checks it was made from these
        inputs and settings)."""
        return [Target("output", self.output, "store", resumable=True)]

    @model_validator(mode="after")
    def _shard(self) -> PredictConfig:
        if self.chunk is not None and self.block % self.chunk:
            raise ValueError(f"block ({self.block}) must be a multiple of chunk ({self.chunk})")
        return self
