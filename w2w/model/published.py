"""Published encoder weights by name: smp's (``imagenet``, ``ssl``, ...), timm's for ``tu-``
encoders (``imagenet`` or a timm tag) and torchgeo's (``ResNet18_Weights.SENTINEL2_ALL_MOCO``,
...), loaded by the libraries' own code and fitted to the scene's bands by name.

``model.encoder_weights`` takes a file (a ``w2w pretrain`` encoder file or a state dict) or
the name of published weights:

- a name segmentation-models-pytorch lists for the encoder (``imagenet`` for ``resnet34``):
  smp keeps them on the Hugging Face hub, and ``huggingface_hub.hf_hub_download`` (what smp
  itself calls, with smp's pinned revision) finds them in the hub cache (``HF_HUB_CACHE``, or
  ``HF_HOME``/hub) or downloads them;
- for a timm encoder (``tu-resnet18``), ``imagenet`` (timm's default weights of the
  architecture, as smp asks timm for them) or one of the tags timm lists for it
  (``a1_in1k``, ``tv_in1k``, ...): the hub repository timm names (``timm/resnet18.a1_in1k``),
  through the same hub cache;
- a torchgeo weights name (``ResNet50_Weights.SENTINEL2_ALL_MOCO``, torchgeo installed):
  torchgeo's ``WeightsEnum.get_state_dict`` (``torch.hub``'s cache, ``TORCH_HOME``/hub/
  checkpoints) finds or downloads them; the weights' metadata names the model they fit
  (``resnet50``: the encoder must be ``resnet50`` or ``tu-resnet50``) and their bands.

Offline (``HF_HUB_OFFLINE=1``, or no route to the hub), the weights come from the cache
folders above -- copy them from a machine that is online -- or from a file given as
``model.encoder_weights_file``; when neither holds them the error names the file to fetch and
where to put it. All of this runs on the driver, before any worker starts.

**First convolution, by band name.** The weights' first convolution has one input channel
per band they were trained on (RGB for ImageNet; 13 Sentinel-2 bands; ...). Each scene band
whose role (:mod:`w2w.core.bands`: ``red``, ``nir``, ``swir16``, ...) one of those bands has
takes that band's filter; a scene band no pretrained band matches starts at zero (the
pretrained features are then unchanged on the matched bands, and training learns the rest).
The kept filters are scaled by (pretrained bands / matched bands), as smp and timm scale a
first convolution whose channel count changes, so that a scene holding fewer of the bands
still drives the next layer at the strength the weights were trained for. When no band
matches by name, the filters are cycled over the scene's bands in order (smp's rule) and a
warning says so.

Every other tensor must exist in the weights with the encoder's shape, and the weights may
hold no tensor of the encoder's parts that the encoder lacks (resnet34's weights share every
name and shape of resnet18's, and have more blocks): a mismatched checkpoint is an error
naming the first tensor that differs. Tensors outside the encoder (a classifier head) are
left out.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from w2w.core.bands import role, sensor_role
from w2w.core.errors import ConfigError, InputError

log = logging.getLogger("w2w")

#: Band roles of the RGB inputs of ImageNet-trained weights, in channel order.
RGB = ("red", "green", "blue")

#: How to mend published weights that do not parse.
_REFETCH = "delete the file and fetch it again"

_TORCHGEO_NAME = re.compile(r"^[A-Za-z0-9]+_Weights\.[A-Z0-9_]+$")
_WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


@dataclass(frozen=True)
class PublishedWeights:
    """Published weights named in ``model.encoder_weights``, and what they fit."""

    name: str
    #: ``smp`` (Hugging Face hub, smp's pinned revision), ``timm`` (Hugging Face hub, the
    #: repository timm names) or ``torchgeo`` (torch.hub).
    source: str
    #: The encoder name the weights were saved from (``resnet50``).
    model: str
    #: Band role of each input channel of the first convolution, in order.
    band_roles: tuple[str | None, ...]
    #: Where the file is fetched from: ``repo_id@revision`` (smp) or the URL (torchgeo).
    origin: str


def is_published_name(value: str | None) -> bool:
    """Whether ``value`` names published weights rather than a file."""
    if not value or "/" in value or "\\" in value or value.endswith(_WEIGHT_SUFFIXES):
        return False
    return bool(_TORCHGEO_NAME.match(value)) or re.fullmatch(r"[a-z0-9_\-]+", value) is not None


def weights_encoder(name: str) -> str | None:
    """The encoder that published weights ``name`` were made for, where the name says it
    (torchgeo's weights name their model; smp's names are per encoder: None)."""
    if not _TORCHGEO_NAME.match(name):
        return None
    return _torchgeo(name, "").model


def _base_encoder(encoder: str) -> str:
    return encoder.removeprefix("tu-")


def resolve(name: str, encoder: str) -> PublishedWeights:
    """The published weights ``name`` for ``encoder``; an error lists the valid names."""
    if _TORCHGEO_NAME.match(name):
        return _torchgeo(name, encoder)
    if encoder.startswith("tu-"):
        return _timm(name, encoder)
    from segmentation_models_pytorch.encoders import encoders

    settings = encoders.get(encoder, {}).get("pretrained_settings", {})
    if name not in settings:
        known = ", ".join(sorted(settings)) or "none"
        raise ConfigError(
            f"encoder weights '{name}' are not a file and not published weights of {encoder} "
            f"(smp publishes: {known}; torchgeo's are named like "
            "ResNet50_Weights.SENTINEL2_ALL_MOCO); give a file path or one of these names"
        )
    entry = settings[name]
    return PublishedWeights(
        name=name,
        source="smp",
        model=encoder,
        band_roles=RGB,
        origin=f"{entry['repo_id']}@{entry['revision']}",
    )


def _timm(name: str, encoder: str) -> PublishedWeights:
    """The published weights timm has for a ``tu-`` encoder: ``imagenet`` is the architecture's
    default tag (what smp asks timm for with ``encoder_weights="imagenet"``), any other name
    a tag timm lists for it (``resnet18``: ``a1_in1k``, ``tv_in1k``, ...), from the Hugging
    Face hub repository timm names."""
    from timm.models import get_pretrained_cfg, list_pretrained

    arch = _base_encoder(encoder)
    try:
        cfg = get_pretrained_cfg(arch if name == "imagenet" else f"{arch}.{name}")
    except RuntimeError:  # timm knows the architecture, not the tag
        cfg = None
    if cfg is None or not getattr(cfg, "hf_hub_id", None):
        tags = [t.split(".", 1)[1] for t in list_pretrained(f"{arch}.*")]
        raise ConfigError(
            f"encoder weights '{name}' are not a file and not published weights of {encoder} "
            f"(timm publishes: imagenet (its default), {', '.join(tags) or 'none'}; torchgeo's "
            "are named like ResNet50_Weights.SENTINEL2_ALL_MOCO); give a file path or a name"
        )
    channels = int((cfg.input_size or (3,))[0])
    roles = RGB if channels == 3 else (None,) * channels
    return PublishedWeights(
        name=name, source="timm", model=encoder, band_roles=roles, origin=f"{cfg.hf_hub_id}@main"
    )


def _sensor(name: str) -> str:
    upper = name.upper()
    for sensor in ("SENTINEL2", "SENTINEL1", "LANDSAT_OLI", "LANDSAT_ETM", "LANDSAT_TM"):
        if sensor in upper:
            return sensor.lower()
    return ""


def _torchgeo(name: str, encoder: str) -> PublishedWeights:
    try:
        from torchgeo.models import get_weight
    except ImportError:
        raise ConfigError(
            f"encoder weights {name} are torchgeo's; install torchgeo "
            "(pip install 'w2w[published]') to load them"
        ) from None
    try:
        weights = get_weight(name)
    except (KeyError, ValueError, AttributeError):
        raise ConfigError(
            f"torchgeo has no weights named {name}; see torchgeo.models.list_models() and "
            "the weights each lists (e.g. ResNet50_Weights.SENTINEL2_ALL_MOCO)"
        ) from None
    meta = dict(weights.meta)
    model = str(meta.get("model", ""))
    if encoder and _base_encoder(encoder) != model:
        raise ConfigError(
            f"encoder weights {name} were trained for the {model} encoder, not {encoder}; "
            f"use --encoder {model} with them"
        )
    sensor = _sensor(name)
    bands = meta.get("bands")
    if bands:
        roles = tuple(sensor_role(sensor, str(b)) for b in bands)
    elif int(meta.get("in_chans", 0)) == 3:
        roles = RGB
    else:
        roles = (None,) * int(meta.get("in_chans", 0))
    return PublishedWeights(
        name=name, source="torchgeo", model=model, band_roles=roles, origin=str(weights.url)
    )


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _hf_cache() -> Path:
    """The Hugging Face hub cache, read from the environment now (not at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface"
    )
    return Path(home) / "hub"


