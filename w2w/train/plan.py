"""The driver's side of training: check the inputs, index and split the chips, claim the run.

:func:`prepare` validates everything before any worker starts -- the model by name, the chip
size against the encoder, bands, classes, class weights -- then indexes the chips, splits
them spatially and selects them; the result is a frozen :class:`TrainPlan` that every worker
receives. :func:`claim_run` starts a new run or checks that an existing run of the same name
can be resumed with these settings.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from w2w.core import storage
from w2w.core.classes import ClassInfo, label_lut
from w2w.core.errors import ConfigError, InputError
from w2w.core.grid import Window
from w2w.core.outputs import RUN_FILE, discard_aside, restore, set_aside
from w2w.core.split import SplitPlan, make_split
from w2w.core.store import SceneInfo, SceneStore
from w2w.core.store.integrity import short
from w2w.model.encoder_file import (
    check_fits,
    check_shapes,
    is_bundle_file,
    is_encoder_file,
    load_encoder,
)
from w2w.model.models import ModelSpec, build_model, check_chip_size
from w2w.model.normalization import Normalizer
from w2w.model.published import initial_encoder, is_published_name
from w2w.train.chips import (
    ChipReader,
    chip_index,
    class_weights,
    describe_selection,
    select_chips,
)
from w2w.train.config import TrainConfig
from w2w.train.fit import describe, fit

log = logging.getLogger("w2w")

#: The file in a run's folder that records the settings the run was started with.


@dataclass(frozen=True)
class TrainPlan:
    """What every training worker needs, checked and built on the driver."""

    spec: ModelSpec
    classes: tuple[ClassInfo, ...]
    bands: tuple[str, ...]
    nodata: float | None
    normalizer: Normalizer
    reader: ChipReader
    #: Training samples (chip origins, a repeated chip repeated), in a seeded random order.
    train_rows: tuple[dict[str, int], ...]
    val_windows: tuple[Window, ...]
    class_weights: tuple[float, ...]
    split: SplitPlan
    #: Chip counts per split, for the log and the run's report.
    chips: dict[str, Any]
    scene_url: str
    scene_grid: dict[str, Any]
    #: The scene's content identity: a run resumes only on the same content.
    scene_identity: str | None = None
    #: Settings chosen for the scene because they were left unset (:mod:`w2w.train.fit`).
    fitted: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: The settings in effect: the config given, with those chosen for the scene.
    config: TrainConfig | None = None
    #: The encoder's initial weights from published weights (name -> array), fitted to the
    #: scene's bands on the driver (:mod:`w2w.model.published`); None otherwise.
    initial_encoder: dict[str, np.ndarray] | None = dataclasses.field(default=None, repr=False)
    #: Which published weights, from where, and how the first convolution took the bands.
    published_weights: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        """Number of classes the model predicts."""
        return len(self.classes)

    def for_workers(self) -> TrainPlan:
        """The plan without the training rows, which reach the workers as a Ray dataset."""
        return dataclasses.replace(self, train_rows=())

    @property
    def scene(self) -> dict[str, Any]:
        """The scene the model was trained on, as recorded in the bundle."""
        return {"url": self.scene_url, "grid": self.scene_grid, "identity": self.scene_identity}


def prepare(cfg: TrainConfig, *, progress: bool = True) -> TrainPlan:
    """Fit the settings left unset to the scene (:mod:`w2w.train.fit`; the plan's ``config``),
    check the inputs and build the plan every worker receives."""
    cfg, fitted = _fit(cfg)
    store = SceneStore.open(cfg.scene)
    store.require_whole()
    info = store.info
    classes = _classes(cfg, info)
    n_classes = len(classes)
    spec = ModelSpec(
        cfg.model.arch, cfg.model.encoder, info.n_bands, n_classes, dict(cfg.model.options)
    )
    model = build_model(spec)
    check_chip_size(model, spec, cfg.chips.size)
    normalizer = Normalizer.from_stats(info.stats, list(info.band_names), cfg.normalization)
    normalizer, initial, published = _encoder_start(cfg, spec, model, info, normalizer)
    lut = label_lut(classes, info.unlabelled)

    index = chip_index(
        store, cfg.chips.size, cfg.chips.step, lut, n_classes, engine=cfg.engine, progress=progress
    )
    try:
        split = make_split(store.grid, cfg.chips.size, cfg.chips.step, cfg.split, index.labelled)
    except ValueError as exc:
        raise ConfigError(f"split: {exc}") from None
    train_sel = select_chips(
        index, split, "train", cfg.chips, seed=cfg.seed, balance=cfg.chips.balance
    )
    val_sel = select_chips(index, split, "val", cfg.chips)
    test_sel = select_chips(index, split, "test", cfg.chips)
    _require_chips(cfg, train_sel, val_sel, test_sel)
    if cfg.loss.class_weights == "auto":
        weights = class_weights(index, train_sel, n_classes)
    else:
        weights = [1.0] * n_classes if cfg.loss.class_weights == "none" else cfg.loss.class_weights
    chips_report = describe_selection(
        index, split, {"train": train_sel, "val": val_sel, "test": test_sel}
    )
    log.info(
        "chips: %d train (%d samples), %d val, %d test",
        len(train_sel),
        sum(train_sel.repeats),
        len(val_sel),
        len(test_sel),
    )
    # The selection lists chips in scene order, a repeated chip's copies side by side. The
    # training loop shuffles only within a small buffer, so in that order every batch would
    # hold neighbouring (overlapping) chips of one small area: noisy batch-norm statistics
    # and gradients that see one land cover at a time. Shuffle once here, seeded.
    rows = train_sel.rows
    order = np.random.default_rng(cfg.seed).permutation(len(rows))
    return TrainPlan(
        spec=spec,
        classes=classes,
        bands=tuple(info.band_names),
        nodata=info.nodata,
        normalizer=normalizer,
        reader=ChipReader(
            store.url,
            cfg.chips.size,
            normalizer.to_dict(),
            tuple(int(v) for v in lut),
            chunk=info.chunk,
        ),
        train_rows=tuple(rows[i] for i in order),
        val_windows=tuple(val_sel.windows),
        class_weights=tuple(float(w) for w in weights),
        split=split,
        chips=chips_report,
        scene_url=store.url,
        scene_grid=store.grid.to_attrs(),
        scene_identity=store.identity,
        fitted=fitted,
        config=cfg,
        initial_encoder=initial,
        published_weights=published,
    )


def _require_chips(cfg: TrainConfig, train: Any, val: Any, test: Any) -> None:
    """No training chip is an error; so is a validation split asked for but empty (no epoch
    could be chosen and no early stop made); an empty test split is said (evaluation would
    have nothing to score)."""
    if not len(train):
        raise InputError(
            f"no training chip of {cfg.chips.size} px has {cfg.chips.min_labelled_pixels}+ "
            f"labelled and {cfg.chips.min_valid_fraction:.0%}+ valid pixels in the training "
            "split; lower chips.min_valid_fraction or chips.size, or check the labels"
        )
    fix = (
        "their chips overlap training chips (the buffer) or hold too few labels; use larger "
        "split.block_chips or other split.seed, or label more places"
    )
    if cfg.split.val_fraction > 0 and not len(val):
        raise InputError(
            f"the validation split holds no chip: {fix}; or set split.val_fraction 0 to "
            "train without validation"
        )
    if cfg.split.mode == "blocks" and cfg.split.test_fraction > 0 and not len(test):
        log.warning("the test split holds no chip (%s); evaluate will have nothing to score", fix)


def _fit(cfg: TrainConfig) -> tuple[TrainConfig, dict[str, Any]]:
    """The config with the settings left unset fitted to the scene, logged."""
    cfg, fitted = fit(cfg)
    if fitted:
        log.info("settings fitted to the scene: %s", describe(fitted))
    return cfg, fitted


def _encoder_start(
    cfg: TrainConfig, spec: ModelSpec, model: Any, info: SceneInfo, normalizer: Normalizer
) -> tuple[Normalizer, dict[str, np.ndarray] | None, dict[str, Any]]:
    """Where the encoder starts, checked on the driver: published weights fitted to the
    scene's bands (:mod:`w2w.model.published`), or a file whose normalisation training
    adopts when ``w2w pretrain`` wrote it. Returns the normalisation, the published weights
    and their record."""
    weights = cfg.model.encoder_weights
    bands = tuple(info.band_names)
    if is_published_name(weights):
        if getattr(model, "encoder", None) is None:
            raise ConfigError(f"{spec.arch} has no encoder to take encoder weights")
        initial, record = initial_encoder(
            str(weights), spec.encoder, model.encoder, bands, cfg.model.encoder_weights_file
        )
        return normalizer, initial, record
    if weights:
        normalizer = _pretrained_normalizer(cfg, spec, bands, model) or normalizer
    return normalizer, None, {}


def _pretrained_normalizer(
    cfg: TrainConfig, spec: ModelSpec, bands: tuple[str, ...], model: Any
) -> Normalizer | None:
    """Check an encoder file from ``w2w pretrain`` against the model and the scene (encoder,
    options, bands, normalisation method, tensor shapes) and return the normalisation the
    encoder saw, which training then uses too: the encoder's features were learnt on those
    inputs. None for weights from elsewhere (a state dict of the encoder, checked when a
    worker loads it); a model bundle is refused here, naming the option it belongs to."""
    url = str(cfg.model.encoder_weights)
    if not is_encoder_file(url):
        if is_bundle_file(url):
            raise ConfigError(
                f"encoder weights {url} are a model bundle, not an encoder file; start from "
                "the whole model with --model-weights, or give the file `w2w pretrain` wrote"
            )
        return None
    encoder = load_encoder(url)
    check_fits(encoder, url, spec, bands, cfg.normalization)
    check_shapes(encoder, url, model.encoder)
    log.info("encoder weights: %s (pretrained, %s)", url, encoder.content_hash[:19])
    return encoder.normalizer


def _classes(cfg: TrainConfig, info: SceneInfo) -> tuple[ClassInfo, ...]:
    """The classes the model learns: the scene's labelled ones (two at least), checked
    against the configured class weights."""
    if not info.has_label:
        raise InputError(
            f"scene {cfg.scene} has no labels; ingest it with `w2w ingest ... --label LABELS.tif`"
        )
    classes = tuple(c for c in info.classes if c.id != info.unlabelled)
    if len(classes) < 2:
        raise InputError(
            f"scene {cfg.scene} has {len(classes)} labelled class(es); training needs at least 2"
        )
    weights = cfg.loss.class_weights
    if isinstance(weights, list) and len(weights) != len(classes):
        raise ConfigError(
            f"loss.class_weights has {len(weights)} values but the scene has "
            f"{len(classes)} classes ({', '.join(c.name for c in classes)})"
        )
    return classes


def run_fingerprint(cfg: TrainConfig, plan: TrainPlan) -> dict[str, Any]:
    """What must not change between a run and its resumption: scene, model, chips, split."""
    return {
        "scene": plan.scene_identity,
        "model": plan.spec.to_dict(),
        "chips": cfg.chips.to_dict(),
        "split": cfg.split.to_dict(),
        "normalization": cfg.normalization,
        "classes": [c.to_dict() for c in plan.classes],
    }


def claim_run(cfg: TrainConfig, plan: TrainPlan) -> str | None:
    """Start a new training run, or check that an existing run of this name can be resumed
    with these settings (:func:`claim`)."""
    return claim(cfg, run_fingerprint(cfg, plan))


def claim(cfg: Any, mine: dict[str, Any]) -> str | None:
    """Start a new run (of ``w2w train`` or ``w2w pretrain``: ``cfg`` has their ``run_dir``,
    ``run_name``, ``storage_path`` and ``overwrite``), or check that an existing run of this
    name was started with the same fingerprint ``mine`` and can be resumed.

    Ray Train resumes any run with the same name and storage path; resuming one that was
    made with another model or data would fail deep inside a worker, so the settings that
    define a run are recorded in the run directory and compared here. With ``overwrite`` an
    existing run is moved aside, not deleted: its location is returned, for
    :func:`release_run` to delete once the new run has finished, or to restore if it fails.
    """
    run_file = storage.join(cfg.run_dir, RUN_FILE)
    aside = None
    if cfg.overwrite and storage.exists(cfg.run_dir):
        aside = set_aside(cfg.run_dir)
        log.info("run %s moved aside to %s until the new run finishes", cfg.run_name, aside)
    if storage.exists(run_file):
        theirs = json.loads(storage.read_bytes(run_file))
        kinds = (theirs.get("kind", "training"), mine.get("kind", "training"))
        if kinds[0] != kinds[1]:
            raise ConfigError(
                f"run '{cfg.run_name}' in {cfg.storage_path} is a {kinds[0]} run, not a "
                f"{kinds[1]} run; choose another --run-name"
            )
        if theirs != mine:
            changed = sorted(k for k in mine if mine.get(k) != theirs.get(k))
            scene = (
                f" (scene content {short(theirs.get('scene'))} then, {short(mine['scene'])} now)"
                if "scene" in changed
                else ""
            )
            raise ConfigError(
                f"run '{cfg.run_name}' in {cfg.storage_path} was started with other "
                f"{', '.join(changed)} settings{scene} and cannot be resumed with these; choose "
                "another --run-name, or pass overwrite to start it again"
            )
        log.info("resuming run %s from its last checkpoint", cfg.run_name)
    elif storage.exists(cfg.run_dir) and _has_checkpoints(cfg.run_dir):
        raise ConfigError(f"{cfg.run_dir} holds a run w2w did not start; choose another --run-name")
    else:
        storage.atomic_write_bytes(run_file, json.dumps(mine, indent=2, sort_keys=True).encode())
    return aside


def release_run(cfg: Any, aside: str | None, *, succeeded: bool) -> None:
    """After training: delete the old run set aside by ``overwrite`` when the new one
    succeeded, else put it back in place of the failed new one."""
    if aside is None:
        return
    if succeeded:
        discard_aside(aside, cfg.run_dir)
    else:
        restore(aside, cfg.run_dir)
        log.warning("the run failed: the previous run %s is back in place", cfg.run_name)


def _has_checkpoints(run_dir: str) -> bool:
    fs = storage.filesystem(run_dir)
    try:
        return any("checkpoint_" in p for p in fs.ls(run_dir, detail=False))
    except FileNotFoundError:
        return False
