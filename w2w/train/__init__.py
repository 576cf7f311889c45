"""The train stage: chips from a scene store into a Ray Train DDP run, out comes a bundle.

:mod:`.config` (settings), :mod:`.chips` (index, filters, balance, Ray Data reads),
:mod:`.augment`, :mod:`.losses`, :mod:`.plan` (the driver's checks and plan),
:mod:`.worker` (the per-worker loop), :mod:`.run` (the trainer and the bundle);
:mod:`.pretrain`, the ``w2w pretrain`` stage: the encoder learns the scene's own imagery first,
no labels, on the same Ray Train machinery.
"""

from typing import TYPE_CHECKING

from w2w.core.lazy import lazy_exports, make_callable

if TYPE_CHECKING:
    from w2w.train.config import TrainConfig
    from w2w.train.plan import TrainPlan, claim_run, prepare
    from w2w.train.run import TrainReport, train
    from w2w.train.worker import validate

__all__ = ["TrainConfig", "TrainPlan", "TrainReport", "claim_run", "prepare", "train", "validate"]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "TrainConfig": ".config",
        "TrainPlan": ".plan",
        "claim_run": ".plan",
        "prepare": ".plan",
        "TrainReport": ".run",
        "train": "w2w.api",
        "validate": ".worker",
    },
)

# ``w2w.train(cfg)`` runs the stage through the registry, as its command does (w2w.api).
make_callable(__name__, "w2w.api:train")
