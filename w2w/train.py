"""Training: Ray Data chips into a Ray Train (V2) ``TorchTrainer``, DDP on CPUs or GPUs.

The driver validates everything first (model by name, chip size against the encoder, bands,
classes), indexes the chips, splits them spatially and builds the Ray Data pipeline; then each
worker runs :func:`train_loop`: AdamW with warm-up + cosine (or one-cycle), mixed precision
(bf16 on GPU), gradient accumulation, seeded augmentation, and per-epoch validation whose
confusion matrix is summed over all workers (each validates its own share of the validation
chips). Every rank calls ``ray.train.report``; rank 0 attaches the checkpoint. Checkpoints are
kept by validation mIoU; training stops early when it stops improving; re-running with the
same run name and storage path resumes from the last checkpoint.

At the end the best checkpoint becomes a model bundle (see :mod:`w2w.bundle`), and the run
directory gets ``metrics.json``, ``metrics.csv``, ``learning_curves.png`` and
``confusion_matrix.png``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from w2w import storage
from w2w.augment import AugmentConfig, augment
from w2w.bundle import Bundle, save_bundle
from w2w.chips import (
    IGNORE,
    ChipConfig,
    ChipReader,
    chip_dataset,
    chip_index,
    class_weights,
    describe_selection,
    label_lut,
    select_chips,
)
from w2w.config import PathStr, StageConfig
from w2w.errors import ConfigError, InputError, StageFailedError
from w2w.grid import Window
from w2w.losses import LossConfig, SegmentationLoss
from w2w.metrics import confusion, summary
from w2w.models import ModelSpec, build_model, check_chip_size, load_weights
from w2w.normalization import Normalizer
from w2w.split import SplitConfig, SplitPlan, make_split
from w2w.store import SceneStore

log = logging.getLogger("w2w")

BUNDLE_NAME = "model.safetensors"


class ModelConfig(StageConfig):
    """Architecture, encoder and optional initial weights."""

    stage_name: ClassVar[str] = "model"

    arch: str = "Unet"
    encoder: str = "resnet34"
    options: dict[str, Any] = Field(
        default_factory=dict, description="extra smp arguments, e.g. decoder_channels"
    )
    weights: PathStr | None = Field(default=None, description="whole-model weights to start from")
    encoder_weights: PathStr | None = Field(
        default=None, description="encoder weights to start from"
    )


class OptimConfig(StageConfig):
    """AdamW and its learning-rate schedule."""

    stage_name: ClassVar[str] = "optim"

    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    schedule: Literal["cosine", "onecycle", "constant"] = "cosine"
    warmup_epochs: float = Field(default=1.0, ge=0, description="linear warm-up (cosine only)")
    min_lr_ratio: float = Field(default=0.01, ge=0, le=1)


class WorkersConfig(StageConfig):
    """How many training workers and what each gets."""

    stage_name: ClassVar[str] = "workers"

    num_workers: int = Field(default=2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(default=1, gt=0)
    gpus_per_worker: float = Field(default=1, gt=0)
    accelerator_type: str | None = Field(default=None, description="e.g. A10G")


class TrainConfig(StageConfig):
    """Settings of ``w2w train``."""

    stage_name: ClassVar[str] = "train"

    scene: PathStr = Field(description="scene store with labels")
    run_name: str = Field(default="w2w-run", pattern=r"^[A-Za-z0-9._-]+$")
    storage_path: PathStr = Field(default="runs", description="local folder or s3:// prefix")
    bundle: PathStr | None = Field(default=None, description=f"default: <run dir>/{BUNDLE_NAME}")
    model: ModelConfig = Field(default_factory=ModelConfig)
    chips: ChipConfig = Field(default_factory=ChipConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    workers: WorkersConfig = Field(default_factory=WorkersConfig)
    normalization: Literal["percentile", "zscore"] = "percentile"
    epochs: int = Field(default=20, ge=1)
    batch_size: int = Field(default=8, ge=1)
    accumulate: int = Field(default=1, ge=1, description="gradient accumulation steps")
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    patience: int | None = Field(default=6, ge=1, description="early stopping; None = off")
    max_failures: int = Field(default=2, ge=0, description="worker failures survived")
    keep_checkpoints: int = Field(default=2, ge=1)
    cache_chips: Literal["auto", "yes", "no"] = "auto"
    val_batch_size: int = Field(default=16, ge=1)
    seed: int = 0
    reproducible: bool = Field(
        default=True,
        description="stream the chips in a fixed order, so that a seed gives the same model on "
        "CPU; costs a little throughput (a slow read holds later chips back), so large GPU "
        "runs may turn it off",
    )
    engine: Literal["ray", "local"] = Field(default="ray", description="for the chip index scan")
    overwrite: bool = Field(default=False, description="delete an existing run of this name first")

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if isinstance(self.loss.class_weights, list) and not self.loss.class_weights:
            raise ValueError("loss.class_weights is an empty list")
        return self

    @property
    def run_dir(self) -> str:
        """Where Ray Train keeps the run and w2w writes its reports."""
        return storage.join(self.storage_path, self.run_name)

    @property
    def bundle_url(self) -> str:
        """Where the model bundle is written."""
        return (
            storage.normalize(self.bundle)
            if self.bundle
            else storage.join(self.run_dir, BUNDLE_NAME)
        )


@dataclass(frozen=True)
class TrainReport:
    """What training produced."""

    bundle: str
    run_dir: str
    epochs_run: int
    best_epoch: int
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    chips: dict[str, Any]
    starts: list[int]  # the epoch each (re)start of training began at: [0, 3] = resumed at 3


# -- driver ---------------------------------------------------------------------------------


def prepare(cfg: TrainConfig, *, progress: bool = True) -> dict[str, Any]:
    """Check the inputs and build the plan every worker receives (a plain dict)."""
    store = SceneStore.open(cfg.scene)
    info = store.info
    if not info.has_label:
        raise InputError(
            f"scene {cfg.scene} has no labels; ingest it with `w2w ingest ... --label LABELS.tif`"
        )
    classes = [c for c in info.classes if c.id != info.unlabelled]
    if len(classes) < 2:
        raise InputError(
            f"scene {cfg.scene} has {len(classes)} labelled class(es); training needs at least 2"
        )
    n_classes = len(classes)
    if isinstance(cfg.loss.class_weights, list) and len(cfg.loss.class_weights) != n_classes:
        raise ConfigError(
            f"loss.class_weights has {len(cfg.loss.class_weights)} values but the scene has "
            f"{n_classes} classes ({', '.join(c.name for c in classes)})"
        )
    spec = ModelSpec(
        cfg.model.arch, cfg.model.encoder, info.n_bands, n_classes, dict(cfg.model.options)
    )
    model = build_model(spec)
    check_chip_size(model, spec, cfg.chips.size)
    del model
    normalizer = Normalizer.from_stats(info.stats, list(info.band_names), cfg.normalization)
    lut = label_lut(classes, info.unlabelled)

    index = chip_index(
        store, cfg.chips.size, cfg.chips.step, lut, n_classes, engine=cfg.engine, progress=progress
    )
    try:
        plan = make_split(store.grid, cfg.chips.size, cfg.chips.step, cfg.split, index.labelled)
    except ValueError as exc:
        raise ConfigError(f"split: {exc}") from None
    train_sel = select_chips(
        index, plan, "train", cfg.chips, seed=cfg.seed, balance=cfg.chips.balance
    )
    val_sel = select_chips(index, plan, "val", cfg.chips)
    test_sel = select_chips(index, plan, "test", cfg.chips)
    if not len(train_sel):
        raise InputError(
            f"no training chip of {cfg.chips.size} px has {cfg.chips.min_labelled_pixels}+ "
            f"labelled and {cfg.chips.min_valid_fraction:.0%}+ valid pixels in the training "
            "split; lower "
            "chips.min_valid_fraction or chips.size, or check the labels"
        )
    if cfg.loss.class_weights == "auto":
        weights = class_weights(index, train_sel, n_classes)
    elif cfg.loss.class_weights == "none":
        weights = [1.0] * n_classes
    else:
        weights = [float(w) for w in cfg.loss.class_weights]
    chips_report = describe_selection(
        index, plan, {"train": train_sel, "val": val_sel, "test": test_sel}
    )
    log.info(
        "chips: %d train (%d samples), %d val, %d test",
        len(train_sel),
        sum(train_sel.repeats),
        len(val_sel),
        len(test_sel),
    )
    reader = ChipReader(store.url, cfg.chips.size, normalizer.to_dict(), tuple(int(v) for v in lut))
    # The selection lists chips in scene order, a repeated chip's copies side by side. The
    # training loop shuffles only within a small buffer, so in that order every batch would
    # hold neighbouring (overlapping) chips of one small area: noisy batch-norm statistics
    # and gradients that see one land cover at a time. Shuffle once here, seeded.
    rows = train_sel.rows
    train_rows = [rows[i] for i in np.random.default_rng(cfg.seed).permutation(len(rows))]
    return {
        "spec": spec.to_dict(),
        "classes": [c.to_dict() for c in classes],
        "bands": list(info.band_names),
        "nodata": info.nodata,
        "normalizer": normalizer.to_dict(),
        "reader": reader,
        "train_rows": train_rows,
        "val_windows": [w.to_dict() for w in val_sel.windows],
        "class_weights": weights,
        "split": plan.to_dict(),
        "chips": chips_report,
        "scene": {"url": store.url, "grid": store.grid.to_attrs()},
    }


def train(cfg: TrainConfig, *, progress: bool = True) -> TrainReport:
    """Train a model on a scene store and write its bundle; resumes a run of the same name."""
    import ray
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train import LoggingConfig as TrainLoggingConfig
    from ray.train.torch import TorchTrainer

    from w2w.runtime import ensure_ray, quiet_ray_data

    ensure_ray()
    quiet_ray_data()
    plan = prepare(cfg, progress=progress)
    claim_run(cfg, plan)
    # Ray Data hands out blocks as their reads finish unless asked to keep their order; the
    # order decides the batches, so it must be fixed for a seed to give the same model. A
    # dataset keeps the context it was made in, and the trainer's split its own options.
    from ray.data import DataContext

    context = DataContext.get_current()
    before = context.execution_options.preserve_order
    context.execution_options.preserve_order = cfg.reproducible
    try:
        ds = chip_dataset(plan["train_rows"], plan["reader"], batch_size=max(4, cfg.batch_size))
        if _should_cache(cfg, plan, ray):
            ds = ds.materialize()
    finally:
        context.execution_options.preserve_order = before
    with warnings.catch_warnings():  # Ray's own defaults trip its deprecation warnings
        warnings.simplefilter("ignore", DeprecationWarning)
        ingest_options = DataConfig.default_ingest_options()
        ingest_options.preserve_order = cfg.reproducible

    workers = cfg.workers
    resources: dict[str, float] = {"CPU": workers.cpus_per_worker}
    if workers.use_gpu:
        resources["GPU"] = workers.gpus_per_worker
    scaling = ScalingConfig(
        num_workers=workers.num_workers,
        use_gpu=workers.use_gpu,
        resources_per_worker=resources,
        accelerator_type=workers.accelerator_type,
    )
    run_config = RunConfig(
        name=cfg.run_name,
        storage_path=_ray_storage_path(cfg.storage_path),
        storage_filesystem=_ray_filesystem(cfg.storage_path),
        failure_config=FailureConfig(max_failures=cfg.max_failures),
        checkpoint_config=CheckpointConfig(
            num_to_keep=cfg.keep_checkpoints,
            checkpoint_score_attribute="score",
            checkpoint_score_order="max",
        ),
        logging_config=TrainLoggingConfig(log_level="WARNING"),
    )
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={
            "cfg": cfg.to_dict(),
            "plan": {k: v for k, v in plan.items() if k != "train_rows"},
            # The split across workers is equal: each gets the same number of rows.
            "rows_per_worker": len(plan["train_rows"]) // workers.num_workers,
        },
        scaling_config=scaling,
        run_config=run_config,
        datasets={"train": ds},
        dataset_config=DataConfig(datasets_to_split=["train"], execution_options=ingest_options),
    )
    try:
        result = trainer.fit()
    except Exception as exc:
        raise _training_error(exc) from exc
    if result.error is not None:
        raise _training_error(result.error)
    return finish(cfg, plan, result)


RUN_FILE = "w2w-run.json"


def run_fingerprint(cfg: TrainConfig, plan: dict[str, Any]) -> dict[str, Any]:
    """What must not change between a run and its resumption: scene, model, chips, split."""
    return {
        "scene": plan["scene"]["url"],
        "model": plan["spec"],
        "chips": cfg.chips.to_dict(),
        "split": cfg.split.to_dict(),
        "normalization": cfg.normalization,
        "classes": plan["classes"],
    }


def claim_run(cfg: TrainConfig, plan: dict[str, Any]) -> None:
    """Start a new run, or check that an existing run of this name can be resumed.

    Ray Train resumes any run with the same name and storage path; resuming one that was
    made with another model or data would fail deep inside a worker, so the settings that
    define a run are recorded in the run directory and compared here.
    """
    run_file = storage.join(cfg.run_dir, RUN_FILE)
    if cfg.overwrite and storage.exists(cfg.run_dir):
        storage.remove_tree(cfg.run_dir)
    mine = run_fingerprint(cfg, plan)
    if storage.exists(run_file):
        theirs = json.loads(storage.read_bytes(run_file))
        if theirs != mine:
            changed = sorted(k for k in mine if mine.get(k) != theirs.get(k))
            raise ConfigError(
                f"run '{cfg.run_name}' in {cfg.storage_path} was started with other "
                f"{', '.join(changed)} settings and cannot be resumed with these; choose another "
                "--run-name, or pass overwrite to start it again"
            )
        log.info("resuming run %s from its last checkpoint", cfg.run_name)
    elif storage.exists(cfg.run_dir) and _has_checkpoints(cfg.run_dir):
        raise ConfigError(f"{cfg.run_dir} holds a run w2w did not start; choose another --run-name")
    else:
        storage.atomic_write_bytes(run_file, json.dumps(mine, indent=2, sort_keys=True).encode())


def _has_checkpoints(run_dir: str) -> bool:
    fs = storage.filesystem(run_dir)
    try:
        return any("checkpoint_" in p for p in fs.ls(run_dir, detail=False))
    except FileNotFoundError:
        return False


def _should_cache(cfg: TrainConfig, plan: dict[str, Any], ray: Any) -> bool:
    if cfg.cache_chips != "auto":
        return cfg.cache_chips == "yes"
    n = len(plan["train_rows"])
    bands = len(plan["bands"])
    size = cfg.chips.size
    nbytes = n * (bands * 4 + 1) * size * size
    store_bytes = ray.available_resources().get("object_store_memory", 0)
    return nbytes < 0.3 * store_bytes


def _ray_storage_path(path: str) -> str:
    url = storage.normalize(path)
    return url.removeprefix("s3://") if _ray_filesystem(path) is not None else url


def _ray_filesystem(path: str) -> Any:
    """A pyarrow S3 filesystem when an S3-compatible endpoint is configured, else None."""
    url = storage.normalize(path)
    endpoint = storage.storage_options(url).get("endpoint_url") if storage.is_remote(url) else None
    if not endpoint:
        return None
    import pyarrow.fs

    scheme, _, host = endpoint.partition("://")
    return pyarrow.fs.S3FileSystem(endpoint_override=host, scheme=scheme or "https")


def _training_error(exc: BaseException) -> Exception:
    """The user-facing error for a failed ``fit()``: a worker's W2WError as is, else the last
    line of the worker's traceback."""
    from w2w.errors import W2WError
    from w2w.runtime import unwrap_ray_error

    inner = unwrap_ray_error(exc)
    if isinstance(inner, W2WError):
        return inner
    for cause in (getattr(inner, "worker_failures", None) or {}).values():
        found = unwrap_ray_error(cause)
        if isinstance(found, W2WError):
            return found
    lines = [ln for ln in str(inner).strip().splitlines() if ln.strip()]
    return StageFailedError(f"training failed: {lines[-1] if lines else type(inner).__name__}")


