"""The stages as Python functions, run through the same rules as the command line.

``w2w.ingest(cfg)`` and its siblings run a stage exactly as ``w2w ingest`` does: through the
stage registry (:meth:`w2w.stages.Stage.execute`), so the output guard, the publish protocol,
pinned inputs and resource checks hold for a script too. They return the stage's own report.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from w2w.stages import stage_named

if TYPE_CHECKING:
    from w2w.evaluate.config import EvaluateConfig
    from w2w.evaluate.report import EvaluationResult
    from w2w.export.config import ExportConfig
    from w2w.export.run import ExportResult
    from w2w.ingest.config import IngestConfig
    from w2w.ingest.run import IngestReport
    from w2w.ingest.synth import SynthConfig, SynthOutputs
    from w2w.predict.config import PredictConfig
    from w2w.predict.run import PredictReport
    from w2w.sieve.config import SieveConfig
    from w2w.sieve.run import SieveReport
    from w2w.train.config import TrainConfig
    from w2w.train.pretrain.config import PretrainConfig
    from w2w.train.pretrain.run import PretrainReport
    from w2w.train.run import TrainReport


def synthesize(cfg: SynthConfig, *, progress: bool = True) -> SynthOutputs:
    """Generate a synthetic state (``w2w synth``)."""
    return stage_named("synth").execute(cfg, progress=progress)


def ingest(cfg: IngestConfig, *, progress: bool = True) -> IngestReport:
    """Ingest imagery and labels into a scene store (``w2w ingest``)."""
    return stage_named("ingest").execute(cfg, progress=progress)


def pretrain(cfg: PretrainConfig, *, progress: bool = True) -> PretrainReport:
    """Pretrain an encoder on a scene's own imagery, no labels (``w2w pretrain``)."""
    return stage_named("pretrain").execute(cfg, progress=progress)


def train(cfg: TrainConfig, *, progress: bool = True) -> TrainReport:
    """Train a model and write its bundle (``w2w train``)."""
    return stage_named("train").execute(cfg, progress=progress)


def predict(cfg: PredictConfig, *, progress: bool = True) -> PredictReport:
    """Predict every pixel of a scene into a mosaic (``w2w predict``)."""
    return stage_named("predict").execute(cfg, progress=progress)


def sieve(cfg: SieveConfig, *, progress: bool = True) -> SieveReport:
    """Apply a minimum mapping unit (``w2w sieve``)."""
    return stage_named("sieve").execute(cfg, progress=progress)


def export(cfg: ExportConfig, *, progress: bool = True) -> ExportResult:
    """Export a mosaic as a COG with its STAC Item and sidecars (``w2w export``)."""
    return stage_named("export").execute(cfg, progress=progress)


def evaluate(cfg: EvaluateConfig, *, progress: bool = True) -> EvaluationResult:
    """Score a mosaic and estimate class areas (``w2w evaluate``)."""
    return stage_named("evaluate").execute(cfg, progress=progress)
