"""w2w: wall-to-wall land-cover mapping of whole states from satellite imagery, on Ray.

The stages, each a config class and a function that runs it::

    from w2w import IngestConfig, ingest, TrainConfig, train, PredictConfig, predict

    ingest(IngestConfig(images=["image.tif"], label="labels.tif", output="scene.zarr"))
    report = train(TrainConfig(scene="scene.zarr", run_name="v1"))
    predict(PredictConfig(scene="scene.zarr", bundle=report.bundle, output="mosaic.zarr"))

and :func:`open_scene` / :func:`open_mosaic` to read stores as xarray Datasets with their
CRS. The functions run a stage as its command does, through the stage registry's rules
(output guard, publish protocol, pinned inputs, resource checks). Names are loaded on first
use: ``import w2w`` imports neither torch nor Ray.
"""

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from w2w.core.lazy import lazy_exports

try:
    __version__ = version("w2w")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

if TYPE_CHECKING:
    from w2w.api import evaluate, export, ingest, predict, pretrain, sieve, synthesize, train
    from w2w.core.store.dataset import open_mosaic, open_scene
    from w2w.evaluate.config import EvaluateConfig
    from w2w.export.config import ExportConfig
    from w2w.ingest.config import IngestConfig
    from w2w.ingest.synth import SynthConfig
    from w2w.pipeline import PipelineConfig, demo_config, run_pipeline
    from w2w.predict.config import PredictConfig
    from w2w.sieve.config import SieveConfig
    from w2w.train.config import TrainConfig
    from w2w.train.pretrain.config import PretrainConfig

__all__ = [
    "EvaluateConfig",
    "ExportConfig",
    "IngestConfig",
    "PipelineConfig",
    "PredictConfig",
    "PretrainConfig",
    "SieveConfig",
    "SynthConfig",
    "TrainConfig",
    "__version__",
    "demo_config",
    "evaluate",
    "export",
    "ingest",
    "open_mosaic",
    "open_scene",
    "predict",
    "pretrain",
    "run_pipeline",
    "sieve",
    "synthesize",
    "train",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "open_scene": ".core.store.dataset",
        "open_mosaic": ".core.store.dataset",
        "SynthConfig": ".ingest.synth",
        "synthesize": ".api",
        "IngestConfig": ".ingest.config",
        "ingest": ".api",
        "PretrainConfig": ".train.pretrain.config",
        "pretrain": ".api",
        "TrainConfig": ".train.config",
        "train": ".api",
        "PredictConfig": ".predict.config",
        "predict": ".api",
        "SieveConfig": ".sieve.config",
        "sieve": ".api",
        "ExportConfig": ".export.config",
        "export": ".api",
        "EvaluateConfig": ".evaluate.config",
        "evaluate": ".api",
        "PipelineConfig": ".pipeline",
        "demo_config": ".pipeline",
        "run_pipeline": ".pipeline",
    },
)