def finish(cfg: TrainConfig, plan: dict[str, Any], result: Any) -> TrainReport:
    """Turn the best checkpoint into a bundle and write the run's reports."""
    import torch

    from w2w.reports import plot_confusion, plot_learning_curves

    candidates = list(result.best_checkpoints or [])
    if not candidates and result.checkpoint is not None:
        candidates = [(result.checkpoint, result.metrics or {})]
    if not candidates:
        raise StageFailedError("training finished without a checkpoint")
    best_ckpt, _ = max(candidates, key=lambda cm: cm[1].get("score", -math.inf))
    latest_state = _load_state(result.checkpoint or best_ckpt, torch)
    best_state = _load_state(best_ckpt, torch)
    history = latest_state["history"]
    best_epoch = int(best_state["epoch"])
    best_record = next(h for h in history if h["epoch"] == best_epoch)

    from w2w.store import ClassInfo

    classes = tuple(ClassInfo.from_dict(c) for c in plan["classes"])
    metrics = {
        k: v for k, v in best_record.items() if k.startswith("val_") or k in ("epoch", "train_loss")
    }
    bundle = Bundle(
        spec=ModelSpec.from_dict(plan["spec"]),
        bands=tuple(plan["bands"]),
        normalizer=Normalizer.from_dict(plan["normalizer"]),
        chip_size=cfg.chips.size,
        classes=classes,
        nodata=plan["nodata"],
        metrics=metrics,
        split=SplitPlan.from_dict(plan["split"]),
        training={"config": cfg.to_dict(), "chips": plan["chips"], "epochs_run": len(history)},
        scene=plan["scene"],
    )
    saved = save_bundle(cfg.bundle_url, bundle, best_state["model"])

    run_dir = cfg.run_dir
    storage.atomic_write_bytes(
        storage.join(run_dir, "metrics.json"), json.dumps(history, indent=2).encode()
    )
    storage.atomic_write_bytes(storage.join(run_dir, "metrics.csv"), _history_csv(history).encode())
    names = [c.name for c in classes]
    if best_record.get("val_confusion"):
        storage.atomic_write_bytes(
            storage.join(run_dir, "confusion_matrix.png"),
            plot_confusion(
                np.asarray(best_record["val_confusion"]), names, f"validation, epoch {best_epoch}"
            ),
        )
    storage.atomic_write_bytes(
        storage.join(run_dir, "learning_curves.png"), plot_learning_curves(history)
    )
    return TrainReport(
        bundle=cfg.bundle_url,
        run_dir=run_dir,
        epochs_run=len(history),
        best_epoch=best_epoch,
        metrics={**metrics, "content_hash": saved.content_hash},
        history=history,
        chips=plan["chips"],
        starts=[int(s) for s in latest_state.get("starts", [0])],
    )


