"""Segmentation models by name, through segmentation-models-pytorch.

A :class:`ModelSpec` names the architecture (``Unet``, ``FPN``, ``UnetPlusPlus``, ...) and
encoder (``resnet34``, ``efficientnet-b0``, timm's ``tu-*`` encoders, ...); weights are
randomly initialised -- nothing is downloaded -- unless a local or ``s3://`` weights file is
given. Unknown names fail with the list of valid ones.

Option ``spectral_branch: N`` adds a per-pixel path beside the network: a small MLP of 1x1
convolutions (N hidden channels) on the input bands, whose logits are added to the
network's. Encoders start by downsampling, so a plain U-Net cannot reproduce single-pixel
detail; the branch gives the model what a per-pixel classifier sees at full resolution,
while the network adds the spatial context.

Option ``context_bound: B`` (with the branch) bounds what the network can add to a pixel's
logits to ``B * tanh(logits / B)``: the context then corrects the spectrum where the spectrum
is ambiguous but cannot overrule it where it is clear. Without it, a network trained on one
part of a scene can assign confident, wrong logits to land it never saw there (open sea after
training on rivers), and those swamp a per-pixel branch that was right.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

from torch import nn

from w2w.core.errors import ConfigError, InputError
from w2w.model.spec import ModelSpec

log = logging.getLogger("w2w")


#: w2w's own architecture beside smp's: a per-pixel classifier with no spatial context.
PIXEL_ARCH = "PixelMLP"


def architectures() -> list[str]:
    """Architecture names: segmentation-models-pytorch's, and w2w's per-pixel MLP."""
    import segmentation_models_pytorch as smp

    return sorted([*smp.MODEL_ARCHITECTURES_MAPPING, PIXEL_ARCH])


def encoders() -> list[str]:
    """Encoder names segmentation-models-pytorch provides (timm's are ``tu-<name>``)."""
    from segmentation_models_pytorch.encoders import get_encoder_names

    return list(get_encoder_names())


def _canonical_arch(name: str) -> str:
    if name.lower() == PIXEL_ARCH.lower():
        return PIXEL_ARCH
    import segmentation_models_pytorch as smp

    mapping = {k.lower(): k for k in [*smp.MODEL_ARCHITECTURES_MAPPING, PIXEL_ARCH]}
    key = name.lower()
    if key not in mapping:
        raise ConfigError(
            f"unknown model architecture '{name}'; choose one of: {', '.join(architectures())}"
        )
    return mapping[key]


def build_model(spec: ModelSpec) -> Any:
    """A freshly initialised ``torch.nn.Module`` for ``spec`` (no weights downloaded)."""
    arch = _canonical_arch(spec.arch)
    enc = spec.encoder
    if arch == PIXEL_ARCH:  # no need for smp (and its 2 s of imports) in an actor
        return PixelMLP(spec.in_channels, spec.classes, **spec.options)
    import segmentation_models_pytorch as smp

    if not enc.startswith("tu-") and enc not in encoders():
        raise ConfigError(
            f"unknown encoder '{enc}'; choose one of: {', '.join(encoders())}, "
            "or a timm encoder as 'tu-<name>'"
        )
    options = dict(spec.options)
    spectral = int(options.pop("spectral_branch", 0) or 0)
    bound = options.pop("context_bound", None)
    if bound is not None and (spectral <= 0 or not float(bound) > 0):
        raise ConfigError(
            f"model option context_bound={bound} needs a positive bound and "
            "spectral_branch > 0 (it bounds the network's share beside the per-pixel branch)"
        )
    if "decoder_channels" in options:
        options["decoder_channels"] = tuple(options["decoder_channels"])
    try:
        model = smp.create_model(
            arch,
            encoder_name=enc,
            encoder_weights=None,
            in_channels=spec.in_channels,
            classes=spec.classes,
            **options,
        )
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise ConfigError(f"cannot build {arch} with encoder {enc}: {exc}") from None
    if spectral > 0:
        return SpectralContextModel(
            model, spec.in_channels, spec.classes, spectral, None if bound is None else float(bound)
        )
    return model


class SpectralContextModel(nn.Module):
    """A segmentation network plus a per-pixel MLP on the bands; their logits add up."""

    def __init__(
        self,
        network: nn.Module,
        in_channels: int,
        classes: int,
        hidden: int,
        context_bound: float | None = None,
    ) -> None:
        super().__init__()
        self.network = network
        self.context_bound = context_bound
        self.spectral = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, classes, 1),
        )

    @property
    def encoder(self) -> Any:
        """The network's encoder (its output stride bounds the chip size)."""
        return self.network.encoder

    def forward(self, x: Any, return_aux: bool = False) -> Any:
        """Logits of the network (bounded, if so configured) plus those of the per-pixel
        branch; with ``return_aux`` also the branch's own logits, ``(logits, spectral)``, for
        an auxiliary loss that makes the branch a classifier by itself (as smp's models
        return their auxiliary head's output)."""
        import torch

        spectral = self.spectral(x)
        context = self.network(x)
        if self.context_bound is not None:
            context = self.context_bound * torch.tanh(context / self.context_bound)
        logits = context + spectral
        return (logits, spectral) if return_aux else logits


