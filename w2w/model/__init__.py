"""Models and what travels with them: models by name (:mod:`.models`), per-band
normalisation (:mod:`.normalization`) and the self-describing bundle (:mod:`.bundle`).

Every stage may import this package; it imports only :mod:`w2w.core`.
"""

from typing import TYPE_CHECKING

from w2w.core.lazy import lazy_exports

if TYPE_CHECKING:
    from w2w.model.bundle import Bundle, load_bundle, save_bundle
    from w2w.model.models import build_model
    from w2w.model.normalization import Normalizer
    from w2w.model.spec import ModelSpec

__all__ = ["Bundle", "ModelSpec", "Normalizer", "build_model", "load_bundle", "save_bundle"]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "Bundle": ".bundle",
        "load_bundle": ".bundle",
        "save_bundle": ".bundle",
        "ModelSpec": ".spec",
        "build_model": ".models",
        "Normalizer": ".normalization",
    },
)
