"""Settings fitted to the scene: what ``w2w train scene.zarr`` does with no options.

A setting the user gives (on the command line, in a config file or a pipeline section) is
kept. A setting left unset is chosen here, on the driver, from what the scene store says
about itself -- its size and its labelled pixels per class -- and from a pretrained encoder
file when one is given; the choices are logged before training and recorded in the bundle.

- **A pretrained encoder** (``model.encoder_weights`` naming a file ``w2w pretrain`` wrote):
  the architecture, encoder and options it was pretrained in, its chip size and its
  normalisation method.
- **A small scene** (its shorter side at most :data:`SMALL_SIDE` px, or at most
  :data:`SMALL_LABELS` labelled pixels): the small-scene recipe the quality benchmark measures
  (its ``RECIPE`` is built from this one): a light 3-stage U-Net with a per-pixel branch,
  64 px chips at a stride that gives about :data:`CHIPS_PER_EPOCH` chips per epoch (8 px on a
  450 px scene), z-score normalisation, cross-entropy weighted by the class histogram with the
  branch also trained as a classifier, AdamW at 0.01, 18 epochs.
- **Anything larger**: the general defaults of the config (256 px chips, U-Net/ResNet-34).

A chip size given keeps the default stride (the size); the stride is fitted only when the
tiling is left to w2w.

Class weights (``auto``: from the class histogram) and rare-class oversampling (``balance``)
are on for every scene unless set.
"""

from __future__ import annotations

import math
from typing import Any

from w2w.core.store import SceneInfo
from w2w.model.published import is_published_name, weights_encoder
from w2w.train.config import TrainConfig

#: A scene whose shorter side is at most this many pixels takes the small-scene recipe.
SMALL_SIDE = 1024
#: ... and so does one with at most this many labelled pixels.
SMALL_LABELS = 200_000
#: The stride of a small scene's chips aims at about this many chips per epoch.
CHIPS_PER_EPOCH = 4000

#: The small-scene recipe, section by section (only unset fields take these values).
SMALL_RECIPE: dict[str, dict[str, Any]] = {
    "model": {
        "arch": "Unet",
        "encoder": "tu-resnet10t",
        "options": {
            "encoder_depth": 3,
            "decoder_channels": [64, 32, 16],
            "spectral_branch": 64,
            "context_bound": 4.0,
        },
    },
    "chips": {"size": 64, "min_valid_fraction": 0.1},
    "augment": {"brightness": 0.0, "contrast": 0.0},
    "loss": {"spectral_aux": 0.5},
    "optim": {"lr": 0.01, "weight_decay": 0.01},
    "": {"normalization": "zscore", "epochs": 18, "batch_size": 16, "patience": None},
}


def is_small(info: SceneInfo) -> bool:
    """Whether the small-scene recipe fits the scene."""
    labelled = sum(v for k, v in info.class_histogram.items() if k != info.unlabelled)
    side = min(info.grid.height, info.grid.width)
    return side <= SMALL_SIDE or (0 < labelled <= SMALL_LABELS)


def small_stride(info: SceneInfo, size: int) -> int:
    """A power-of-two stride (8 to the chip size) giving about :data:`CHIPS_PER_EPOCH` chips
    over the scene."""
    step = math.sqrt(info.grid.height * info.grid.width / CHIPS_PER_EPOCH)
    return int(min(size, max(8, 2 ** math.ceil(math.log2(max(step, 1.0))))))


def fit_to_scene(
    cfg: TrainConfig,
    info: SceneInfo,
    encoder: dict[str, Any] | None = None,
    published_encoder: str | None = None,
) -> tuple[TrainConfig, dict[str, Any]]:
    """``cfg`` with its unset settings chosen for the scene (see the module notes), and the
    choices made (``{"field.path": value}``), for the log and the bundle. ``encoder`` is the
    metadata of a pretrained encoder file given as ``model.encoder_weights``;
    ``published_encoder`` the encoder that published weights named there were made for
    (torchgeo's say; None for smp's, which the general default encoder has)."""
    if not cfg.fit_to_scene:
        return cfg, {}
    proposals: dict[str, dict[str, Any]] = {}
    if is_small(info):
        proposals = {k: dict(v) for k, v in SMALL_RECIPE.items()}
    if is_published_name(cfg.model.encoder_weights):
        # Published weights fix the encoder: the one they were made for, or the default.
        model = proposals.setdefault("model", {})
        if published_encoder:
            model["encoder"] = published_encoder
        else:
            model.pop("encoder", None)
    if encoder is not None:
        spec = encoder["model"]
        proposals.setdefault("model", {}).update(
            arch=spec["arch"], encoder=spec["encoder"], options=dict(spec.get("options", {}))
        )
        proposals.setdefault("chips", {})["size"] = int(encoder["chip_size"])
        proposals.setdefault("", {})["normalization"] = encoder["normalization"]["method"]
    chosen: dict[str, Any] = {}
    data = cfg.to_dict()
    for section, values in proposals.items():
        given = cfg.model_fields_set if not section else _section_set(cfg, section)
        target = data if not section else data[section]
        for key, value in values.items():
            if key not in given:
                target[key] = value
                chosen[f"{section}.{key}" if section else key] = value
    chips_given = _section_set(cfg, "chips")
    if is_small(info) and not chips_given & {"size", "stride"}:
        # Only when the tiling is left to w2w: a chip size given keeps its default stride.
        stride = small_stride(info, int(data["chips"]["size"]))
        data["chips"]["stride"] = stride
        chosen["chips.stride"] = stride
    if not chosen:
        return cfg, {}
    return TrainConfig.from_dict(data, source="settings fitted to the scene"), chosen


def fit(cfg: TrainConfig) -> tuple[TrainConfig, dict[str, Any]]:
    """:func:`fit_to_scene` with the scene's metadata and the encoder file's read here."""
    from w2w.core.store import SceneStore
    from w2w.model.encoder_file import is_encoder_file, load_encoder

    if not cfg.fit_to_scene:
        return cfg, {}
    info = SceneStore.open(cfg.scene).info
    url = cfg.model.encoder_weights
    pretrained = url and not is_published_name(url) and is_encoder_file(url)
    encoder = load_encoder(url).metadata() if pretrained else None
    published = weights_encoder(url) if is_published_name(url) else None
    return fit_to_scene(cfg, info, encoder, published)


def _section_set(cfg: TrainConfig, section: str) -> set[str]:
    """The fields of a section the user gave (none when the section itself was not given)."""
    if section not in cfg.model_fields_set:
        return set()
    return set(getattr(cfg, section).model_fields_set)


def describe(chosen: dict[str, Any]) -> str:
    """The choices as one line for the log."""
    return ", ".join(f"{k} {v}" for k, v in chosen.items())
