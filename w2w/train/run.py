"""Training: Ray Data chips into a Ray Train (V2) ``TorchTrainer``, DDP on CPUs or GPUs.

The driver (:mod:`w2w.train.plan`) validates everything and builds a :class:`TrainPlan`;
:func:`train` makes the Ray Data pipeline of training chips and runs the trainer, whose
workers run :func:`w2w.train.worker.train_loop`; :func:`finish` turns the best checkpoint
into a model bundle (see :mod:`w2w.model.bundle`) and writes ``metrics.json``,
``metrics.csv``, ``learning_curves.png`` and ``confusion_matrix.png`` into the run folder.
Re-running with the same run name and storage path resumes from the last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from w2w.core import storage
from w2w.core.errors import StageFailedError
from w2w.core.outputs import cleanup
from w2w.core.plots import plot_confusion, plot_learning_curves
from w2w.core.resources import Request, require
from w2w.model.bundle import Bundle, save_bundle
from w2w.train.chips import chip_bytes, chip_dataset
from w2w.train.config import TrainConfig, WorkersConfig
from w2w.train.plan import TrainPlan, claim_run, prepare, release_run
from w2w.train.worker import history_csv, load_state, train_loop


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
    #: The settings chosen for the scene because they were left unset (see w2w.train.fit).
    fitted: dict[str, Any] = dataclasses.field(default_factory=dict)


def train(cfg: TrainConfig, *, progress: bool = True) -> TrainReport:
    """Train a model on a scene store and write its bundle; resumes a run of the same name.
    With ``overwrite`` the old run is set aside and removed only when the new one finished."""
    from w2w.core.runtime import ensure_ray, quiet_ray_data

    plan = prepare(cfg, progress=progress)  # every input checked before Ray starts
    cfg = plan.config or cfg  # with the settings left unset fitted to the scene
    ensure_ray()
    quiet_ray_data()
    # Decided once: the resource check and the dataset must agree on it.
    cache = should_cache(cfg, plan)
    require_workers(cfg.workers, cache=cache)
    aside = claim_run(cfg, plan)
    try:
        report = _fit(cfg, plan, cache=cache)
    except BaseException:
        cleanup("putting the previous run back", release_run, cfg, aside, succeeded=False)
        raise
    release_run(cfg, aside, succeeded=True)
    return report


def _fit(cfg: TrainConfig, plan: TrainPlan, *, cache: bool) -> TrainReport:
    """Run the trainer over the plan's chips and make the bundle of its best checkpoint."""
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        train_loop,
        train_loop_config={
            "cfg": cfg.to_dict(),
            "plan": plan.for_workers(),
            # The split across workers is equal: each gets the same number of rows.
            "rows_per_worker": len(plan.train_rows) // cfg.workers.num_workers,
        },
        scaling_config=scaling(cfg.workers),
        run_config=_run_config(cfg),
        datasets={"train": training_chips(cfg, plan, cache=cache)},
        dataset_config=data_config(cfg),
    )
    result = fit_interruptibly(trainer)
    if result.error is not None:
        raise training_error(result.error)
    return finish(cfg, plan, result)


def fit_interruptibly(trainer: Any) -> Any:
    """``trainer.fit()``, its failures as w2w errors, and Ctrl-C ending it as it ends every
    w2w command. Ray Train puts its own Ctrl-C handler in place for the run (and leaves it
    there): it aborts the run gracefully -- workers stopped, checkpoints closed -- and
    ``fit()`` then returns or fails as any failed run does. Noted here, the interrupt reaches
    w2w as :class:`KeyboardInterrupt` once the run has stopped, so the previous run is put
    back and the command ends with "interrupted"; the handler Ray replaced is restored."""
    import signal
    import threading

    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGINT) if main else None
    interrupted = False
    register = trainer._register_sigint_handler  # Ray Train V2 (2.60) registers it in fit()

    def register_and_note(controller: Any) -> None:
        register(controller)
        ray_handler = signal.getsignal(signal.SIGINT)

        def handler(signum: int, frame: Any) -> None:
            nonlocal interrupted
            interrupted = True
            if callable(ray_handler):
                ray_handler(signum, frame)

        signal.signal(signal.SIGINT, handler)

    trainer._register_sigint_handler = register_and_note
    try:
        result = trainer.fit()
    except BaseException as exc:
        if interrupted:
            raise KeyboardInterrupt from None
        if isinstance(exc, Exception):
            raise training_error(exc) from exc
        raise
    finally:
        if main and before is not None:
            signal.signal(signal.SIGINT, before)
    if interrupted:
        raise KeyboardInterrupt
    return result


