"""Wall-to-wall prediction: a Ray Data job that writes every pixel of a scene into a mosaic.

The unit of work is one output **block**, aligned to the mosaic's write unit (its chunk, or
its shard), so every chunk has exactly one writer. The job is three Ray Data stages:

1. ``read`` (CPU tasks): read the block plus a halo -- every chip of the **global** chip grid
   that touches the block -- from the scene store; edge blocks are padded so every row has
   the same shape;
2. ``predict`` (an actor pool; one GPU per actor on GPU, CPU actors locally): on the model's
   device (:mod:`w2w.predict.engine`), normalise, run the model over the chips that hold a
   valid pixel in batches (optionally with flip test-time augmentation), blend overlapping
   chip probabilities with a smooth weight window, argmax and quantise; uint8 comes back;
3. ``write`` (CPU tasks): write ``class`` and ``confidence`` for the block, then record the
   block in the manifest -- only after its data is written.

Because chips are anchored on the scene's pixel grid and a pixel's value depends only on the
chips that cover it (summed in a fixed order), the mosaic does not depend on block size or on
how many actors ran. A re-run skips blocks the manifest records; ``overwrite`` starts over.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from w2w.core import storage
from w2w.core.coverage import verify_coverage
from w2w.core.errors import ConfigError, InputError, OutputError, StageFailedError
from w2w.core.grid import Window
from w2w.core.outputs import beside, discard_replacements, publish_store
from w2w.core.progress import progress_bar
from w2w.core.resources import Request, require
from w2w.core.runtime import ensure_ray, quiet_ray_data, raise_from_worker
from w2w.core.store import MosaicStore, SceneStore
from w2w.core.store.integrity import identity as identity_of
from w2w.core.store.integrity import short
from w2w.core.store.mosaic import PROBABILITIES
from w2w.predict.actor import Predictor
from w2w.predict.config import PredictConfig
from w2w.predict.plan import BlockPlan, batch_column, batch_windows

if TYPE_CHECKING:
    from w2w.model.bundle import Bundle

# torch (through w2w.model.bundle) is imported only where a model is used: the read, write and
# coverage tasks run in Ray workers that then stay small (importing torch costs each
# worker process a few hundred MiB).

log = logging.getLogger("w2w")


# -- stages -----------------------------------------------------------------------------------


def read_blocks(
    batch: dict[str, np.ndarray], scene_url: str, scene_identity: str | None, plan: dict[str, int]
) -> dict[str, Any]:
    """Read stage: the padded halo window of each block, raw pixels and valid mask."""
    bp = BlockPlan(**plan)
    store = SceneStore.open_for_blocks(scene_url, scene_identity)
    images, valids = [], []
    for block in batch_windows(batch):
        win = bp.window(block)
        image = store.read_image(win)
        images.append(image)
        valids.append(store.valid_mask(image, win))
    return {**batch, "image": batch_column(images), "valid": batch_column(valids)}


def write_blocks(
    batch: dict[str, np.ndarray],
    mosaic_url: str,
    mosaic_identity: str | None,
    with_confidence: bool,
) -> dict[str, Any]:
    """Write stage: each block's own chunks, then its manifest entry (after the data)."""
    mosaic = MosaicStore.open_for_blocks(mosaic_url, mosaic_identity, mode="r+")
    for i, block in enumerate(batch_windows(batch)):
        h, w = block.height, block.width
        mosaic.write("class", block, batch["class"][i][:h, :w])
        if with_confidence:
            mosaic.write("confidence", block, batch["confidence"][i][:h, :w])
        if "probabilities" in batch:
            mosaic.write(PROBABILITIES, block, batch["probabilities"][i][:, :h, :w])
        mosaic.mark_block_done(block, int(batch["valid_pixels"][i]))
    done = {k: batch[k] for k in ("row", "col", "chips_forwarded", "chips_skipped")}
    # When the blocks were written, for the report's start-up time: the driver hears of a
    # block later, by as much as a second on a busy node.
    return {**done, "written_at": np.full(len(batch["row"]), time.time())}


# -- driver -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PredictReport:
    """What prediction did."""

    output: str
    blocks_total: int
    blocks_done_before: int
    blocks_written: int
    seconds: float
    pixels_per_second: float
    #: Seconds from the start of the block job (the mosaic open) until the first block was
    #: written (the job's start-up: Ray Data, the actors' imports and model load, the first
    #: block's read and forward) and until the last one was; None when no block was written.
    first_block_seconds: float | None = None
    last_block_seconds: float | None = None
    #: Blocks without a valid input pixel (outside the state), recorded but never read.
    blocks_empty: int = 0
    #: Chips run through the model, and chips skipped for holding no valid pixel.
    chips_forwarded: int = 0
    chips_skipped: int = 0


