"""The worker's side of training: what every Ray Train worker runs, as small steps.

:func:`train_loop` is the per-worker function: :func:`build` the model, optimiser, schedule
and loss; :func:`restore` from the last checkpoint when the run resumes; then per epoch
:func:`train_epoch` (AdamW, bf16 autocast on GPU, gradient accumulation, seeded
augmentation), :func:`validate_epoch` (each rank validates its own share of the validation
chips; the confusion matrices are summed over ranks, so the metric equals one pass over all
of them), and :func:`checkpoint` (every rank reports; rank 0 attaches the checkpoint).
Checkpoints are ranked by a ``score``: validation mIoU, or minus the training loss when there
is no validation. Training stops early after ``patience`` epochs without improvement.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from w2w.core import storage
from w2w.core.classes import IGNORE
from w2w.core.grid import Window
from w2w.core.metrics import confusion, summary
from w2w.core.store import SceneStore
from w2w.model.models import build_model, has_aux_logits, load_weights
from w2w.train.augment import augment
from w2w.train.chips import ChipReader, by_chunk, chips_per_read
from w2w.train.config import TrainConfig
from w2w.train.losses import SegmentationLoss
from w2w.train.plan import TrainPlan

if TYPE_CHECKING:
    from w2w.train.pretrain.config import PretrainConfig

log = logging.getLogger("w2w")


@dataclass
class WorkerRun:
    """One worker's training state: model (DDP-wrapped and bare), optimiser, schedule, loss,
    and the run's history so far."""

    cfg: TrainConfig
    plan: TrainPlan
    rank: int
    world: int
    device: Any
    model: Any
    core: Any
    optimizer: Any
    scheduler: Any
    criterion: SegmentationLoss
    use_bf16: bool
    val_windows: list[Window]
    start_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    best_score: float = -math.inf
    since_best: int = 0

    def state(self, epoch: int) -> dict[str, Any]:
        """What a checkpoint holds."""
        return {
            "model": self.core.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": epoch,
            "history": self.history,
            "best_score": self.best_score,
            "since_best": self.since_best,
            "starts": self.starts,
        }


def train_loop(config: dict[str, Any]) -> None:
    """The per-worker training function (runs on every Ray Train worker)."""
    import ray.train

    run = build(TrainConfig.from_dict(config["cfg"]), config["plan"], config["rows_per_worker"])
    restore(run, ray.train.get_checkpoint())
    shard = ray.train.get_dataset_shard("train")
    for epoch in range(run.start_epoch, run.cfg.epochs):
        t0 = time.time()
        loss_sum = train_epoch(run, shard, epoch)
        cm = validate_epoch(run, loss_sum)
        record = epoch_record(
            epoch, _mean_loss(loss_sum), cm, run.plan, run.optimizer, time.time() - t0
        )
        record["started_at_epoch"] = run.starts[-1]
        stop = _keep_score(run, record, cm)
        checkpoint(run, epoch, record)
        if stop:
            break


