"""The settings of ``w2w evaluate``."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from w2w.core.config import Engine, PathStr, StageConfig, engine_field, overwrite_field

SplitChoice = Literal["test", "val", "train", "all"]


class EvaluateConfig(StageConfig):
    """Settings of ``w2w evaluate``."""

    stage_name: ClassVar[str] = "evaluate"
    inputs: ClassVar[dict[str, str]] = {
        "mosaic": "mosaic",
        "scene": "scene store",
        "bundle": "model bundle",
    }
    outputs: ClassVar[tuple[str, ...]] = ("output",)

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
    engine: Engine = engine_field()
    allow_incomplete: bool = Field(
        default=False, description="evaluate a mosaic whose prediction did not finish"
    )
    overwrite: bool = overwrite_field()
