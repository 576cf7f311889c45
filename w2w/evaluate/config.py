"""The settings of ``w2w evaluate``."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from w2w.core import storage
from w2w.core.config import Engine, PathStr, StageConfig, engine_field, overwrite_field
from w2w.core.guard import OutputKind, Target

SplitChoice = Literal["test", "val", "train", "all"]


class EvaluateConfig(StageConfig):
    """Settings of ``w2w evaluate``."""

    stage_name: ClassVar[str] = "evaluate"
    inputs: ClassVar[dict[str, str]] = {
        "mosaic": "mosaic",
        "scene": "scene store",
        "bundle": "model bundle",
    }
    outputs: ClassVar[dict[str, OutputKind]] = {"output": "folder"}

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
    baseline: bool = Field(
        default=True,
        description="also fit a per-pixel gradient-boosted model on the training split and "
        "score it on the same pixels as the map, with McNemar's test of the difference",
    )
    allow_incomplete: bool = Field(
        default=False, description="evaluate a mosaic whose prediction did not finish"
    )
    overwrite: bool = overwrite_field()

    def output_targets(self) -> list[Target]:
        """The report folder and each report file in it."""
        files = [Target("report file", u, "file") for u in report_targets(self.output).values()]
        return [Target("report folder", self.output, "folder"), *files]


#: The report's files in its folder: metrics, a readable report, the confusion matrix.
REPORT_FILES = ("evaluation.json", "evaluation.md", "confusion_matrix.png")


def report_targets(output: str) -> dict[str, str]:
    """Where the report files go: ``json``, ``markdown`` and ``figure``."""
    names = dict(zip(("json", "markdown", "figure"), REPORT_FILES, strict=True))
    return {key: storage.join(output, name) for key, name in names.items()}
