"""The model bundle: one self-describing file that training writes and prediction reads.

A bundle is a single ``.safetensors`` file: the weights as plain tensors (safe to load --
nothing is unpickled) and, in the safetensors header, a JSON document with everything
prediction needs: architecture and encoder, input bands in order, normalisation, chip size,
class table with colours, the scene's nodata, validation metrics, the spatial split, the
training settings -- and a SHA-256 content hash over the metadata and every tensor, checked
on load, so a corrupt or tampered bundle is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from w2w.core import storage
from w2w.core.classes import ClassInfo
from w2w.core.errors import BundleError
from w2w.core.split import SplitPlan
from w2w.model.normalization import Normalizer
from w2w.model.spec import ModelSpec

if TYPE_CHECKING:
    from w2w.core.store import SceneInfo

FORMAT = "w2w-bundle"
FORMAT_VERSION = 1
_META_KEY = "w2w"


@dataclass(frozen=True)
class Bundle:
    """A trained model and what it takes to apply it to a scene."""

    spec: ModelSpec
    bands: tuple[str, ...]
    normalizer: Normalizer
    chip_size: int
    classes: tuple[ClassInfo, ...]
    nodata: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    split: SplitPlan | None = None
    training: dict[str, Any] = field(default_factory=dict)
    scene: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    content_hash: str = ""
    #: The weights (name -> torch tensor); empty when read with ``weights=False``.
    state: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    #: Number of weights, from the file's header (known with or without the weights).
    parameters: int = 0

    # -- metadata --------------------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        """The JSON document stored in the file (without the content hash)."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": self.spec.to_dict(),
            "bands": list(self.bands),
            "normalization": self.normalizer.to_dict(),
            "chip_size": self.chip_size,
            "classes": [c.to_dict() for c in self.classes],
            "nodata": self.nodata,
            "metrics": self.metrics,
            "split": self.split.to_dict() if self.split is not None else None,
            "training": self.training,
            "scene": self.scene,
            "created": self.created,
        }

    def model(self, device: str = "cpu") -> Any:
        """The model with the bundle's weights, in eval mode on ``device``."""
        from w2w.model.models import build_model

        if not self.state:
            raise BundleError("this bundle was read without its weights (weights=False)")
        model = build_model(self.spec)
        model.load_state_dict(self.state, strict=True)
        return model.to(device).eval()

    def check_scene(self, scene: SceneInfo, scene_url: str) -> None:
        """Refuse a scene whose bands differ from the bundle's, naming both lists."""
        if tuple(scene.band_names) != tuple(self.bands):
            raise BundleError(
                f"scene {scene_url} has bands [{', '.join(scene.band_names)}] "
                f"({scene.n_bands}) but the model was trained on [{', '.join(self.bands)}] "
                f"({len(self.bands)}); ingest the scene with the same bands in the same order "
                "(`w2w ingest --band-names ...`)"
            )