def predict(cfg: PredictConfig, *, progress: bool = True) -> PredictReport:
    """Predict every pixel of a scene into a mosaic store (resuming an unfinished one), then
    check that every valid pixel has a class."""
    from w2w.model.bundle import load_bundle

    scene = SceneStore.open(cfg.scene)
    scene.require_whole()
    bundle = load_bundle(cfg.bundle, weights=False)  # the driver needs no torch
    bundle.check_scene(scene.info, scene.url)
    stride = _stride(cfg, bundle.chip_size)
    _require_resources(cfg)  # before anything is written
    mosaic = _open_or_create_mosaic(cfg, scene, bundle, stride)
    tiling = mosaic.tiling
    tiling.check_one_writer(mosaic.chunk_shape("class"), what="the mosaic's")
    todo = tiling.windows(~mosaic.done_blocks())
    before = len(tiling) - len(todo)
    if before:
        _check_scene_unchanged(scene, mosaic, progress=progress)
        share = 1 - sum(w.size for w in todo) / mosaic.grid.full_window.size
        log.info(
            "resuming: %d of %d blocks already done (%.0f%% of the scene's pixels), skipped",
            before,
            len(tiling),
            100 * share,
        )
    if cfg.max_blocks is not None:
        todo = todo[: cfg.max_blocks]
    plan = BlockPlan(scene.grid.height, scene.grid.width, cfg.block, bundle.chip_size, stride)
    # Blocks without a valid input pixel (outside the state) are neither read nor forwarded:
    # recorded as finished and empty, their chunks never written (they read as nodata).
    empty = [w for w in todo if scene.valid_pixels_in(w) == 0]
    for w in empty:
        mosaic.mark_block_done(w, 0, empty=True)
    work = [w for w in todo if scene.valid_pixels_in(w) != 0]

    t0 = time.time()
    tally = _run_blocks(cfg, work, plan, scene, mosaic, progress=progress)
    output = mosaic.url
    if mosaic.done_blocks().all():
        tally.written += _check_coverage(cfg, mosaic, plan, scene, progress=progress)
        output = _publish(mosaic, cfg.output)
    seconds = time.time() - t0
    pixels = sum(b.size for b in todo)
    return PredictReport(
        output=output,
        blocks_total=len(tiling),
        blocks_done_before=before,
        blocks_written=tally.written,
        seconds=seconds,
        pixels_per_second=pixels / seconds if seconds > 0 else 0.0,
        first_block_seconds=max(0.0, min(tally.times) - t0) if tally.times else None,
        last_block_seconds=max(0.0, max(tally.times) - t0) if tally.times else None,
        blocks_empty=len(empty),
        chips_forwarded=tally.chips_forwarded,
        chips_skipped=tally.chips_skipped,
    )


@dataclass
class Tally:
    """What a block job did: blocks written (and when: the clock of the worker that wrote
    each, in the order the driver heard of them), chips run through the model, and chips
    skipped for holding no valid pixel."""

    written: int = 0
    chips_forwarded: int = 0
    chips_skipped: int = 0
    times: list[float] = field(default_factory=list)