def build(cfg: TrainConfig, plan: TrainPlan, rows_per_worker: int) -> WorkerRun:
    """The model (with initial weights, wrapped for DDP), optimiser, schedule and loss."""
    import ray.train
    import ray.train.torch
    import torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.seed)
    model = build_model(plan.spec)
    if cfg.model.weights:
        load_weights(model, cfg.model.weights)
    if plan.initial_encoder is not None:  # published weights, fitted on the driver
        model.encoder.load_state_dict(
            {k: torch.from_numpy(v) for k, v in plan.initial_encoder.items()}, strict=False
        )
    elif cfg.model.encoder_weights:
        load_weights(model, cfg.model.encoder_weights, encoder_only=True)
    freeze_unused(model, plan.spec.in_channels, cfg.chips.size)
    model = ray.train.torch.prepare_model(model)
    core = model.module if hasattr(model, "module") else model
    optimizer = torch.optim.AdamW(
        param_groups(core, cfg), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay
    )
    batches = max(1, math.ceil(int(rows_per_worker) / cfg.batch_size))
    steps_per_epoch = max(1, math.ceil(batches / cfg.accumulate))
    use_bf16 = device.type == "cuda" and cfg.precision != "fp32" and torch.cuda.is_bf16_supported()
    if cfg.precision == "bf16" and device.type != "cuda":
        use_bf16 = True  # explicit request: bf16 autocast on CPU too
    return WorkerRun(
        cfg=cfg,
        plan=plan,
        rank=rank,
        world=world,
        device=device,
        model=model,
        core=core,
        optimizer=optimizer,
        scheduler=make_scheduler(cfg, optimizer, steps_per_epoch),
        criterion=SegmentationLoss(cfg.loss, plan.n_classes, list(plan.class_weights)),
        use_bf16=use_bf16,
        val_windows=_share(plan.val_windows, plan.reader.chunk, rank, world),
    )


def _share(windows: tuple[Window, ...], chunk: int, rank: int, world: int) -> list[Window]:
    """This rank's validation chips: a contiguous share of them in store-chunk order, so that
    each rank reads the chunks of its own part of the scene (the confusion matrix does not
    depend on the order)."""
    ordered = [windows[i] for i in by_chunk(list(windows), chunk)]
    return ordered[rank * len(ordered) // world : (rank + 1) * len(ordered) // world]


def encoder_lr_ratio(cfg: TrainConfig) -> float:
    """The encoder's learning rate relative to the rest of the model (``optim.encoder_lr_ratio``;
    by default 0.1 for an encoder that starts from pretrained weights, else 1)."""
    if cfg.optim.encoder_lr_ratio is not None:
        return cfg.optim.encoder_lr_ratio
    return 0.1 if cfg.model.encoder_weights else 1.0


def param_groups(model: Any, cfg: TrainConfig) -> list[dict[str, Any]]:
    """The optimiser's parameter groups: the encoder's at ``encoder_lr_ratio`` x the learning
    rate, then everything else at the learning rate (one group when the ratio is 1)."""
    ratio = encoder_lr_ratio(cfg)
    trained = [p for p in model.parameters() if p.requires_grad]
    encoder = getattr(model, "encoder", None)
    if ratio == 1.0 or encoder is None:
        return [{"params": trained, "lr": cfg.optim.lr}]
    mine = {id(p) for p in encoder.parameters()}
    return [
        {"params": [p for p in trained if id(p) in mine], "lr": cfg.optim.lr * ratio},
        {"params": [p for p in trained if id(p) not in mine], "lr": cfg.optim.lr},
    ]


def make_scheduler(cfg: TrainConfig | PretrainConfig, optimizer: Any, steps_per_epoch: int) -> Any:
    """The learning-rate schedule: one-cycle, or warm-up + cosine, or constant (the settings
    of ``cfg.optim`` over ``cfg.epochs``)."""
    import torch

    total = steps_per_epoch * cfg.epochs
    if cfg.optim.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total + 1
        )
    cosine = cfg.optim.schedule == "cosine"
    warmup = int(cfg.optim.warmup_epochs * steps_per_epoch) if cosine else 0
    ratio = cfg.optim.min_lr_ratio if cosine else 1.0
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, warmup, ratio) if ratio < 1 else 1.0
    )


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_ratio``, as a function of the step."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def load_state(checkpoint: Any) -> dict[str, Any]:
    """What a checkpoint of training or pretraining holds (``state.pt``, tensors only)."""
    import torch

    with checkpoint.as_directory() as d:
        return torch.load(os.path.join(d, "state.pt"), map_location="cpu", weights_only=True)


