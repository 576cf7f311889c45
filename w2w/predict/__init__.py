"""The predict stage: every pixel of a scene into a mosaic store, with a Ray Data job.

:mod:`.config` (settings), :mod:`.plan` (a block's read window and chips), :mod:`.actor`
(the inference actor: normalise, forward, blend), :mod:`.run` (the job: read, predict,
write, resume, coverage check).
"""

from typing import TYPE_CHECKING

from w2w.core.lazy import lazy_exports, make_callable

if TYPE_CHECKING:
    from w2w.predict.config import PredictConfig
    from w2w.predict.run import PredictReport, predict

__all__ = ["PredictConfig", "PredictReport", "predict"]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "PredictConfig": ".config",
        "PredictReport": ".run",
        "predict": "w2w.api",
    },
)

# ``w2w.predict(cfg)`` runs the stage through the registry, as its command does (w2w.api).
make_callable(__name__, "w2w.api:predict")
