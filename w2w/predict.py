"""Wall-to-wall prediction: a Ray Data job that writes every pixel of a scene into a mosaic.

The unit of work is one output **block**, aligned to the mosaic's write unit (its chunk, or
its shard), so every chunk has exactly one writer. The job is three Ray Data stages:

1. ``read`` (CPU tasks): read the block plus a halo -- every chip of the **global** chip grid
   that touches the block -- from the scene store; edge blocks are padded so every row has
   the same shape;
2. ``predict`` (an actor pool; one GPU per actor on GPU, CPU actors locally): normalise,
   run the model over those chips in batches (optionally with flip test-time augmentation),
   blend overlapping chip probabilities with a smooth weight window, crop to the block;
3. ``write`` (CPU tasks): write ``class`` and ``confidence`` for the block, then record the
   block in the manifest -- only after its data is written.

Because chips are anchored on the scene's pixel grid and a pixel's value depends only on the
chips that cover it (summed in a fixed order), the mosaic does not depend on block size or on
how many actors ran. A re-run skips blocks the manifest records; ``overwrite`` starts over.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import Field, model_validator

from w2w import storage
from w2w.config import PathStr, StageConfig
from w2w.errors import ConfigError, InputError, OutputError, StageFailedError
from w2w.grid import Grid, Window, chip_origins
from w2w.store import CLASS_NODATA, MosaicStore, SceneStore

if TYPE_CHECKING:
    from w2w.bundle import Bundle

# torch (through w2w.bundle) is imported only where a model is used: the read, write and
# coverage tasks run in Ray workers that then stay small (importing torch costs each
# worker process a few hundred MiB).

log = logging.getLogger("w2w")


class PredictConfig(StageConfig):
    """Settings of ``w2w predict``."""

    stage_name: ClassVar[str] = "predict"

    scene: PathStr = Field(description="scene store to map")
    bundle: PathStr = Field(description="model bundle from `w2w train`")
    output: PathStr = Field(description="mosaic store to write (local path or s3:// URL)")
    block: int = Field(default=1024, ge=32, description="block edge = mosaic write unit (px)")
    chunk: int | None = Field(default=None, ge=16, description="inner chunk when sharding")
    stride: int | None = Field(default=None, ge=1, description="chip step; default chip/2")
    batch_size: int = Field(default=16, ge=1, description="chips per forward pass")
    tta: bool = Field(default=False, description="average over flips (4x compute)")
    actors: int = Field(default=1, ge=1, description="size of the inference actor pool")
    use_gpu: bool = False
    cpus_per_actor: float = Field(default=1, gt=0)
    threads: int | None = Field(
        default=None,
        ge=1,
        description="torch threads of a CPU actor; default: its CPUs (at least 1). More threads "
        "than CPUs lets one actor use cores the light read/write tasks leave idle",
    )
    read_cpus: float = Field(
        default=0.5,
        gt=0,
        description="CPUs per read/write task (differs from the actors' so the stages stay apart)",
    )
    confidence: bool = True
    overwrite: bool = False
    max_blocks: int | None = Field(default=None, ge=1, description="stop after this many blocks")

    @model_validator(mode="after")
    def _shard(self) -> PredictConfig:
        if self.chunk is not None and self.block % self.chunk:
            raise ValueError(f"block ({self.block}) must be a multiple of chunk ({self.chunk})")
        return self


@dataclass(frozen=True)
class BlockPlan:
    """Geometry shared by every stage: grid, chip grid and the fixed read window shape."""

    height: int
    width: int
    block: int
    chip: int
    stride: int

    @property
    def halo_before(self) -> int:
        """Pixels read before a block's start: chips that start there still reach the block."""
        return (math.ceil(self.chip / self.stride) - 1) * self.stride

    @property
    def window_size(self) -> int:
        """Edge of the read window of every block (edge blocks are padded to it)."""
        return self.halo_before + self.block - self.stride + self.chip

    def window(self, block: Window) -> Window:
        """The read window of a block (may reach past the scene's edges)."""
        return Window(
            block.row - self.halo_before,
            block.col - self.halo_before,
            self.window_size,
            self.window_size,
        )

    def chips(self, block: Window) -> list[Window]:
        """The chips of the global grid that touch ``block``, row-major (in scene pixels)."""
        rows = chip_origins(self.height, self.chip, self.stride)
        cols = chip_origins(self.width, self.chip, self.stride)
        r = [int(o) for o in rows if o < block.row_stop and o + self.chip > block.row]
        c = [int(o) for o in cols if o < block.col_stop and o + self.chip > block.col]
        return [Window(i, j, self.chip, self.chip) for i in r for j in c]


