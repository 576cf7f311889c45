"""What names a model, without torch: the part of a model a driver reads from a bundle.

:class:`ModelSpec` travels in every model bundle; drivers (predict, evaluate, export) read it
to plan and check work without importing torch -- only the processes that run a model build
one (:func:`w2w.model.models.build_model`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelSpec:
    """What is needed to rebuild a model: architecture, encoder, bands in, classes out."""

    arch: str
    encoder: str
    in_channels: int
    classes: int
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, stored in the model bundle."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(
            d["arch"],
            d["encoder"],
            int(d["in_channels"]),
            int(d["classes"]),
            dict(d.get("options", {})),
        )
