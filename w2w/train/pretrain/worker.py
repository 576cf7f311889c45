"""The worker's side of pretraining: what every Ray Train worker runs.

:func:`pretrain_loop` builds the encoder exactly as ``w2w train`` will (cut from the same smp
model) with VICReg's projectors (:class:`.vicreg.Pretrainer`), wraps it for DDP,
restores the last checkpoint when the run resumes, then per epoch makes two views of every
batch (:mod:`.views`), turns the local feature maps back into the chips' frame and
minimises the dense VICReg loss (the global embeddings gathered over all ranks). Every epoch
is checkpointed (rank 0 attaches it; every rank reports, a barrier) with the loss, its terms
and the spread of the embeddings, which would fall towards 0 if the encoder collapsed.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from w2w.model.models import build_model
from w2w.train.pretrain.config import PretrainConfig
from w2w.train.pretrain.plan import PretrainPlan
from w2w.train.pretrain.vicreg import Pretrainer, gather, local_pairs, vicreg_loss
from w2w.train.pretrain.views import make_view, undo_batch
from w2w.train.worker import freeze_unused, load_state, make_scheduler, write_progress

#: The numbers kept per epoch besides its index, time and learning rate.
TERMS = ("loss", "global_loss", "local_loss", "invariance", "variance", "covariance", "std")


@dataclass
class PretrainRun:
    """One worker's pretraining state."""

    cfg: PretrainConfig
    rank: int
    device: Any
    model: Any
    core: Pretrainer
    optimizer: Any
    scheduler: Any
    use_bf16: bool
    batch_size: int
    start_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)

    def state(self, epoch: int) -> dict[str, Any]:
        """What a checkpoint holds."""
        return {
            "model": self.core.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": epoch,
            "history": self.history,
            "starts": self.starts,
        }


def pretrain_loop(config: dict[str, Any]) -> None:
    """The per-worker pretraining function (runs on every Ray Train worker)."""
    import ray.train

    cfg = PretrainConfig.from_dict(config["cfg"])
    run = build(cfg, config["plan"], int(config["rows_per_worker"]))
    restore(run, ray.train.get_checkpoint())
    shard = ray.train.get_dataset_shard("train")
    for epoch in range(run.start_epoch, cfg.epochs):
        t0 = time.time()
        sums = train_epoch(run, shard, epoch)
        record = {
            "epoch": epoch,
            **{k: sums.get(k, math.nan) for k in TERMS},
            "lr": float(run.optimizer.param_groups[0]["lr"]),
            "seconds": round(time.time() - t0, 3),
            "started_at_epoch": run.starts[-1],
        }
        run.history.append(record)
        checkpoint(run, epoch, record)


def build(cfg: PretrainConfig, plan: PretrainPlan, rows_per_worker: int) -> PretrainRun:
    """The encoder and projectors (wrapped for DDP), optimiser and schedule."""
    import ray.train
    import ray.train.torch
    import torch

    ctx = ray.train.get_context()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.seed)
    net = Pretrainer(build_model(plan.spec).encoder, cfg.vicreg.embedding)
    freeze_unused(net, plan.spec.in_channels, cfg.chip_size)
    model = ray.train.torch.prepare_model(net)
    core = model.module if hasattr(model, "module") else model
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay
    )
    # Whole batches only: the variance and covariance terms and batch norm need several
    # chips, and every rank must take the same number of steps (DDP).
    batch_size = max(2, min(cfg.batch_size, rows_per_worker))
    steps_per_epoch = max(1, rows_per_worker // batch_size)
    use_bf16 = device.type == "cuda" and cfg.precision != "fp32" and torch.cuda.is_bf16_supported()
    if cfg.precision == "bf16" and device.type != "cuda":
        use_bf16 = True
    return PretrainRun(
        cfg=cfg,
        rank=ctx.get_world_rank(),
        device=device,
        model=model,
        core=core,
        optimizer=optimizer,
        scheduler=make_scheduler(cfg, optimizer, steps_per_epoch),
        use_bf16=use_bf16,
        batch_size=batch_size,
    )


def restore(run: PretrainRun, checkpoint: Any) -> None:
    """Continue from ``checkpoint`` (the run's last), if there is one."""
    if checkpoint is not None:
        state = load_state(checkpoint)
        run.core.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        run.start_epoch = int(state["epoch"]) + 1
        run.history = list(state["history"])
        run.starts = list(state.get("starts", []))
    run.starts.append(run.start_epoch)


def step_loss(run: PretrainRun, images: Any, valid: Any, gen: Any) -> tuple[Any, dict[str, float]]:
    """The dense VICReg loss of one batch (two views made here) and its terms."""
    import torch

    cfg = run.cfg
    va, moves_a = make_view(images, cfg.views, gen)
    vb, moves_b = make_view(images, cfg.views, gen)
    with torch.autocast(device_type=run.device.type, dtype=torch.bfloat16, enabled=run.use_bf16):
        ga, la = run.model(va)
        gb, lb = run.model(vb)
    ga, gb, la, lb = ga.float(), gb.float(), la.float(), lb.float()
    global_loss, terms = vicreg_loss(gather(ga), gather(gb), cfg.vicreg)
    pa, pb = local_pairs(
        undo_batch(la, moves_a), undo_batch(lb, moves_b), valid, cfg.vicreg.local_positions, gen
    )
    if pa.shape[0] >= 2:
        local_loss, local_terms = vicreg_loss(pa, pb, cfg.vicreg)
    else:  # no position of this batch is valid enough: no local term (but keep DDP's graph)
        local_loss, local_terms = 0.0 * (la.sum() + lb.sum()), dict.fromkeys(terms, 0.0)
    w = cfg.vicreg.local_weight
    loss = (1 - w) * global_loss + w * local_loss
    numbers = {
        "loss": float(loss.detach()),
        "global_loss": float(global_loss.detach()),
        "local_loss": float(local_loss.detach()),
        **{k: (1 - w) * terms[k] + w * local_terms[k] for k in terms},
        "std": float(ga.detach().std(dim=0).mean()),
    }
    return loss, numbers


def train_epoch(run: PretrainRun, shard: Any, epoch: int) -> dict[str, float]:
    """One pass over this worker's chips; the mean of every term over its steps, averaged
    over the ranks."""
    import torch
    import torch.distributed as dist

    cfg = run.cfg
    run.model.train()
    gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch * 1009 + run.rank)
    totals = torch.zeros(len(TERMS) + 1, dtype=torch.float64)
    batches = shard.iter_torch_batches(
        batch_size=run.batch_size,
        dtypes={"image": torch.float32, "valid": torch.bool},
        device=run.device,
        drop_last=True,
        local_shuffle_buffer_size=max(run.batch_size * 4, 16),
        local_shuffle_seed=cfg.seed + epoch,
    )
    for batch in batches:
        loss, numbers = step_loss(run, batch["image"], batch["valid"], gen)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        run.scheduler.step()
        totals += torch.tensor([*(numbers[k] for k in TERMS), 1.0], dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals)
    steps = float(totals[-1])
    return {k: float(totals[i]) / steps for i, k in enumerate(TERMS)} if steps else {}


def checkpoint(run: PretrainRun, epoch: int, record: dict[str, Any]) -> None:
    """Report the epoch on every rank (a barrier); rank 0 attaches the checkpoint."""
    import ray.train
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = None
        if run.rank == 0:
            torch.save(run.state(epoch), os.path.join(tmp, "state.pt"))
            ckpt = ray.train.Checkpoint.from_directory(tmp)
            write_progress(run.cfg.run_dir, run.history)
        ray.train.report(dict(record), checkpoint=ckpt)