def training_chips(cfg: TrainConfig, plan: TrainPlan, *, cache: bool) -> Any:
    """The Ray Data dataset of training chips (materialised in Ray's object store with
    ``cache``, see :func:`should_cache`).

    Ray Data hands out blocks as their reads finish unless asked to keep their order; the
    order decides the batches, so it must be fixed for a seed to give the same model. A
    dataset keeps the context it was made in.
    """
    from ray.data import DataContext

    context = DataContext.get_current()
    before = context.execution_options.preserve_order
    context.execution_options.preserve_order = cfg.reproducible
    try:
        ds = chip_dataset(
            list(plan.train_rows),
            plan.reader,
            batch_size=max(4, cfg.batch_size),
            chunk_order=cache,
        )
        if cache:
            ds = ds.materialize()
    finally:
        context.execution_options.preserve_order = before
    return ds


def data_config(cfg: TrainConfig) -> Any:
    """The trainer's split of the dataset across workers, in a fixed order when reproducible."""
    return split_in_order(cfg.reproducible)


def split_in_order(preserve_order: bool) -> Any:
    """A Ray Train ``DataConfig`` that splits the ``train`` dataset across the workers,
    keeping its order when ``preserve_order``."""
    from ray.train import DataConfig

    with warnings.catch_warnings():  # Ray's own defaults trip its deprecation warnings
        warnings.simplefilter("ignore", DeprecationWarning)
        ingest_options = DataConfig.default_ingest_options()
        ingest_options.preserve_order = preserve_order
    return DataConfig(datasets_to_split=["train"], execution_options=ingest_options)


def require_workers(w: WorkersConfig, *, cache: bool, what: str = "training workers") -> None:
    """Refuse training the cluster cannot run: workers that do not fit, or that reserve every
    CPU while the chips stream from the store (their read tasks would never start)."""
    require(
        Request(
            what,
            w.num_workers,
            w.cpus_per_worker,
            w.gpus_per_worker if w.use_gpu else 0.0,
            spare_cpus=0.0 if cache else 1.0,
            fix="use fewer --workers or workers.cpus_per_worker"
            + (", or run without --gpu" if w.use_gpu else "")
            + ("" if cache else " (the chips stream from the store: leave one CPU for them)"),
        )
    )


def scaling(workers: WorkersConfig) -> Any:
    """Ray Train's ``ScalingConfig`` for these workers."""
    from ray.train import ScalingConfig

    resources: dict[str, float] = {"CPU": workers.cpus_per_worker}
    if workers.use_gpu:
        resources["GPU"] = workers.gpus_per_worker
    return ScalingConfig(
        num_workers=workers.num_workers,
        use_gpu=workers.use_gpu,
        resources_per_worker=resources,
        accelerator_type=workers.accelerator_type,
    )


def _run_config(cfg: TrainConfig) -> Any:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train import LoggingConfig as TrainLoggingConfig

    return RunConfig(
        name=cfg.run_name,
        storage_path=ray_storage_path(cfg.storage_path),
        storage_filesystem=ray_filesystem(cfg.storage_path),
        failure_config=FailureConfig(max_failures=cfg.max_failures),
        checkpoint_config=CheckpointConfig(
            num_to_keep=cfg.keep_checkpoints,
            checkpoint_score_attribute="score",
            checkpoint_score_order="max",
        ),
        logging_config=TrainLoggingConfig(log_level="WARNING"),
    )


def should_cache(cfg: TrainConfig, plan: TrainPlan) -> bool:
    """Whether the training chips are kept in Ray's object store (``cache_chips``; auto: when
    they fit in a third of the free store), decided once per run."""
    nbytes = len(plan.train_rows) * chip_bytes(len(plan.bands), cfg.chips.size)
    return fits_in_object_store(cfg.cache_chips, nbytes)


