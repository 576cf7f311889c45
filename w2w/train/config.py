"""The settings of ``w2w train``: one frozen config with a section per concern.

Validated on the driver; workers rebuild it from the plain dict with ``from_dict``. Nothing
here imports torch or Ray, so the command line can show every option without loading them.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from w2w.core import storage
from w2w.core.config import RAY_UNIT, PathStr, StageConfig, canonical_path
from w2w.core.guard import OutputKind, Target, real_location, relation
from w2w.core.split import SplitConfig
from w2w.model.published import is_published_name
from w2w.train.augment import AugmentConfig
from w2w.train.chips import ChipConfig
from w2w.train.losses import LossConfig

BUNDLE_NAME = "model.safetensors"


def _weights_ref(value: Any) -> Any:
    """Published weights' names as given; anything else a path, made canonical."""
    if isinstance(value, str) and is_published_name(value):
        return value
    return canonical_path(value)


#: Encoder weights: the name of published weights (``imagenet``) or a local path or URL.
WeightsRef = Annotated[str, BeforeValidator(_weights_ref)]


class ModelConfig(StageConfig):
    """Architecture, encoder and optional initial weights."""

    stage_name: ClassVar[str] = "model"

    arch: str = Field(default="Unet", description="architecture, e.g. Unet, FPN, UnetPlusPlus")
    encoder: str = Field(
        default="resnet34", description="encoder, e.g. resnet34, efficientnet-b0, tu-<timm name>"
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="extra smp arguments, e.g. decoder_channels"
    )
    weights: PathStr | None = Field(default=None, description="whole-model weights to start from")
    encoder_weights: WeightsRef | None = Field(
        default=None,
        description="encoder weights to start from: a file (w2w pretrain's, or a state dict) "
        "or published weights by name (imagenet; torchgeo's ResNet50_Weights.SENTINEL2_ALL_MOCO)",
    )
    encoder_weights_file: PathStr | None = Field(
        default=None,
        description="the file of the published weights named by encoder_weights, where no "
        "hub cache holds them (offline)",
    )

    @model_validator(mode="after")
    def _weights_file_names_weights(self) -> ModelConfig:
        if self.encoder_weights_file and not is_published_name(self.encoder_weights):
            raise ValueError(
                "encoder_weights_file is the file of published weights named by "
                "encoder_weights (e.g. imagenet); give encoder_weights such a name, or give "
                "the file itself as encoder_weights"
            )
        return self


class OptimConfig(StageConfig):
    """AdamW and its learning-rate schedule."""

    stage_name: ClassVar[str] = "optim"

    lr: float = Field(default=1e-3, gt=0, le=10, description="peak learning rate (AdamW)")
    weight_decay: float = Field(default=1e-4, ge=0, description="AdamW weight decay")
    schedule: Literal["cosine", "onecycle", "constant"] = Field(
        default="cosine", description="learning-rate schedule"
    )
    warmup_epochs: float = Field(default=1.0, ge=0, description="linear warm-up (cosine only)")
    min_lr_ratio: float = Field(
        default=0.01, ge=0, le=1, description="final learning rate / peak (cosine only)"
    )
    encoder_lr_ratio: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="encoder's learning rate / the rest's; default: 0.1 when the encoder "
        "starts from pretrained weights (a high rate would wash out what it learnt), else 1",
    )


class WorkersConfig(StageConfig):
    """How many training workers and what each gets."""

    stage_name: ClassVar[str] = "workers"

    num_workers: int = Field(default=2, ge=1, description="training workers (DDP ranks)")
    use_gpu: bool = Field(default=False, description="one GPU per worker")
    cpus_per_worker: float = Field(default=1, ge=RAY_UNIT, description="CPUs per training worker")
    gpus_per_worker: float = Field(
        default=1, ge=RAY_UNIT, description="GPUs per training worker (with use_gpu)"
    )
    accelerator_type: str | None = Field(default=None, description="e.g. A10G")