def content_hash(metadata: dict[str, Any], state: dict[str, Any]) -> str:
    """SHA-256 over the canonical metadata JSON and every tensor (name, dtype, shape, bytes);
    the tensors as torch tensors or numpy arrays (the same hash)."""
    h = hashlib.sha256()
    h.update(json.dumps(metadata, sort_keys=True, separators=(",", ":")).encode())
    for name in sorted(state):
        value = state[name]
        arr = value if isinstance(value, np.ndarray) else value.detach().cpu().contiguous().numpy()
        h.update(name.encode())
        h.update(str(arr.dtype).encode())
        h.update(str(tuple(arr.shape)).encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return "sha256:" + h.hexdigest()


def save_bundle(url: str, bundle: Bundle, state_dict: dict[str, Any]) -> Bundle:
    """Write a bundle atomically (to a temporary name, then moved into place); returns it
    with its content hash and creation time filled in.
    """
    from safetensors.torch import save

    state = {
        k: v.detach().cpu().float().contiguous()
        if v.is_floating_point()
        else v.detach().cpu().contiguous()
        for k, v in state_dict.items()
    }
    stamped = Bundle(
        **{
            **bundle.__dict__,
            "created": bundle.created or _now(),
            "state": state,
            "parameters": sum(int(t.numel()) for t in state.values()),
        }
    )
    meta = stamped.metadata()
    digest = content_hash(meta, state)
    header = {_META_KEY: json.dumps(meta, separators=(",", ":")), "content_hash": digest}
    data = save(state, metadata=header)
    storage.atomic_write_bytes(url, data)
    return Bundle(**{**stamped.__dict__, "content_hash": digest})


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def load_bundle(url: str, *, verify: bool = True, weights: bool = True) -> Bundle:
    """Read a bundle; refuses files that are not bundles, and (by default) any whose content
    hash does not match (corrupt or tampered).

    With ``weights=False`` the bundle comes without its weights (``state`` is empty) and
    torch is not imported: what a driver needs to plan and check a job. The hash is still
    verified, over the weights read as numpy arrays.
    """
    from safetensors import SafetensorError

    if weights:
        from safetensors.torch import load
    else:
        from safetensors.numpy import load

    raw = storage.read_bytes(url)
    header, parameters = read_header(raw, url)
    try:
        state = load(raw) if weights or verify else {}
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise BundleError(
            f"{url}: the weights are corrupt ({exc}); train again or restore the file"
        ) from None
    try:
        meta = json.loads(header[_META_KEY])
    except (KeyError, json.JSONDecodeError):
        raise BundleError(
            f"{url} is a safetensors file but not a w2w model bundle (no w2w metadata)"
        ) from None
    if meta.get("format") != FORMAT:
        raise BundleError(f"{url} is not a w2w model bundle")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise BundleError(f"{url} was written by a newer w2w; upgrade w2w to use it")
    stored = header.get("content_hash", "")
    if verify:
        actual = content_hash(meta, state)
        if actual != stored:
            raise BundleError(
                f"{url}: content hash mismatch (stored {stored[:19]}..., actual {actual[:19]}...); "
                "the bundle is corrupt or was modified -- do not use it; retrain or restore it"
            )
    return Bundle(
        spec=ModelSpec.from_dict(meta["model"]),
        bands=tuple(meta["bands"]),
        normalizer=Normalizer.from_dict(meta["normalization"]),
        chip_size=int(meta["chip_size"]),
        classes=tuple(ClassInfo.from_dict(c) for c in meta["classes"]),
        nodata=meta.get("nodata"),
        metrics=meta.get("metrics", {}),
        split=SplitPlan.from_dict(meta["split"]) if meta.get("split") else None,
        training=meta.get("training", {}),
        scene=meta.get("scene", {}),
        created=meta.get("created", ""),
        content_hash=stored,
        state=state if weights else {},
        parameters=parameters,
    )


def read_header(raw: bytes, url: str, kind: str = "w2w model bundle") -> tuple[dict[str, str], int]:
    """The ``__metadata__`` of a safetensors header and the number of weights its tensors
    hold, or a clear refusal of anything else (pickles included: they are never loaded);
    ``kind`` names what the file should be, for the messages.
    """
    if len(raw) < 8:
        raise BundleError(f"{url} is not a {kind} (file too short)")
    n = int.from_bytes(raw[:8], "little")
    if n <= 0 or n > len(raw) - 8 or n > 100_000_000:
        raise BundleError(
            f"{url} is not a {kind} (not a safetensors file; pickled models are "
            "refused because loading them can run arbitrary code)"
        )
    try:
        header = json.loads(raw[8 : 8 + n])
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BundleError(f"{url} is not a {kind} (unreadable header)") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict):
        raise BundleError(f"{url} is a safetensors file but not a {kind} (no metadata)")
    tensors = [v for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    return meta, sum(math.prod(t.get("shape", [])) for t in tensors)