def fetch(weights: PublishedWeights, local_file: str | None = None) -> tuple[dict[str, Any], str]:
    """The weights' state dict and the file it came from: ``local_file`` when given, else the
    library's cache, else a download (unless offline); a one-line error when none works."""
    if local_file:
        from w2w.core import storage
        from w2w.model.models import read_state_dict

        if not storage.exists(local_file):
            raise InputError(
                f"encoder weights file {local_file} does not exist; give the file of "
                f"{weights.name} (from {weights.origin})"
            )
        return read_state_dict(storage.read_bytes(local_file), local_file, _REFETCH), local_file
    if weights.source in ("smp", "timm"):
        return _fetch_hf(weights)
    return _fetch_torchgeo(weights)


def _fetch_hf(weights: PublishedWeights) -> tuple[dict[str, Any], str]:
    """Weights of smp or timm: ``model.safetensors`` of their hub repository, through
    ``huggingface_hub.hf_hub_download`` (its cache first; offline, only its cache)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    from w2w.model.models import read_state_dict

    repo_id, revision = weights.origin.split("@", 1)
    cache = _hf_cache()
    try:
        path = hf_hub_download(
            repo_id,
            filename="model.safetensors",
            revision=revision,
            cache_dir=cache,
            local_files_only=_offline(),
        )
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        snapshot = revision if revision != "main" else "<commit>"
        where = cache / f"models--{repo_id.replace('/', '--')}" / "snapshots" / snapshot
        raise InputError(
            f"encoder weights '{weights.name}' for {weights.model} are not in the Hugging Face "
            f"cache ({where}/model.safetensors) and could not be downloaded "
            f"({type(exc).__name__}); download them on a machine online "
            f"(huggingface-cli download {repo_id} --revision {revision}) and copy its cache "
            "here (HF_HOME), or give the file with --encoder-weights-file"
        ) from None
    return read_state_dict(Path(path).read_bytes(), path, _REFETCH), path


def _fetch_torchgeo(weights: PublishedWeights) -> tuple[dict[str, Any], str]:
    """Load with torchgeo's own loader (``WeightsEnum.get_state_dict``: torch.hub's cache, or a
    download), offline only from the cache; a stalled download gives up after 30 s."""
    import torch.hub
    from torchgeo.models import get_weight

    filename = os.path.basename(weights.origin.split("?", 1)[0])
    path = os.path.join(torch.hub.get_dir(), "checkpoints", filename)
    reason = "offline (HF_HUB_OFFLINE is set)" if _offline() and not os.path.exists(path) else ""
    if not reason:
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(30)
        try:
            state = get_weight(weights.name).get_state_dict(
                map_location="cpu", progress=False, weights_only=True
            )
            return dict(state), path
        except Exception as exc:  # noqa: BLE001 - a failed download or a bad file
            if os.path.exists(path):
                raise InputError(
                    f"cannot read published weights {weights.name} from {path} "
                    f"({type(exc).__name__}); delete the file and fetch it again"
                ) from None
            reason = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
        finally:
            socket.setdefaulttimeout(previous)
    raise InputError(
        f"encoder weights {weights.name} are not in the torch hub cache ({path}) and could "
        f"not be downloaded ({reason}); fetch {weights.origin} on a machine online and put "
        "it there (TORCH_HOME), or give it with --encoder-weights-file"
    )


def first_conv(encoder: Any) -> str:
    """The state-dict key of the encoder's first convolution's weight."""
    from torch import nn

    for name, module in encoder.named_modules():
        if isinstance(module, nn.Conv2d):
            return f"{name}.weight"
    raise ConfigError("the encoder has no convolution to take published weights")


def adapt_first_conv(
    weight: np.ndarray, roles: tuple[str | None, ...], bands: tuple[str, ...]
) -> tuple[np.ndarray, dict[str, Any]]:
    """The first convolution's weight (out, pretrained bands, k, k) fitted to the scene's
    ``bands`` by role (module docstring), and a record of which band took which filter."""
    out, n_in = weight.shape[:2]
    if len(roles) != n_in:
        roles = (None,) * n_in
    source = {r: j for j, r in reversed(list(enumerate(roles))) if r}
    taken = [source.get(role(b) or "") for b in bands]
    matched = [j for j in taken if j is not None]
    adapted = np.zeros((out, len(bands), *weight.shape[2:]), dtype=weight.dtype)
    if matched:
        for i, j in enumerate(taken):
            if j is not None:
                adapted[:, i] = weight[:, j]
        adapted *= n_in / len(matched)
        rule = "by band name"
    else:
        for i in range(len(bands)):
            adapted[:, i] = weight[:, i % n_in]
        adapted *= n_in / len(bands)
        rule = "cycled (no band name matched)"
        log.warning(
            "no scene band (%s) matches a band of the published weights by name; their first "
            "convolution's filters are cycled over the scene's bands in order",
            ", ".join(bands),
        )
    record = {
        "rule": rule,
        "bands": {
            b: (roles[j] if j is not None else None)
            for b, j in zip(bands, taken if matched else [None] * len(bands), strict=True)
        },
    }
    return adapted, record


def _encoder_key(key: str, targets: set[str]) -> str | None:
    """The encoder's name for checkpoint tensor ``key`` (timm encoders wrap the model in
    ``model.``; classifier heads have none)."""
    for candidate in (key, f"model.{key}", key.removeprefix("model.")):
        if candidate in targets:
            return candidate
    return None


def initial_encoder(
    name: str,
    encoder: str,
    encoder_module: Any,
    bands: tuple[str, ...],
    local_file: str | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The encoder's initial weights from published weights ``name``, fitted to ``bands``
    and checked tensor by tensor against ``encoder_module``; with a record for the bundle."""
    weights = resolve(name, encoder)
    state, path = fetch(weights, local_file)
    target = {k: tuple(v.shape) for k, v in encoder_module.state_dict().items()}
    conv = first_conv(encoder_module)
    found: dict[str, np.ndarray] = {}
    modules = {k.split(".", 1)[0] for k in target} | {
        k.split(".", 2)[1] for k in target if k.startswith("model.")
    }
    extra = []
    for key, tensor in state.items():
        mapped = _encoder_key(key, set(target))
        if mapped is not None and hasattr(tensor, "numpy"):
            found[mapped] = tensor.detach().cpu().numpy()
        elif key.removeprefix("model.").split(".", 1)[0] in modules:
            extra.append(key)  # a tensor of the encoder's parts that this encoder lacks
    if conv not in found:
        raise InputError(
            f"published weights {name} ({path}) have no tensor for the encoder's first "
            f"convolution {conv}; they do not fit {encoder}: fetch the file again"
        )
    found[conv], adaptation = adapt_first_conv(found[conv], weights.band_roles, bands)
    missing = [k for k in target if k not in found and not k.endswith("num_batches_tracked")]
    wrong = [k for k in target if k in found and tuple(found[k].shape) != target[k]]
    if missing or wrong or extra:
        if wrong:
            what = f"{wrong[0]} is {tuple(found[wrong[0]].shape)}, the encoder's {target[wrong[0]]}"
        elif missing:
            what = f"{len(missing)} of the encoder's tensors are missing, e.g. {missing[0]}"
        else:
            what = f"they hold {len(extra)} tensors the encoder has not, e.g. {sorted(extra)[0]}"
        raise InputError(
            f"published weights {name} ({path}) do not fit the {encoder} encoder ({what}); "
            "the cached file is another model's or is damaged: delete it and fetch it again"
        )
    state_out = {k: v for k, v in found.items() if k in target}
    record = {
        "name": name,
        "source": weights.source,
        "origin": weights.origin,
        "file": os.path.basename(path),
        "first_conv": adaptation,
    }
    log.info(
        "encoder weights: %s (%s, first convolution %s)", name, weights.source, adaptation["rule"]
    )
    return state_out, record