class PixelMLP(nn.Module):
    """A per-pixel classifier on the bands, with no spatial context: ``layers`` hidden 1x1
    convolutions of ``hidden`` channels (ReLU), or with ``layers=0`` a per-pixel linear model
    (multinomial logistic regression). What a RandomForest sees, as a network; with
    ``layers=0`` its forward pass costs almost nothing, so the throughput benchmark uses it to
    measure prediction's cost outside the model."""

    def __init__(self, in_channels: int, classes: int, hidden: int = 64, layers: int = 2) -> None:
        super().__init__()
        if layers < 0 or (layers and hidden < 1):
            raise ConfigError(
                f"PixelMLP needs layers >= 0 and hidden >= 1, got {layers} and {hidden}"
            )
        widths = [in_channels, *([hidden] * layers)]
        parts: list[nn.Module] = []
        for a, b in itertools.pairwise(widths):
            parts += [nn.Conv2d(a, b, 1), nn.ReLU(inplace=True)]
        parts.append(nn.Conv2d(widths[-1], classes, 1))
        self.net = nn.Sequential(*parts)

    def forward(self, x: Any) -> Any:
        """(N, bands, h, w) -> (N, classes, h, w) logits."""
        return self.net(x)


def has_aux_logits(model: Any) -> bool:
    """Whether ``model`` (unwrapped from DDP) can return auxiliary logits (``return_aux``)."""
    return isinstance(model, SpectralContextModel)


def channels_last(model: Any) -> Any:
    """``model`` with its weights in channels-last (NHWC) memory order, for inference.

    Convolutions run on oneDNN's NHWC kernels on CPUs (1.3x faster for Unet/resnet34 and
    1.8x for a small ResNet-10 on 2 cores here) and on tensor cores on GPUs; inputs must be
    laid out the same way (:func:`channels_last_input`). The results equal the default
    layout's to float rounding."""
    import torch

    return model.to(memory_format=torch.channels_last)


def channels_last_input(x: Any) -> Any:
    """A (N, C, H, W) batch in channels-last memory order, for a :func:`channels_last` model."""
    import torch

    return x.contiguous(memory_format=torch.channels_last)


def output_stride(model: Any) -> int:
    """The factor by which the model's encoder downsamples; chips must be a multiple of it."""
    encoder = getattr(model, "encoder", None)
    return int(getattr(encoder, "output_stride", 1) or 1)


def check_chip_size(model: Any, spec: ModelSpec, chip_size: int) -> None:
    """Refuse a chip size the model cannot take, naming the nearest one that works."""
    stride = output_stride(model)
    if chip_size % stride:
        up = -(-chip_size // stride) * stride
        raise ConfigError(
            f"chip size {chip_size} is not a multiple of {stride}, which {spec.arch}/"
            f"{spec.encoder} needs; use {up} (or {up - stride})"
        )


def read_state_dict(raw: bytes, url: str, fix: str) -> dict[str, Any]:
    """The state dict in the bytes of a ``.safetensors`` file or a PyTorch file saved as plain
    tensors (``torch.load(weights_only=True)``: pickled objects are never executed; a
    checkpoint's ``state_dict`` entry is taken); a file that does not parse is an error
    naming ``url`` and ending with ``fix``."""
    import io

    import torch
    from safetensors.torch import load as load_safetensors

    try:
        if url.endswith(".safetensors"):
            state = load_safetensors(raw)
        else:
            state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any parse failure is a bad file
        first = (str(exc).splitlines() or [""])[0]
        raise InputError(
            f"cannot load weights from {url}: {type(exc).__name__}: {first}; {fix}"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    return dict(state)


def load_weights(model: Any, url: str, *, encoder_only: bool = False) -> None:
    """Load weights from a local or ``s3://`` file into ``model`` (or its encoder), safely.

    ``.safetensors`` files and PyTorch files saved as plain tensors are accepted; pickled
    objects are never executed (``torch.load(weights_only=True)``).
    """
    from w2w.core import storage

    state = read_state_dict(
        storage.read_bytes(url), url, "give a .safetensors file or a torch state_dict of tensors"
    )
    target = model.encoder if encoder_only else model
    what = "encoder" if encoder_only else "model"
    expected = set(target.state_dict())
    try:
        result = target.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes that do not fit
        first = str(exc).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise InputError(
            f"weights in {url} do not fit this {what} ({detail}); check that they were saved "
            f"from the same architecture, encoder, bands and classes"
        ) from None
    if result is None:  # smp's ResNet encoders drop torch's answer: work it out here
        missing = [k for k in sorted(expected) if k not in state]
        unexpected = [k for k in state if k not in expected and not k.startswith("fc.")]
    else:
        missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if missing:
        shown = ", ".join(missing[:3]) + (
            f", and {len(missing) - 3} more" if len(missing) > 3 else ""
        )
        raise InputError(
            f"weights in {url} lack {len(missing)} of the {what}'s "
            f"{len(target.state_dict())} tensors ({shown}); give weights saved from this {what}"
        )
    if unexpected:
        log.warning(
            "weights in %s hold %d tensors this %s does not use (e.g. %s); they are ignored",
            url,
            len(unexpected),
            what,
            unexpected[0],
        )
