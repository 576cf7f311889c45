"""The pretrained-encoder file: what ``w2w pretrain`` writes and ``train --encoder-weights`` reads.

One ``.safetensors`` file: the encoder's weights as plain tensors (nothing is unpickled) and,
in the header, a JSON document saying what they fit -- the model spec they were cut from
(architecture, encoder, options, input bands), the band names in order, the normalisation
the encoder saw, the chip size, the self-supervised method and its settings, the loss history
and the scene's content identity -- and a SHA-256 content hash over all of it, checked on load
(the same hash as a model bundle's, :func:`w2w.model.bundle.content_hash`).

:func:`check_fits` is what makes a mismatch an error on the driver, before any worker starts:
another encoder, other options, other bands (by name and order), another normalisation method,
or tensors whose names or shapes differ from the encoder that training builds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from w2w.core import storage
from w2w.core.errors import BundleError, ConfigError
from w2w.model.bundle import FORMAT as BUNDLE_FORMAT
from w2w.model.bundle import content_hash, read_header
from w2w.model.normalization import Normalizer
from w2w.model.spec import ModelSpec

FORMAT = "w2w-encoder"
FORMAT_VERSION = 1
_META_KEY = "w2w"
_KIND = "w2w encoder file"


@dataclass(frozen=True)
class EncoderFile:
    """Pretrained encoder weights and what they fit."""

    spec: ModelSpec
    bands: tuple[str, ...]
    normalizer: Normalizer
    chip_size: int
    #: The self-supervised method and its settings.
    method: dict[str, Any]
    #: The pretraining settings, loss history and chip counts.
    pretraining: dict[str, Any] = field(default_factory=dict)
    scene: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    content_hash: str = ""
    #: Tensor name -> shape, from the header (known without reading the weights).
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict, repr=False, compare=False)
    #: The weights (name -> torch tensor); empty unless read with ``weights=True``.
    state: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def metadata(self) -> dict[str, Any]:
        """The JSON document stored in the file (without the content hash)."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": self.spec.to_dict(),
            "bands": list(self.bands),
            "normalization": self.normalizer.to_dict(),
            "chip_size": self.chip_size,
            "method": self.method,
            "pretraining": self.pretraining,
            "scene": self.scene,
            "created": self.created,
        }


def save_encoder(url: str, encoder: EncoderFile, state_dict: dict[str, Any]) -> EncoderFile:
    """Write an encoder file atomically; returns it with its content hash and time stamp."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    created = encoder.created or datetime.now(UTC).replace(microsecond=0).isoformat()
    stamped = EncoderFile(**{**encoder.__dict__, "created": created, "state": state})
    meta = stamped.metadata()
    digest = content_hash(meta, state)
    header = {_META_KEY: json.dumps(meta, separators=(",", ":")), "content_hash": digest}
    storage.atomic_write_bytes(url, save(state, metadata=header))
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    return EncoderFile(**{**stamped.__dict__, "content_hash": digest, "shapes": shapes})


def _format(url: str) -> str | None:
    """The w2w format named in a safetensors file's header (None for any other file)."""
    try:
        meta, _ = read_header(storage.read_bytes(url), url, _KIND)
        found = json.loads(meta.get(_META_KEY, "{}"))
    except (BundleError, json.JSONDecodeError):
        return None
    return found.get("format") if isinstance(found, dict) else None


def is_encoder_file(url: str) -> bool:
    """Whether ``url`` is a safetensors file written by ``w2w pretrain`` (reads its header)."""
    return _format(url) == FORMAT


def is_bundle_file(url: str) -> bool:
    """Whether ``url`` is a w2w model bundle (reads its header)."""
    return _format(url) == BUNDLE_FORMAT