def _load_state(checkpoint: Any, torch: Any) -> dict[str, Any]:
    with checkpoint.as_directory() as d:
        return torch.load(os.path.join(d, "state.pt"), map_location="cpu", weights_only=True)


def _history_csv(history: list[dict[str, Any]]) -> str:
    keys = [k for k in history[0] if not isinstance(history[0][k], (list, dict))] if history else []
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    writer.writeheader()
    for h in history:
        writer.writerow(h)
    return buf.getvalue()


# -- worker -----------------------------------------------------------------------------------


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_ratio``, as a function of the step."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def train_loop(config: dict[str, Any]) -> None:
    """The per-worker training function (runs on every Ray Train worker)."""
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    cfg = TrainConfig.from_dict(config["cfg"])
    plan = config["plan"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.seed)
    spec = ModelSpec.from_dict(plan["spec"])
    n_classes = spec.classes

    model = build_model(spec)
    if cfg.model.weights:
        load_weights(model, cfg.model.weights)
    if cfg.model.encoder_weights:
        load_weights(model, cfg.model.encoder_weights, encoder_only=True)
    freeze_unused(model, spec.in_channels, cfg.chips.size)
    model = ray.train.torch.prepare_model(model)
    core = model.module if hasattr(model, "module") else model
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay
    )

    shard = ray.train.get_dataset_shard("train")
    n_rows = int(config["rows_per_worker"])
    batches = max(1, math.ceil(n_rows / cfg.batch_size))
    steps_per_epoch = max(1, math.ceil(batches / cfg.accumulate))
    total = steps_per_epoch * cfg.epochs
    if cfg.optim.schedule == "onecycle":
        scheduler: Any = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg.optim.lr, total_steps=total + 1
        )
    else:
        warmup = (
            int(cfg.optim.warmup_epochs * steps_per_epoch) if cfg.optim.schedule == "cosine" else 0
        )
        ratio = cfg.optim.min_lr_ratio if cfg.optim.schedule == "cosine" else 1.0
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(s, total, warmup, ratio) if ratio < 1 else 1.0
        )
    criterion = SegmentationLoss(cfg.loss, n_classes, plan["class_weights"])
    use_bf16 = device.type == "cuda" and cfg.precision != "fp32" and torch.cuda.is_bf16_supported()
    if cfg.precision == "bf16" and device.type != "cuda":
        use_bf16 = True  # explicit request: bf16 autocast on CPU too
    reader: ChipReader = plan["reader"]
    val_windows = [Window(**w) for w in plan["val_windows"]][rank::world]

    start_epoch, history, starts = 0, [], []
    best_score, since_best = -math.inf, 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = torch.load(os.path.join(d, "state.pt"), map_location="cpu", weights_only=True)
        core.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch = int(state["epoch"]) + 1
        history = list(state["history"])
        starts = list(state.get("starts", []))
        best_score, since_best = float(state["best_score"]), int(state["since_best"])
    starts.append(start_epoch)  # where each (re)start of the loop began

    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.time()
        model.train()
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch * 1009 + rank)
        loss_sum = torch.zeros(2, dtype=torch.float64, device=device)
        optimizer.zero_grad(set_to_none=True)
        step = 0
        for step, batch in enumerate(
            shard.iter_torch_batches(
                batch_size=cfg.batch_size,
                dtypes={"image": torch.float32, "label": torch.long},
                device=device,
                local_shuffle_buffer_size=max(cfg.batch_size * 4, 16),
                local_shuffle_seed=cfg.seed + epoch,
            ),
            start=1,
        ):
            x, y = augment(batch["image"], batch["label"], cfg.augment, gen)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
                logits = model(x)
            loss = criterion(logits, y)
            aux = getattr(core, "spectral_logits", None)
            if aux is not None and cfg.loss.spectral_aux > 0:
                loss = loss + cfg.loss.spectral_aux * criterion(aux, y)
            (loss / cfg.accumulate).backward()
            labelled = int((y != IGNORE).sum())
            loss_sum += torch.tensor(
                [float(loss.detach()) * labelled, labelled], dtype=torch.float64, device=device
            )
            if step % cfg.accumulate == 0:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                _step_scheduler(scheduler)
        if step % cfg.accumulate:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            _step_scheduler(scheduler)

        if world > 1 and dist.is_initialized():
            # Each rank's last forward pass updated its own batch-norm statistics; validate
            # every rank with rank 0's (the ones the checkpoint saves).
            for buf in core.buffers():
                dist.broadcast(buf, src=0)
        cm = validate(core, reader, val_windows, n_classes, device, cfg.val_batch_size, use_bf16)
        cm_t = torch.as_tensor(cm, dtype=torch.float64, device=device)
        if world > 1 and dist.is_initialized():
            dist.all_reduce(loss_sum)
            dist.all_reduce(cm_t)
        cm = cm_t.cpu().numpy().astype(np.int64)
        train_loss = float(loss_sum[0] / loss_sum[1]) if float(loss_sum[1]) else float("nan")
        record = epoch_record(epoch, train_loss, cm, plan, optimizer, time.time() - t0)
        record["started_at_epoch"] = starts[-1]
        score = record["val_miou"] if cm.sum() > 0 else -train_loss
        record["score"] = score
        if score > best_score:
            best_score, since_best = score, 0
        else:
            since_best += 1
        history.append(record)
        stop = cfg.patience is not None and since_best >= cfg.patience

        flat = {k: v for k, v in record.items() if not isinstance(v, (list, dict))}
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if rank == 0:
                torch.save(
                    {
                        "model": core.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "epoch": epoch,
                        "history": history,
                        "best_score": best_score,
                        "since_best": since_best,
                        "starts": starts,
                    },
                    os.path.join(tmp, "state.pt"),
                )
                ckpt = ray.train.Checkpoint.from_directory(tmp)
                _write_progress(cfg, history)
            ray.train.report(flat, checkpoint=ckpt)
        if stop:
            break