def restore(run: WorkerRun, checkpoint: Any) -> None:
    """Continue from ``checkpoint`` (the run's last), if there is one."""
    if checkpoint is not None:
        state = load_state(checkpoint)
        run.core.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        run.start_epoch = int(state["epoch"]) + 1
        run.history = list(state["history"])
        run.starts = list(state.get("starts", []))
        run.best_score, run.since_best = float(state["best_score"]), int(state["since_best"])
    run.starts.append(run.start_epoch)  # where each (re)start of the loop began


def train_epoch(run: WorkerRun, shard: Any, epoch: int) -> Any:
    """One pass over this worker's training chips; returns (sum of loss x labelled pixels,
    labelled pixels) as a float64 tensor on the device."""
    import torch

    cfg = run.cfg
    run.model.train()
    gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch * 1009 + run.rank)
    loss_sum = torch.zeros(2, dtype=torch.float64, device=run.device)
    run.optimizer.zero_grad(set_to_none=True)
    aux = has_aux_logits(run.core) and cfg.loss.spectral_aux > 0
    step = 0
    batches = shard.iter_torch_batches(
        batch_size=cfg.batch_size,
        dtypes={"image": torch.float32, "label": torch.long},
        device=run.device,
        local_shuffle_buffer_size=max(cfg.batch_size * 4, 16),
        local_shuffle_seed=cfg.seed + epoch,
    )
    for step, batch in enumerate(batches, start=1):
        x, y = augment(batch["image"], batch["label"], cfg.augment, gen)
        with torch.autocast(
            device_type=run.device.type, dtype=torch.bfloat16, enabled=run.use_bf16
        ):
            out = run.model(x, return_aux=True) if aux else run.model(x)
        logits, aux_logits = out if aux else (out, None)
        loss = run.criterion(logits, y)
        if aux_logits is not None:
            loss = loss + cfg.loss.spectral_aux * run.criterion(aux_logits, y)
        (loss / cfg.accumulate).backward()
        labelled = int((y != IGNORE).sum())
        loss_sum += torch.tensor(
            [float(loss.detach()) * labelled, labelled], dtype=torch.float64, device=run.device
        )
        if step % cfg.accumulate == 0:
            _optimizer_step(run)
    if step % cfg.accumulate:
        _optimizer_step(run)
    return loss_sum


def _optimizer_step(run: WorkerRun) -> None:
    import torch

    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    scheduler = run.scheduler
    total = getattr(scheduler, "total_steps", None)
    one_cycle = isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR)
    if one_cycle and total is not None and scheduler.last_epoch + 1 >= total:
        return
    scheduler.step()


def validate_epoch(run: WorkerRun, loss_sum: Any) -> np.ndarray:
    """The validation confusion matrix summed over all ranks (``loss_sum`` is summed too)."""
    import torch
    import torch.distributed as dist

    distributed = run.world > 1 and dist.is_initialized()
    if distributed:
        # Each rank's last forward pass updated its own batch-norm statistics; validate
        # every rank with rank 0's (the ones the checkpoint saves).
        for buf in run.core.buffers():
            dist.broadcast(buf, src=0)
    cm = validate(
        run.core,
        run.plan.reader,
        run.val_windows,
        run.plan.n_classes,
        run.device,
        run.cfg.val_batch_size,
        run.use_bf16,
    )
    cm_t = torch.as_tensor(cm, dtype=torch.float64, device=run.device)
    if distributed:
        dist.all_reduce(loss_sum)
        dist.all_reduce(cm_t)
    return cm_t.cpu().numpy().astype(np.int64)


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
    # Read many chips at once (those of a chunk come from one read), forward a batch at a time.
    group = chips_per_read(reader, batch_size)
    with torch.no_grad():
        for g in range(0, len(windows), group):
            chip_images, chip_labels = reader.read(windows[g : g + group], store)
            for i in range(0, len(chip_images), batch_size):
                images, labels = chip_images[i : i + batch_size], chip_labels[i : i + batch_size]
                x = torch.from_numpy(images).to(device)
                with torch.autocast(
                    device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16
                ):
                    logits = model(x)
                pred = logits.float().argmax(dim=1).cpu().numpy()
                cm += confusion(labels, pred, n_classes, mask=labels != IGNORE)
    model.train(was_training)
    return cm