def fits_in_object_store(setting: str, nbytes: int) -> bool:
    """Whether to cache chips of ``nbytes`` in Ray's object store: ``setting`` yes or no, or
    auto: when they take less than a third of what is free."""
    import ray

    if setting != "auto":
        return setting == "yes"
    store_bytes = ray.available_resources().get("object_store_memory", 0)
    return nbytes < 0.3 * store_bytes


def ray_storage_path(url: str) -> str:
    return url.split("://", 1)[1] if storage.is_remote(url) else url


def ray_filesystem(url: str) -> Any:
    """For object storage, the storage layer's own filesystem (endpoint, credentials,
    timeouts, retries) as the pyarrow filesystem Ray Train writes checkpoints with; None for
    a local folder."""
    if not storage.is_remote(url):
        return None
    import pyarrow.fs

    return pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(storage.filesystem(url)))


def training_error(exc: BaseException) -> Exception:
    """The user-facing error for a failed ``fit()``: a worker's W2WError as is, else the last
    line of the worker's traceback."""
    from w2w.core.runtime import cause_line, unwrap_ray_error, user_error

    inner = unwrap_ray_error(exc)
    known = user_error(inner)
    if known is not None:
        return known
    for cause in (getattr(inner, "worker_failures", None) or {}).values():
        found = user_error(unwrap_ray_error(cause))
        if found is not None:
            return found
    return StageFailedError(f"training failed: {cause_line(str(inner))}")


def finish(cfg: TrainConfig, plan: TrainPlan, result: Any) -> TrainReport:
    """Turn the best checkpoint into a bundle and write the run's reports."""
    candidates = list(result.best_checkpoints or [])
    if not candidates and result.checkpoint is not None:
        candidates = [(result.checkpoint, result.metrics or {})]
    if not candidates:
        raise StageFailedError("training finished without a checkpoint")
    best_ckpt, _ = max(candidates, key=lambda cm: cm[1].get("score", -math.inf))
    latest_state = load_state(result.checkpoint or best_ckpt)
    best_state = load_state(best_ckpt)
    history = latest_state["history"]
    best_epoch = int(best_state["epoch"])
    best_record = next(h for h in history if h["epoch"] == best_epoch)
    metrics = {
        k: v for k, v in best_record.items() if k.startswith("val_") or k in ("epoch", "train_loss")
    }
    bundle = Bundle(
        spec=plan.spec,
        bands=plan.bands,
        normalizer=plan.normalizer,
        chip_size=cfg.chips.size,
        classes=plan.classes,
        nodata=plan.nodata,
        metrics=metrics,
        split=plan.split,
        training={
            "config": cfg.to_dict(),
            "fitted": plan.fitted,
            "chips": plan.chips,
            "epochs_run": len(history),
            **({"published_weights": plan.published_weights} if plan.published_weights else {}),
        },
        scene=plan.scene,
    )
    saved = save_bundle(cfg.bundle_url, bundle, best_state["model"])
    _write_reports(cfg, plan, history, best_record, best_epoch)
    return TrainReport(
        bundle=cfg.bundle_url,
        run_dir=cfg.run_dir,
        epochs_run=len(history),
        best_epoch=best_epoch,
        metrics={**metrics, "content_hash": saved.content_hash},
        history=history,
        chips=plan.chips,
        starts=[int(s) for s in latest_state.get("starts", [0])],
        fitted=plan.fitted,
    )


def _write_reports(
    cfg: TrainConfig,
    plan: TrainPlan,
    history: list[dict[str, Any]],
    best_record: dict[str, Any],
    best_epoch: int,
) -> None:
    """metrics.json, metrics.csv, the learning curves and the best epoch's confusion matrix."""
    run_dir = cfg.run_dir
    storage.atomic_write_bytes(
        storage.join(run_dir, "metrics.json"), json.dumps(history, indent=2).encode()
    )
    storage.atomic_write_bytes(storage.join(run_dir, "metrics.csv"), history_csv(history).encode())
    if best_record.get("val_confusion"):
        storage.atomic_write_bytes(
            storage.join(run_dir, "confusion_matrix.png"),
            plot_confusion(
                np.asarray(best_record["val_confusion"]),
                [c.name for c in plan.classes],
                f"validation, epoch {best_epoch}",
            ),
        )
    storage.atomic_write_bytes(
        storage.join(run_dir, "learning_curves.png"), plot_learning_curves(history)
    )