def freeze_unused(model: Any, in_channels: int, chip_size: int) -> list[str]:
    """Stop training parameters that the forward pass never uses (e.g. the deeper stages of
    an encoder built with a smaller ``encoder_depth``); DDP requires every trained parameter
    to receive a gradient. Returns the names frozen."""
    import torch

    was_training = model.training
    model.eval()  # the probe must not update batch-norm statistics
    side = max(32, min(chip_size, 64))
    x = torch.zeros(1, in_channels, side, side)
    model(x).float().sum().backward()
    frozen = []
    for name, p in model.named_parameters():
        if p.requires_grad and p.grad is None:
            p.requires_grad_(False)
            frozen.append(name)
        p.grad = None
    model.train(was_training)
    return frozen


def _step_scheduler(scheduler: Any) -> None:
    import torch

    total = getattr(scheduler, "total_steps", None)
    one_cycle = isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR)
    if one_cycle and total is not None and scheduler.last_epoch + 1 >= total:
        return
    scheduler.step()


def validate(
    model: Any,
    reader: ChipReader,
    windows: list[Window],
    n_classes: int,
    device: Any,
    batch_size: int,
    use_bf16: bool,
) -> np.ndarray:
    """Confusion matrix (reference x prediction) of ``model`` over the given chips."""
    import torch

    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    if not windows:
        return cm
    was_training = model.training
    model.eval()
    store = SceneStore.open(reader.store_url)
    with torch.no_grad():
        for i in range(0, len(windows), batch_size):
            images, labels = reader.read(windows[i : i + batch_size], store)
            x = torch.from_numpy(images).to(device)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
                logits = model(x)
            pred = logits.float().argmax(dim=1).cpu().numpy()
            cm += confusion(labels, pred, n_classes, mask=labels != IGNORE)
    model.train(was_training)
    return cm