def _mean_loss(loss_sum: Any) -> float:
    return float(loss_sum[0] / loss_sum[1]) if float(loss_sum[1]) else float("nan")


def _keep_score(run: WorkerRun, record: dict[str, Any], cm: np.ndarray) -> bool:
    """Score the epoch, append it to the history; whether training should stop early."""
    score = record["val_miou"] if cm.sum() > 0 else -record["train_loss"]
    record["score"] = score
    if score > run.best_score:
        run.best_score, run.since_best = score, 0
    else:
        run.since_best += 1
    run.history.append(record)
    return run.cfg.patience is not None and run.since_best >= run.cfg.patience


def checkpoint(run: WorkerRun, epoch: int, record: dict[str, Any]) -> None:
    """Report the epoch on every rank (a barrier); rank 0 attaches the checkpoint."""
    import ray.train
    import torch

    flat = {k: v for k, v in record.items() if not isinstance(v, (list, dict))}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = None
        if run.rank == 0:
            torch.save(run.state(epoch), os.path.join(tmp, "state.pt"))
            ckpt = ray.train.Checkpoint.from_directory(tmp)
            write_progress(run.cfg.run_dir, run.history)
        ray.train.report(flat, checkpoint=ckpt)


def freeze_unused(model: Any, in_channels: int, chip_size: int) -> list[str]:
    """Stop training parameters that the forward pass never uses (e.g. the deeper stages of
    an encoder built with a smaller ``encoder_depth``); DDP requires every trained parameter
    to receive a gradient. A model may return a tuple of outputs. Returns the names frozen."""
    import torch

    was_training = model.training
    model.eval()  # the probe must not update batch-norm statistics
    side = max(32, min(chip_size, 64))
    x = torch.zeros(1, in_channels, side, side)
    out = model(x)
    sum(o.float().sum() for o in (out if isinstance(out, tuple) else (out,))).backward()
    frozen = []
    for name, p in model.named_parameters():
        if p.requires_grad and p.grad is None:
            p.requires_grad_(False)
            frozen.append(name)
        p.grad = None
    model.train(was_training)
    return frozen


def epoch_record(
    epoch: int,
    train_loss: float,
    cm: np.ndarray,
    plan: TrainPlan,
    optimizer: Any,
    seconds: float,
) -> dict[str, Any]:
    """One row of the run's metrics history."""
    s = summary(cm, [c.name for c in plan.classes])
    return {
        "epoch": epoch,
        "train_loss": train_loss,
        "lr": float(optimizer.param_groups[-1]["lr"]),
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


def _finite(v: float) -> float:
    return float(v) if v is not None and math.isfinite(v) else 0.0


def history_csv(history: list[dict[str, Any]]) -> str:
    """The metrics history as CSV (scalar columns only)."""
    import csv
    import io

    keys = [k for k in history[0] if not isinstance(history[0][k], (list, dict))] if history else []
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    writer.writeheader()
    for h in history:
        writer.writerow(h)
    return buf.getvalue()


def write_progress(run_dir: str, history: list[dict[str, Any]]) -> None:
    """Rank 0 keeps metrics.json / metrics.csv in the run directory current, epoch by epoch
    (of training or pretraining); a failure to write them is a warning, never a stop."""
    try:
        storage.atomic_write_bytes(
            storage.join(run_dir, "metrics.json"), json.dumps(history).encode()
        )
        storage.atomic_write_bytes(
            storage.join(run_dir, "metrics.csv"), history_csv(history).encode()
        )
    except Exception as exc:  # noqa: BLE001 - progress files must never stop training
        log.warning("could not write progress metrics: %s", exc)