class TrainConfig(StageConfig):
    """Settings of ``w2w train``."""

    stage_name: ClassVar[str] = "train"
    inputs: ClassVar[dict[str, str]] = {"scene": "scene store"}
    outputs: ClassVar[dict[str, OutputKind]] = {"storage_path": "folder", "bundle": "file"}

    scene: PathStr = Field(description="scene store with labels")
    run_name: str = Field(
        default="w2w-run",
        pattern=r"^[A-Za-z0-9._-]+$",
        description="name of the run in storage_path; re-run the same name to resume",
    )
    storage_path: PathStr = Field(default="runs", description="local folder or s3:// prefix")
    bundle: PathStr | None = Field(default=None, description=f"default: <run dir>/{BUNDLE_NAME}")
    model: ModelConfig = Field(default_factory=ModelConfig)
    chips: ChipConfig = Field(default_factory=ChipConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    workers: WorkersConfig = Field(default_factory=WorkersConfig)
    normalization: Literal["percentile", "zscore"] = Field(
        default="percentile", description="per-band scaling from the scene's statistics"
    )
    epochs: int = Field(default=20, ge=1, description="maximum epochs")
    batch_size: int = Field(default=8, ge=1, description="chips per batch per worker")
    accumulate: int = Field(default=1, ge=1, description="gradient accumulation steps")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        default="auto", description="auto: bf16 autocast on GPUs that have it, else fp32"
    )
    patience: int | None = Field(default=6, ge=1, description="early stopping; None = off")
    max_failures: int = Field(default=2, ge=0, description="worker failures survived")
    keep_checkpoints: int = Field(default=2, ge=1, description="best checkpoints kept")
    cache_chips: Literal["auto", "yes", "no"] = Field(
        default="auto",
        description="keep the training chips in Ray's object store (auto: when they fit in a "
        "third of it)",
    )
    val_batch_size: int = Field(default=16, ge=1, description="chips per validation batch")
    seed: int = Field(default=0, description="seed of weights, sampling and augmentation")
    reproducible: bool = Field(
        default=True,
        description="stream the chips in a fixed order, so that a seed gives the same model on "
        "CPU; costs a little throughput (a slow read holds later chips back), so large GPU "
        "runs may turn it off",
    )
    fit_to_scene: bool = Field(
        default=True,
        description="choose the settings left unset from the scene's size and labels and a "
        "pretrained encoder file (small scenes: the small-scene recipe); shown before training",
    )
    engine: Literal["ray", "local"] = Field(default="ray", description="for the chip index scan")
    overwrite: bool = Field(default=False, description="delete an existing run of this name first")

    @field_validator("run_name")
    @classmethod
    def _inside_storage(cls, v: str) -> str:
        if set(v) == {"."}:
            raise ValueError(
                f"run name '{v}' names a folder (the runs folder or the one above it), not a "
                "run inside it; give a name such as 'chihuahua-v1'"
            )
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if isinstance(self.loss.class_weights, list) and not self.loss.class_weights:
            raise ValueError("loss.class_weights is an empty list")
        return self

    def input_locations(self, *, expand: bool = True) -> list[tuple[str, str]]:
        """The scene, and the weights training starts from when given."""
        found = super().input_locations(expand=expand)
        if self.model.weights:
            found.append(("model weights", self.model.weights))
        weights = self.model.encoder_weights
        if weights and not is_published_name(weights):
            found.append(("encoder weights", weights))
        if self.model.encoder_weights_file:
            found.append(("encoder weights file", self.model.encoder_weights_file))
        return found

    def output_targets(self) -> list[Target]:
        """The run folder (resumed when it holds this run: the settings are compared) and
        the bundle when it lies outside the run folder."""
        targets = [Target("run folder", self.run_dir, "run", resumable=True)]
        if relation(real_location(self.bundle_url), real_location(self.run_dir)) is None:
            mine = _written_by(self.bundle_url, self.run_dir)
            targets.append(Target("bundle", self.bundle_url, "file", resumable=mine))
        return targets

    @property
    def run_dir(self) -> str:
        """Where Ray Train keeps the run and w2w writes its reports."""
        return storage.join(self.storage_path, self.run_name)

    @property
    def bundle_url(self) -> str:
        """Where the model bundle is written."""
        return self.bundle or storage.join(self.run_dir, BUNDLE_NAME)


def _written_by(bundle: str, run_dir: str) -> bool:
    """Whether the file at ``bundle`` is a model bundle that the run in ``run_dir`` wrote
    (its recorded training settings name that run): resuming the run may replace it."""
    from w2w.core.errors import W2WError
    from w2w.model.bundle import load_bundle

    try:
        if not storage.exists(bundle):
            return False
        written = load_bundle(bundle, verify=False, weights=False).training.get("config", {})
    except W2WError:
        return False
    run = storage.join(str(written.get("storage_path", "")), str(written.get("run_name", "")))
    return real_location(run) == real_location(run_dir)