def load_encoder(url: str, *, weights: bool = False) -> EncoderFile:
    """Read an encoder file, its content hash verified (over the weights read as numpy arrays
    unless ``weights``, so a driver need not import torch)."""
    from safetensors import SafetensorError

    if weights:
        from safetensors.torch import load
    else:
        from safetensors.numpy import load

    raw = storage.read_bytes(url)
    header, _ = read_header(raw, url, _KIND)
    try:
        meta = json.loads(header[_META_KEY])
    except (KeyError, json.JSONDecodeError):
        raise BundleError(f"{url} is a safetensors file but not a {_KIND}") from None
    if meta.get("format") != FORMAT:
        what = "a model bundle" if meta.get("format") == BUNDLE_FORMAT else "not an encoder file"
        raise BundleError(
            f"{url} is {what}, not a {_KIND}; give the encoder that `w2w pretrain` wrote"
        )
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise BundleError(f"{url} was written by a newer w2w; upgrade w2w to use it")
    try:
        state = load(raw)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise BundleError(
            f"{url}: the weights are corrupt ({exc}); run `w2w pretrain` again"
        ) from None
    stored = header.get("content_hash", "")
    actual = content_hash(meta, state)
    if actual != stored:
        raise BundleError(
            f"{url}: content hash mismatch (stored {stored[:19]}..., actual {actual[:19]}...); "
            "the encoder file is corrupt or was modified; run `w2w pretrain` again"
        )
    return EncoderFile(
        spec=ModelSpec.from_dict(meta["model"]),
        bands=tuple(meta["bands"]),
        normalizer=Normalizer.from_dict(meta["normalization"]),
        chip_size=int(meta["chip_size"]),
        method=dict(meta.get("method", {})),
        pretraining=dict(meta.get("pretraining", {})),
        scene=dict(meta.get("scene", {})),
        created=meta.get("created", ""),
        content_hash=stored,
        shapes={k: tuple(v.shape) for k, v in state.items()},
        state=state if weights else {},
    )


#: Model options that shape the encoder (the rest shape the decoder or the head).
ENCODER_OPTIONS = ("encoder_depth", "encoder_output_stride", "encoder_params")


def check_fits(
    encoder: EncoderFile, url: str, spec: ModelSpec, bands: tuple[str, ...], method: str
) -> None:
    """Refuse an encoder file that does not fit a model of ``spec`` trained on ``bands``
    with ``method`` normalisation, naming what differs and how to fix it."""
    theirs, mine = encoder.spec, spec
    if theirs.encoder != mine.encoder:
        raise ConfigError(
            f"encoder weights {url} are for encoder {theirs.encoder}, but the model uses "
            f"{mine.encoder}; train with --encoder {theirs.encoder}, or pretrain this encoder"
        )
    differ = [k for k in ENCODER_OPTIONS if theirs.options.get(k) != mine.options.get(k)]
    if differ:
        shown = ", ".join(
            f"{k}={theirs.options.get(k)!r} there, {mine.options.get(k)!r} here" for k in differ
        )
        raise ConfigError(
            f"encoder weights {url} were pretrained with other encoder options ({shown}); "
            "give the model the same model.options"
        )
    if tuple(encoder.bands) != tuple(bands):
        raise ConfigError(
            f"encoder weights {url} were pretrained on bands [{', '.join(encoder.bands)}] but "
            f"the scene has [{', '.join(bands)}]; pretrain on a scene with the same bands in "
            "the same order"
        )
    if encoder.normalizer.method != method:
        raise ConfigError(
            f"encoder weights {url} were pretrained on {encoder.normalizer.method}-normalised "
            f"images; train with --normalization {encoder.normalizer.method}"
        )


def check_shapes(encoder: EncoderFile, url: str, model_encoder: Any) -> None:
    """Refuse an encoder file whose tensors do not match the names and shapes of the encoder
    training builds (a file edited by hand, or from another version of the encoder)."""
    want = {k: tuple(v.shape) for k, v in model_encoder.state_dict().items()}
    missing = sorted(set(want) - set(encoder.shapes))
    wrong = sorted(k for k in set(want) & set(encoder.shapes) if want[k] != encoder.shapes[k])
    if missing or wrong:
        first = missing[0] if missing else wrong[0]
        raise ConfigError(
            f"encoder weights {url} do not fit the encoder ({len(missing)} tensors missing, "
            f"{len(wrong)} of another shape, e.g. {first}); pretrain again with this model"
        )