def epoch_record(
    epoch: int,
    train_loss: float,
    cm: np.ndarray,
    plan: dict[str, Any],
    optimizer: Any,
    seconds: float,
) -> dict[str, Any]:
    """One row of the run's metrics history."""
    names = [c["name"] for c in plan["classes"]]
    s = summary(cm, names)
    record: dict[str, Any] = {
        "epoch": epoch,
        "train_loss": train_loss,
        "lr": float(optimizer.param_groups[0]["lr"]),
        "seconds": round(seconds, 3),
        "val_pixels": s["pixels"],
        "val_oa": _finite(s["overall_accuracy"]),
        "val_kappa": _finite(s["kappa"]),
        "val_miou": _finite(s["mean_iou"]),
        "val_confusion": cm.tolist(),
        "val_per_class": {
            n: {k: _finite(v) for k, v in d.items()} for n, d in s["per_class"].items()
        },
    }
    return record


def _finite(v: float) -> float:
    return float(v) if v is not None and math.isfinite(v) else 0.0


def _write_progress(cfg: TrainConfig, history: list[dict[str, Any]]) -> None:
    """Rank 0 keeps metrics.json / metrics.csv in the run directory current, epoch by epoch."""
    try:
        storage.atomic_write_bytes(
            storage.join(cfg.run_dir, "metrics.json"), json.dumps(history).encode()
        )
        storage.atomic_write_bytes(
            storage.join(cfg.run_dir, "metrics.csv"), _history_csv(history).encode()
        )
    except Exception as exc:  # noqa: BLE001 - progress files must never stop training
        log.warning("could not write progress metrics: %s", exc)