def blend_weights(size: int) -> np.ndarray:
    """(size, size) smooth weights: a separable Hann window with a small floor, so chip edges
    count little but pixels covered by a single chip (the scene's border) still count."""
    i = (np.arange(size) + 0.5) / size
    w1 = np.maximum(np.sin(np.pi * i) ** 2, 1e-3)
    return np.outer(w1, w1).astype(np.float32)


# -- stages -----------------------------------------------------------------------------------


def read_blocks(
    batch: dict[str, np.ndarray], scene_url: str, plan: dict[str, int]
) -> dict[str, Any]:
    """Read stage: the padded halo window of each block, raw pixels and valid mask."""
    bp = BlockPlan(**plan)
    store = SceneStore.open(scene_url)
    images, valids = [], []
    for r, c, h, w in zip(batch["row"], batch["col"], batch["height"], batch["width"], strict=True):
        win = bp.window(Window(int(r), int(c), int(h), int(w)))
        image = store.read_image(win)
        images.append(image)
        valids.append(store.valid_mask(image, win))
    return {**batch, "image": np.stack(images), "valid": np.stack(valids)}


class Predictor:
    """Predict stage (actor): loads the bundle once, predicts and blends a block's chips."""

    def __init__(self, bundle_url: str, plan: dict[str, int], settings: dict[str, Any]) -> None:
        import torch

        from w2w.bundle import load_bundle
        from w2w.models import channels_last

        self.settings = settings
        self.bp = BlockPlan(**plan)
        self.bundle = load_bundle(bundle_url)
        self.use_gpu = bool(settings["use_gpu"]) and torch.cuda.is_available()
        self.device = torch.device("cuda" if self.use_gpu else "cpu")
        if not self.use_gpu:
            torch.set_num_threads(max(1, int(settings.get("threads", 1))))
        self.model = channels_last(self.bundle.model(str(self.device)))
        self.bf16 = self.use_gpu and torch.cuda.is_bf16_supported()
        self.weights = blend_weights(self.bp.chip)
        ids = [c.id for c in self.bundle.classes]
        self.class_ids = np.asarray(ids, dtype=np.uint8)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        classes, confidences, counts = [], [], []
        for i in range(len(batch["row"])):
            block = Window(
                int(batch["row"][i]),
                int(batch["col"][i]),
                int(batch["height"][i]),
                int(batch["width"][i]),
            )
            cls, conf = self.predict_block(block, batch["image"][i], batch["valid"][i])
            classes.append(cls)
            confidences.append(conf)
            inner = block.relative_to(self.bp.window(block))
            counts.append(int(batch["valid"][i][inner.slices].sum()))
        out = {k: batch[k] for k in ("row", "col", "height", "width")}
        return {
            **out,
            "class": np.stack(classes),
            "confidence": np.stack(confidences),
            "valid_pixels": np.asarray(counts, dtype=np.int64),
        }

    def predict_block(
        self, block: Window, image: np.ndarray, valid: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(block, block) class ids and confidence x 255; padded to the full block size."""
        import torch

        bp = self.bp
        win = bp.window(block)
        k = len(self.class_ids)
        size = bp.window_size
        norm = self.bundle.normalizer(image, valid)
        acc = np.zeros((k, size, size), dtype=np.float32)
        wsum = np.zeros((size, size), dtype=np.float32)
        chips = bp.chips(block)
        bs = int(self.settings["batch_size"])
        for start in range(0, len(chips), bs):
            group = chips[start : start + bs]
            rel = [c.relative_to(win) for c in group]
            x = np.stack([norm[:, r.row : r.row_stop, r.col : r.col_stop] for r in rel])
            probs = self._forward(torch.from_numpy(x))
            for p, r in zip(probs, rel, strict=True):  # fixed (row-major) order of summation
                acc[:, r.row : r.row_stop, r.col : r.col_stop] += p * self.weights
                wsum[r.row : r.row_stop, r.col : r.col_stop] += self.weights
        inner = block.relative_to(win)
        acc = acc[:, inner.row : inner.row_stop, inner.col : inner.col_stop]
        wsum = wsum[inner.row : inner.row_stop, inner.col : inner.col_stop]
        ok = valid[inner.row : inner.row_stop, inner.col : inner.col_stop] & (wsum > 0)
        probs = acc / np.where(wsum > 0, wsum, 1.0)
        top = probs.argmax(axis=0)
        cls = np.full((bp.block, bp.block), CLASS_NODATA, dtype=np.uint8)
        conf = np.zeros((bp.block, bp.block), dtype=np.uint8)
        h, w = block.height, block.width
        cls[:h, :w] = np.where(ok, self.class_ids[top], CLASS_NODATA)
        conf[:h, :w] = np.where(ok, np.rint(probs.max(axis=0) * 255).clip(0, 255), 0).astype(
            np.uint8
        )
        return cls, conf

    def _forward(self, x: Any) -> np.ndarray:
        """Softmax probabilities (N, K, c, c) float32, averaged over flips with TTA."""
        import torch

        from w2w.models import channels_last_input

        x = channels_last_input(x.to(self.device))
        flips: list[tuple[int, ...]] = [()]
        if self.settings["tta"]:
            flips = [(), (-1,), (-2,), (-2, -1)]
        total = None
        with (
            torch.inference_mode(),
            torch.autocast(self.device.type, torch.bfloat16, enabled=self.bf16),
        ):
            for dims in flips:
                xi = torch.flip(x, dims) if dims else x
                p = torch.softmax(self.model(xi).float(), dim=1)
                p = torch.flip(p, dims) if dims else p
                total = p if total is None else total + p
        assert total is not None
        return (total / len(flips)).contiguous().cpu().numpy()


def write_blocks(
    batch: dict[str, np.ndarray], mosaic_url: str, with_confidence: bool
) -> dict[str, Any]:
    """Write stage: each block's own chunks, then its manifest entry (after the data)."""
    mosaic = MosaicStore.open(mosaic_url, mode="r+")
    for i in range(len(batch["row"])):
        block = Window(
            int(batch["row"][i]),
            int(batch["col"][i]),
            int(batch["height"][i]),
            int(batch["width"][i]),
        )
        h, w = block.height, block.width
        mosaic.write("class", block, batch["class"][i][:h, :w])
        if with_confidence:
            mosaic.write("confidence", block, batch["confidence"][i][:h, :w])
        mosaic.mark_block_done(block, int(batch["valid_pixels"][i]))
    return {"row": batch["row"], "col": batch["col"]}


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


@dataclass(frozen=True)
class BlockCoverage:
    """A block whose written classes do not cover the valid input pixels it recorded."""

    window: Window
    expected: int  # valid input pixels recorded by the block's writer
    found: int  # classified pixels read back from the mosaic


@dataclass(frozen=True)
class CoverageReport:
    """What :func:`verify_coverage` found: blocks never finished, and blocks with holes."""

    blocks_total: int
    missing: tuple[Window, ...]
    holes: tuple[BlockCoverage, ...]
    checked_pixels: int

    @property
    def ok(self) -> bool:
        """Every block finished and fully classified."""
        return not self.missing and not self.holes

    def describe(self) -> str:
        """One line for messages and the log."""
        if self.ok:
            return (
                f"all {self.blocks_total} blocks finished; every one of the "
                f"{self.checked_pixels:,} valid pixels has a class"
            )
        parts = []
        if self.missing:
            shown = ", ".join(f"(row {w.row}, col {w.col})" for w in self.missing[:5])
            parts.append(f"{len(self.missing)} block(s) never finished: {shown}")
        if self.holes:
            shown = ", ".join(
                f"(row {h.window.row}, col {h.window.col}): {h.expected - h.found:,} of "
                f"{h.expected:,} valid pixels without a class"
                for h in self.holes[:5]
            )
            parts.append(f"{len(self.holes)} block(s) with holes: {shown}")
        return "; ".join(parts)


def _block_classified(item: tuple[str, dict[str, int]]) -> tuple[dict[str, int], int]:
    """Coverage task: classified (non-nodata) pixels of one block, read back from storage."""
    url, window = item
    mosaic = MosaicStore.open(url)
    return window, int((mosaic.read_class(Window(**window)) != CLASS_NODATA).sum())


#: Mosaics up to this many pixels are checked for coverage in this process: reading back
#: 64 MB of uint8 classes takes well under a second here, less than starting Ray tasks.
COVERAGE_LOCAL_PIXELS = 1 << 26


def verify_coverage(
    mosaic_url: str, *, engine: str = "auto", progress: bool = True
) -> CoverageReport:
    """Check a mosaic for holes, cheaply: every block is recorded as finished, and the classes
    read back from storage cover as many pixels as the block's writer found valid in the
    input (so a lost or partial write shows). Reads only the uint8 class array, on Ray tasks
    (``engine="ray"``), in this process (``"local"``), or ``"auto"``: in this process for a
    mosaic of at most :data:`COVERAGE_LOCAL_PIXELS` pixels, else on Ray."""
    from w2w.runtime import run_blocks

    mosaic = MosaicStore.open(mosaic_url)
    if engine == "auto":
        engine = "local" if mosaic.grid.full_window.size <= COVERAGE_LOCAL_PIXELS else "ray"
    blocks = mosaic.blocks()
    done = mosaic.done_blocks()
    expected = mosaic.expected_valid_pixels()
    b = mosaic.block
    missing = tuple(w for w in blocks if not done[w.row // b, w.col // b])
    finished = [w for w in blocks if done[w.row // b, w.col // b]]
    holes: list[BlockCoverage] = []
    checked = 0
    if expected is None:
        log.warning("%s records no valid-pixel counts (made by an older w2w)", mosaic_url)
    else:
        items = [(mosaic.url, w.to_dict()) for w in finished]
        for window, found in run_blocks(
            _block_classified,
            items,
            engine=engine,  # type: ignore[arg-type]
            what="coverage check",
            num_cpus=0.5,
            progress=progress,
        ):
            w = Window(**window)
            want = int(expected[w.row // b, w.col // b])
            checked += max(want, 0)
            if want < 0 or found != want:
                holes.append(BlockCoverage(w, want, found))
    holes.sort(key=lambda h: (h.window.row, h.window.col))
    return CoverageReport(len(blocks), missing, tuple(holes), checked)


def actor_fault_tolerance() -> tuple[int, int]:
    """(max_restarts, max_task_retries) that Ray Data gives the inference actor pool.

    Prediction relies on both being -1 (restart a lost actor and retry its blocks without
    limit; blocks are idempotent). Ray 2.60 sets them as defaults of every actor pool and
    deprecates passing them to ``map_batches``, so w2w checks them instead of setting them.
    """
    from ray.data import DataContext
    from ray.data._internal.execution.operators.actor_pool_map_operator import (
        ActorPoolMapOperator,
    )

    args = ActorPoolMapOperator._apply_default_remote_args({}, DataContext.get_current())
    return int(args.get("max_restarts", 0)), int(args.get("max_task_retries", 0))


def check_chunk_ownership(grid: Grid, blocks: list[Window], unit: tuple[int, int]) -> None:
    """Verify that the blocks give every write unit (chunk or shard) of the mosaic exactly one
    writer: blocks must tile the grid and align to the unit. Raises ``ConfigError`` otherwise."""
    uh, uw = unit
    rows, cols = math.ceil(grid.height / uh), math.ceil(grid.width / uw)
    owners = np.zeros((rows, cols), dtype=np.int64)
    for b in blocks:
        aligned = b.row % uh == 0 and b.col % uw == 0
        ends = (b.row_stop % uh == 0 or b.row_stop == grid.height) and (
            b.col_stop % uw == 0 or b.col_stop == grid.width
        )
        if not (aligned and ends):
            raise ConfigError(
                f"prediction block {b.to_dict()} is not aligned to the mosaic's {uh} x {uw} "
                "write units: two tasks would write parts of one chunk and lose data; use a "
                "block size that is a multiple of the chunk (or shard) size"
            )
        owners[
            b.row // uh : math.ceil(b.row_stop / uh), b.col // uw : math.ceil(b.col_stop / uw)
        ] += 1
    if not (owners == 1).all():
        bad = np.argwhere(owners != 1)[:3].tolist()
        raise ConfigError(f"mosaic write units {bad} have {owners[tuple(bad[0])]} writers, not one")


def predict(cfg: PredictConfig, *, progress: bool = True) -> PredictReport:
    """Predict every pixel of a scene into a mosaic store (resuming an unfinished one), then
    check that every valid pixel has a class."""
    from w2w.bundle import load_bundle

    scene = SceneStore.open(cfg.scene)
    bundle = load_bundle(cfg.bundle)
    bundle.check_scene(scene.info, scene.url)
    stride = cfg.stride or max(1, bundle.chip_size // 2)
    if stride > bundle.chip_size:
        raise ConfigError(f"stride {stride} exceeds the model's chip size {bundle.chip_size}")
    if cfg.block % stride:
        raise ConfigError(
            f"block ({cfg.block}) must be a multiple of the chip stride ({stride}) so that every "
            "block sees the same chip pattern"
        )
    restarts, retries = actor_fault_tolerance()
    if restarts == 0 or retries == 0:
        log.warning(
            "this Ray Data does not restart lost inference actors (max_restarts=%s, "
            "max_task_retries=%s): a lost worker fails the run; re-run to resume it",
            restarts,
            retries,
        )
    mosaic = _open_or_create_mosaic(cfg, scene, bundle, stride)
    blocks = mosaic.blocks()
    check_chunk_ownership(mosaic.grid, blocks, mosaic.chunk_shape("class"))
    done = mosaic.done_blocks()
    todo = [b for b in blocks if not done[b.row // mosaic.block, b.col // mosaic.block]]
    before = len(blocks) - len(todo)
    if before:
        share = 1 - sum(w.size for w in todo) / mosaic.grid.full_window.size
        log.info(
            "resuming: %d of %d blocks already done (%.0f%% of the scene's pixels), skipped",
            before,
            len(blocks),
            100 * share,
        )
    if cfg.max_blocks is not None:
        todo = todo[: cfg.max_blocks]
    plan = BlockPlan(scene.grid.height, scene.grid.width, cfg.block, bundle.chip_size, stride)

    t0 = time.time()
    finished: list[float] = []  # when each block was written
    written = _run_blocks(cfg, todo, plan, scene.url, mosaic.url, progress=progress, times=finished)
    if mosaic.done_blocks().all():
        coverage = verify_coverage(mosaic.url, progress=progress)
        if coverage.holes:
            # A block whose classes read back short of its valid pixels lost (part of) a
            # write: predict it again, once, then check again.
            log.warning("coverage check: %s; predicting them again", coverage.describe())
            redo = [h.window for h in coverage.holes]
            mosaic.update_meta(complete=False)
            for w in redo:
                mosaic.clear_block(w)
            written += _run_blocks(cfg, redo, plan, scene.url, mosaic.url, progress=progress)
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
    seconds = time.time() - t0
    pixels = sum(b.size for b in todo)
    return PredictReport(
        output=mosaic.url,
        blocks_total=len(blocks),
        blocks_done_before=before,
        blocks_written=written,
        seconds=seconds,
        pixels_per_second=pixels / seconds if seconds > 0 else 0.0,
        first_block_seconds=finished[0] - t0 if finished else None,
        last_block_seconds=finished[-1] - t0 if finished else None,
    )


def _run_blocks(
    cfg: PredictConfig,
    todo: list[Window],
    plan: BlockPlan,
    scene_url: str,
    mosaic_url: str,
    *,
    progress: bool,
    times: list[float] | None = None,
) -> int:
    """The Ray Data job over ``todo``: read -> predict (actor pool) -> write; blocks written.
    The time each block was written is appended to ``times``."""
    import ray
    import ray.data

    from w2w.progress import progress_bar
    from w2w.runtime import _raise_from_worker, ensure_ray, quiet_ray_data

    if not todo:
        return 0
    ensure_ray()
    quiet_ray_data()
    rows = [b.to_dict() for b in todo]
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    ds = ds.map_batches(
        read_blocks,
        fn_kwargs={"scene_url": scene_url, "plan": plan.__dict__},
        batch_size=1,
        num_cpus=cfg.read_cpus,
    )
    ds = ds.map_batches(
        Predictor,
        fn_constructor_kwargs={
            "bundle_url": storage.normalize(cfg.bundle),
            "plan": plan.__dict__,
            "settings": {
                "batch_size": cfg.batch_size,
                "tta": cfg.tta,
                "use_gpu": cfg.use_gpu,
                "threads": cfg.threads or max(1, int(cfg.cpus_per_actor)),
            },
        },
        compute=ray.data.ActorPoolStrategy(size=cfg.actors),
        batch_size=1,
        num_gpus=1 if cfg.use_gpu else 0,
        num_cpus=cfg.cpus_per_actor,
        # Fault tolerance, on purpose (checked by actor_fault_tolerance): Ray Data restarts a
        # dead inference actor without limit and retries the blocks it held; read and write
        # tasks are retried on worker death (Ray's task default). Every stage is idempotent
        # -- a block rewrites only its own chunks -- so a retried block gives the same mosaic.
        # Application errors are not retried.
    )
    ds = ds.map_batches(
        write_blocks,
        fn_kwargs={"mosaic_url": mosaic_url, "with_confidence": cfg.confidence},
        batch_size=1,
        num_cpus=cfg.read_cpus,
    )
    written = 0
    with progress_bar("predict", total=len(todo), enabled=progress) as advance:
        try:
            for _ in ds.iter_rows():
                written += 1
                if times is not None:
                    times.append(time.time())
                advance(1)
        except Exception as exc:  # noqa: BLE001 - surface the worker's cause
            _raise_from_worker(exc, "prediction")
    return written


def _open_or_create_mosaic(
    cfg: PredictConfig, scene: SceneStore, bundle: Bundle, stride: int
) -> MosaicStore:
    """Resume a mosaic made by the same bundle for the same scene, or create a new one."""
    provenance = {
        "scene": scene.url,
        "bundle": storage.normalize(cfg.bundle),
        "bundle_hash": bundle.content_hash,
        "chip_size": bundle.chip_size,
        "stride": stride,
        "tta": cfg.tta,
        "predict_config": cfg.to_dict(),
    }
    url = storage.normalize(cfg.output)
    if storage.exists(url) and not cfg.overwrite:
        try:
            existing = MosaicStore.open(url, mode="r+")
        except InputError:
            raise OutputError(
                f"{cfg.output} exists and is not a w2w mosaic; pass --overwrite or choose "
                "another path"
            ) from None
        prov = existing.meta.get("provenance", {})
        same = (
            prov.get("bundle_hash") == bundle.content_hash
            and prov.get("scene") == scene.url
            and existing.block == cfg.block
            and prov.get("stride") == stride
            and prov.get("tta") == cfg.tta
        )
        if not same:
            raise OutputError(
                f"mosaic {cfg.output} exists from another model, scene or settings; pass "
                "--overwrite to start over, or choose another output"
            )
        return existing
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
        overwrite=cfg.overwrite,
    )