def _stride(cfg: PredictConfig, chip_size: int) -> int:
    """The chip stride in use (default half a chip), checked against chip and block."""
    stride = cfg.stride or max(1, chip_size // 2)
    if stride > chip_size:
        raise ConfigError(f"stride {stride} exceeds the model's chip size {chip_size}")
    if cfg.block % stride:
        raise ConfigError(
            f"block ({cfg.block}) must be a multiple of the chip stride ({stride}) so that every "
            "block sees the same chip pattern"
        )
    return stride


def _check_coverage(
    cfg: PredictConfig, mosaic: MosaicStore, plan: BlockPlan, scene: SceneStore, *, progress: bool
) -> int:
    """Check the finished mosaic for holes; predict blocks with holes once more; mark the
    mosaic complete, or fail naming the blocks. Returns the blocks written again."""
    coverage = verify_coverage(mosaic.url, progress=progress)
    written = 0
    if coverage.holes:
        # A block whose classes read back short of its valid pixels lost (part of) a
        # write: predict it again, once, then check again.
        log.warning("coverage check: %s; predicting them again", coverage.describe())
        redo = [h.window for h in coverage.holes]
        mosaic.update_meta(complete=False)
        for w in redo:
            mosaic.clear_block(w)
        written = _run_blocks(cfg, redo, plan, scene, mosaic, progress=progress).written
        coverage = verify_coverage(mosaic.url, progress=progress)
    if not coverage.ok:
        mosaic.update_meta(complete=False)
        for h in coverage.holes:
            mosaic.clear_block(h.window)
        raise StageFailedError(
            f"coverage check of {mosaic.url} failed: {coverage.describe()}; those blocks "
            "are cleared from the manifest: run `w2w predict` again to redo them"
        )
    log.info("coverage check: %s", coverage.describe())
    mosaic.mark_complete()
    return written


def _run_blocks(
    cfg: PredictConfig,
    todo: list[Window],
    plan: BlockPlan,
    scene: SceneStore,
    mosaic: MosaicStore,
    *,
    progress: bool,
) -> Tally:
    """The Ray Data job over ``todo``: read -> predict (actor pool) -> write."""
    import ray
    import ray.data

    if not todo:
        return Tally()
    ensure_ray()
    quiet_ray_data()
    rows = [b.to_dict() for b in todo]
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    ds = ds.map_batches(
        read_blocks,
        fn_kwargs={"scene_url": scene.url, "scene_identity": scene.identity, "plan": plan.__dict__},
        batch_size=1,
        num_cpus=cfg.read_cpus,
    )
    ds = ds.map_batches(
        Predictor,
        fn_constructor_kwargs={
            "bundle_url": cfg.bundle,
            "plan": plan.__dict__,
            "settings": {
                "batch_size": cfg.batch_size,
                "tta": cfg.tta,
                "use_gpu": cfg.use_gpu,
                "threads": cfg.threads or max(1, int(cfg.cpus_per_actor)),
                "precision": cfg.precision,
                "compile": cfg.compile,
                "probabilities": cfg.probabilities,
            },
        },
        compute=ray.data.ActorPoolStrategy(size=cfg.actors),
        # Two blocks per call on a GPU: the second's copy overlaps the first's forwards.
        batch_size=2 if cfg.use_gpu else 1,
        num_gpus=1 if cfg.use_gpu else 0,
        num_cpus=cfg.cpus_per_actor,
        # Fault tolerance: Ray Data (2.60) restarts a dead inference actor without limit and
        # retries the blocks it held (the defaults of its actor pools); read and write tasks
        # are retried on worker death (Ray's task default). Every stage is idempotent -- a
        # block rewrites only its own chunks -- so a retried block gives the same mosaic
        # (tests/test_reliability.py kills an actor mid-run). Application errors are not
        # retried.
    )
    ds = ds.map_batches(
        write_blocks,
        fn_kwargs={
            "mosaic_url": mosaic.url,
            "mosaic_identity": mosaic.identity,
            "with_confidence": cfg.confidence,
        },
        batch_size=1,
        num_cpus=cfg.read_cpus,
    )
    tally = Tally()
    with progress_bar("predict", total=len(todo), enabled=progress) as advance:
        try:
            for row in ds.iter_rows():
                tally.written += 1
                tally.chips_forwarded += int(row["chips_forwarded"])
                tally.chips_skipped += int(row["chips_skipped"])
                tally.times.append(float(row["written_at"]))
                advance(1)
        except Exception as exc:  # noqa: BLE001 - surface the worker's cause
            raise_from_worker(exc, "prediction")
    return tally


def _made_from(cfg: PredictConfig, scene: SceneStore, bundle: Bundle, stride: int) -> dict:
    """What decides the mosaic's pixels: the scene's and the bundle's identities and the
    settings that change a prediction (block size and actors do not)."""
    return {
        "scene": scene.identity,
        "bundle": bundle.content_hash,
        "chip_size": bundle.chip_size,
        "stride": stride,
        "tta": cfg.tta,
        "precision": _precision(cfg),
        "probabilities": cfg.probabilities,
    }


def _check_scene_unchanged(scene: SceneStore, mosaic: MosaicStore, *, progress: bool) -> None:
    """Before resuming: the scene must read as it did when the mosaic's first blocks were
    made. Its recorded identity is compared when the mosaic is opened; chunks rewritten in
    place leave that as it was, so every block is checked against its ingest digest too (one
    read of the scene, far less than predicting it)."""
    from w2w.core.coverage import verify_scene

    report = verify_scene(scene.url, progress=progress)
    if report.missing or report.changed or report.damaged:  # (an older scene has no digests)
        raise InputError(
            f"scene {scene.url} is not as it was when mosaic {mosaic.url} was started "
            f"({report.describe()}); resuming would mix two versions of the scene: restore "
            "the scene, or predict again with --overwrite"
        )


def _require_resources(cfg: PredictConfig) -> None:
    """Refuse an actor pool the cluster cannot hold beside the read and write tasks."""
    ensure_ray()
    require(
        Request(
            "inference actors",
            cfg.actors,
            cfg.cpus_per_actor,
            1.0 if cfg.use_gpu else 0.0,
            spare_cpus=cfg.read_cpus,
            fix="ask for fewer --actors or --cpus-per-actor"
            + (" or a smaller --read-cpus" if cfg.read_cpus > 0.5 else "")
            + (", or run without --gpu" if cfg.use_gpu else ""),
        )
    )


def _precision(cfg: PredictConfig) -> str:
    """The precision a prediction runs in, as far as the driver knows: ``auto`` is fp32 on
    CPU actors and the GPU's low precision (bf16, or fp16 where bf16 is unsupported) on GPU
    actors."""
    if cfg.precision != "auto":
        return cfg.precision
    return "gpu-auto" if cfg.use_gpu else "fp32"


def _open_or_create_mosaic(
    cfg: PredictConfig, scene: SceneStore, bundle: Bundle, stride: int
) -> MosaicStore:
    """Resume the mosaic this run makes, or create it.

    A mosaic at the output made from other inputs or settings is refused, naming both; with
    ``overwrite`` the new mosaic is built beside it and replaces it only when complete
    (:func:`_publish`), so a failed run leaves the old one as it was.
    """
    made_from = _made_from(cfg, scene, bundle, stride)
    provenance = {
        "scene": scene.url,
        "bundle": cfg.bundle,
        "bundle_hash": bundle.content_hash,
        "chip_size": bundle.chip_size,
        "stride": stride,
        "tta": cfg.tta,
        "predict_config": cfg.to_dict(),
        "made_from": made_from,
        "imagery_datetime": scene.info.source.get("datetime"),
    }
    url = cfg.output
    if storage.exists(url):
        existing = _existing_mosaic(url, overwrite=cfg.overwrite)
        if existing is not None and _same(existing, made_from, cfg.block):
            if not cfg.overwrite:
                return existing
        elif not cfg.overwrite:
            raise OutputError(_other_mosaic(cfg.output, existing, made_from))
        tag = identity_of({"made_from": made_from, "block": cfg.block})[7:19]
        url = beside(cfg.output, tag)
        if storage.exists(url):
            partial = _existing_mosaic(url, overwrite=True)
            if partial is not None and _same(partial, made_from, cfg.block):
                return partial  # an earlier --overwrite run of this same prediction
    shard = cfg.chunk is not None and cfg.chunk != cfg.block
    return MosaicStore.create(
        url,
        scene.grid,
        block=cfg.block,
        chunk=cfg.chunk if shard else None,
        shard=shard,
        classes=list(bundle.classes),
        provenance=provenance,
        with_confidence=cfg.confidence,
        with_probabilities=cfg.probabilities,
        overwrite=True,
    )


def _existing_mosaic(url: str, *, overwrite: bool) -> MosaicStore | None:
    """The mosaic at ``url`` to resume, or None where there is none worth resuming (with
    ``overwrite``); one whose creation was cut short (a group without its class array: the
    endpoint failed while it was being made) is not a mosaic to resume."""
    try:
        mosaic = MosaicStore.open(url, mode="r+")
        if not mosaic.has_array("class"):
            raise InputError(f"{url} was cut short while it was being created")
        return mosaic
    except InputError:
        if overwrite:
            return None
        raise OutputError(
            f"{url} exists and is not a w2w mosaic; pass --overwrite to replace it or choose "
            "another path"
        ) from None


def _same(mosaic: MosaicStore, made_from: dict, block: int) -> bool:
    mine = mosaic.provenance.get("made_from")
    return mine is not None and mine == made_from and mosaic.block == block


def _other_mosaic(output: str, existing: MosaicStore | None, made_from: dict) -> str:
    theirs = (existing.provenance.get("made_from") if existing else None) or {}
    changed = [k for k in made_from if theirs.get(k) != made_from[k]]
    if existing is not None and not changed:
        changed = ["block"]
    detail = "; ".join(
        f"{k}: {short(str(theirs.get(k))) if k in ('scene', 'bundle') else theirs.get(k)} "
        f"there, {short(str(made_from.get(k))) if k in ('scene', 'bundle') else made_from.get(k)} "
        "now"
        for k in changed
        if k != "block"
    )
    return (
        f"mosaic {output} exists from another model, scene or settings; pass --overwrite to "
        "start over (the old mosaic stays until the new one is complete), or choose another "
        f"output ({detail or 'another block size'})"
    )


def _publish(mosaic: MosaicStore, output: str) -> str:
    """Put a mosaic built beside its output in place of the old one, once complete; then
    remove replacements of it that killed runs with other settings left half-built."""
    if mosaic.url != output:
        publish_store(mosaic.url, output)
    for left in discard_replacements(output):
        log.info("removed %s: a replacement of %s that an interrupted run left", left, output)
    return output
