"""Self-supervised pretraining: scene chips into a Ray Train ``TorchTrainer``, DDP on CPUs or
GPUs, with the same workers, checkpoints, resumption and storage as ``w2w train``.

:func:`pretrain` checks everything on the driver (:mod:`.plan`), claims the run
(resumed when its name and settings match), streams the chips through Ray Data to workers that
run :func:`.worker.pretrain_loop`, and writes the encoder of the last epoch as an
encoder file (:mod:`w2w.model.encoder_file`) that ``train --encoder-weights`` takes, with the
run's ``metrics.json``/``metrics.csv`` beside the checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from w2w.core.errors import StageFailedError
from w2w.core.outputs import cleanup
from w2w.model.encoder_file import EncoderFile, save_encoder
from w2w.train.chips import chip_bytes, chip_dataset
from w2w.train.plan import release_run
from w2w.train.pretrain.config import PretrainConfig
from w2w.train.pretrain.plan import PretrainPlan, claim_run, prepare
from w2w.train.pretrain.worker import pretrain_loop
from w2w.train.run import (
    fit_interruptibly,
    fits_in_object_store,
    ray_filesystem,
    ray_storage_path,
    require_workers,
    scaling,
    split_in_order,
    training_error,
)
from w2w.train.worker import load_state, write_progress


@dataclass(frozen=True)
class PretrainReport:
    """What pretraining produced."""

    output: str
    run_dir: str
    epochs_run: int
    chips: dict[str, Any]
    history: list[dict[str, Any]]
    starts: list[int]
    content_hash: str

    @property
    def first_loss(self) -> float:
        """The loss of the first epoch."""
        return float(self.history[0]["loss"])

    @property
    def last_loss(self) -> float:
        """The loss of the last epoch."""
        return float(self.history[-1]["loss"])


def pretrain(cfg: PretrainConfig, *, progress: bool = True) -> PretrainReport:
    """Pretrain an encoder on a scene store and write its encoder file; resumes a run of the
    same name. With ``overwrite`` the old run is set aside and removed only when the new one
    finished."""
    from w2w.core.runtime import ensure_ray, quiet_ray_data

    plan = prepare(cfg, progress=progress)
    ensure_ray()
    quiet_ray_data()
    nbytes = len(plan.rows) * chip_bytes(len(plan.bands), cfg.chip_size)
    cache = fits_in_object_store(cfg.cache_chips, nbytes)
    require_workers(cfg.workers, cache=cache, what="pretraining workers")
    aside = claim_run(cfg, plan)
    try:
        report = _fit(cfg, plan, cache=cache)
    except BaseException:
        cleanup("putting the previous run back", release_run, cfg, aside, succeeded=False)
        raise
    release_run(cfg, aside, succeeded=True)
    return report


def _fit(cfg: PretrainConfig, plan: PretrainPlan, *, cache: bool) -> PretrainReport:
    from ray.data import DataContext
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train import LoggingConfig as TrainLoggingConfig
    from ray.train.torch import TorchTrainer

    context = DataContext.get_current()
    before = context.execution_options.preserve_order
    context.execution_options.preserve_order = True  # the order decides the batches
    try:
        ds = chip_dataset(
            list(plan.rows), plan.reader, batch_size=max(4, cfg.batch_size), chunk_order=cache
        )
        if cache:
            ds = ds.materialize()
    finally:
        context.execution_options.preserve_order = before
    trainer = TorchTrainer(
        pretrain_loop,
        train_loop_config={
            "cfg": cfg.to_dict(),
            "plan": plan.for_workers(),
            "rows_per_worker": len(plan.rows) // cfg.workers.num_workers,
        },
        scaling_config=scaling(cfg.workers),
        run_config=RunConfig(
            name=cfg.run_name,
            storage_path=ray_storage_path(cfg.storage_path),
            storage_filesystem=ray_filesystem(cfg.storage_path),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
            logging_config=TrainLoggingConfig(log_level="WARNING"),
        ),
        datasets={"train": ds},
        dataset_config=split_in_order(True),
    )
    result = fit_interruptibly(trainer)
    if result.error is not None:
        raise training_error(result.error)
    return finish(cfg, plan, result)


def finish(cfg: PretrainConfig, plan: PretrainPlan, result: Any) -> PretrainReport:
    """Write the last epoch's encoder as an encoder file, and the run's metrics."""
    if result.checkpoint is None:
        raise StageFailedError("pretraining finished without a checkpoint")
    state = load_state(result.checkpoint)
    history = list(state["history"])
    encoder_state = {
        k.removeprefix("encoder."): v for k, v in state["model"].items() if k.startswith("encoder.")
    }
    saved = save_encoder(
        cfg.output_url,
        EncoderFile(
            spec=plan.spec,
            bands=plan.bands,
            normalizer=plan.normalizer,
            chip_size=cfg.chip_size,
            method={"name": "vicreg-dense", "views": cfg.views.to_dict(), **cfg.vicreg.to_dict()},
            pretraining={
                "config": cfg.to_dict(),
                "chips": plan.chips,
                "epochs_run": len(history),
                "history": history,
            },
            scene=plan.scene,
        ),
        encoder_state,
    )
    write_progress(cfg.run_dir, history)
    return PretrainReport(
        output=cfg.output_url,
        run_dir=cfg.run_dir,
        epochs_run=len(history),
        chips=plan.chips,
        history=history,
        starts=[int(s) for s in state.get("starts", [0])],
        content_hash=saved.content_hash,
    )
