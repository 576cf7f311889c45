"""The evaluate stage: accuracy of a map against reference labels, and class areas with CIs.

:mod:`.config` (settings), :mod:`.run` (counting block by block), :mod:`.report` (the
result, its JSON and Markdown forms).
"""

from typing import TYPE_CHECKING

from w2w.core.lazy import lazy_exports, make_callable

if TYPE_CHECKING:
    from w2w.evaluate.config import EvaluateConfig
    from w2w.evaluate.report import ClassArea, EvaluationResult
    from w2w.evaluate.run import evaluate

__all__ = ["ClassArea", "EvaluateConfig", "EvaluationResult", "evaluate"]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "EvaluateConfig": ".config",
        "ClassArea": ".report",
        "EvaluationResult": ".report",
        "evaluate": "w2w.api",
    },
)

# ``w2w.evaluate(cfg)`` runs the stage through the registry, as its command does (w2w.api).
make_callable(__name__, "w2w.api:evaluate")
