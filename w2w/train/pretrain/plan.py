"""The driver's side of pretraining: check the inputs, list the chips, claim the run.

:func:`prepare` checks everything before a worker starts -- the scene (its image whole), the
model (it must have an encoder; the chip size must fit it) -- then lists every chip of the
scene's chip grid with enough valid pixels; labels are neither needed nor read. The result is
a frozen :class:`PretrainPlan` that every worker receives.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from w2w.core.errors import ConfigError, InputError
from w2w.core.store import SceneStore
from w2w.model.models import PIXEL_ARCH, build_model, check_chip_size
from w2w.model.normalization import Normalizer
from w2w.model.spec import ModelSpec
from w2w.train.chips import ImageChipReader, chip_index
from w2w.train.plan import claim
from w2w.train.pretrain.config import PretrainConfig

log = logging.getLogger("w2w")


@dataclass(frozen=True)
class PretrainPlan:
    """What every pretraining worker needs, checked and built on the driver."""

    #: The model whose encoder is pretrained (``classes`` is a placeholder: the head is not).
    spec: ModelSpec
    bands: tuple[str, ...]
    normalizer: Normalizer
    reader: ImageChipReader
    #: Chip origins, in a seeded random order.
    rows: tuple[dict[str, int], ...]
    #: Chip counts, for the log and the encoder file.
    chips: dict[str, Any]
    scene_url: str
    scene_grid: dict[str, Any]
    scene_identity: str | None = None

    def for_workers(self) -> PretrainPlan:
        """The plan without the rows, which reach the workers as a Ray dataset."""
        return dataclasses.replace(self, rows=())

    @property
    def scene(self) -> dict[str, Any]:
        """The scene the encoder was pretrained on, as recorded in its file."""
        return {"url": self.scene_url, "grid": self.scene_grid, "identity": self.scene_identity}


def prepare(cfg: PretrainConfig, *, progress: bool = True) -> PretrainPlan:
    """Check the inputs and build the plan every worker receives."""
    store = SceneStore.open(cfg.scene)
    store.require_whole(("image",))
    info = store.info
    if cfg.model.arch.lower() == PIXEL_ARCH.lower():
        raise ConfigError(
            f"{PIXEL_ARCH} has no encoder to pretrain; choose an architecture such as Unet"
        )
    spec = ModelSpec(cfg.model.arch, cfg.model.encoder, info.n_bands, 1, dict(cfg.model.options))
    check_chip_size(build_model(spec), spec, cfg.chip_size)
    normalizer = Normalizer.from_stats(info.stats, list(info.band_names), cfg.normalization)
    index = chip_index(
        store,
        cfg.chip_size,
        cfg.step,
        np.zeros(1, np.uint8),
        0,
        engine=cfg.engine,
        progress=progress,
    )
    keep = index.valid >= max(1.0, cfg.min_valid_fraction * cfg.chip_size**2)
    rows_i, cols_i = np.nonzero(keep)
    rows = [
        {"row": int(i) * cfg.step, "col": int(j) * cfg.step}
        for i, j in zip(rows_i, cols_i, strict=True)
    ]
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(rows))
    if cfg.max_chips is not None:
        order = order[: cfg.max_chips]
    rows = [rows[i] for i in order]
    needed = 2 * cfg.workers.num_workers
    if len(rows) < needed:
        raise InputError(
            f"the scene has {len(rows)} chips of {cfg.chip_size} px with "
            f"{cfg.min_valid_fraction:.0%}+ valid pixels; pretraining on "
            f"{cfg.workers.num_workers} worker(s) needs {needed}: lower chip_size or "
            "min_valid_fraction"
        )
    chips = {
        "chip_grid": list(index.shape),
        "chips": len(rows),
        "valid_pixels": int(index.valid[keep].sum()),
        "of_grid": int(keep.sum()),
    }
    log.info("pretraining chips: %d of %d in the grid", len(rows), index.valid.size)
    return PretrainPlan(
        spec=spec,
        bands=tuple(info.band_names),
        normalizer=normalizer,
        reader=ImageChipReader(store.url, cfg.chip_size, normalizer.to_dict(), chunk=info.chunk),
        rows=tuple(rows),
        chips=chips,
        scene_url=store.url,
        scene_grid=store.grid.to_attrs(),
        scene_identity=store.identity,
    )


def fingerprint(cfg: PretrainConfig, plan: PretrainPlan) -> dict[str, Any]:
    """What must not change between a pretraining run and its resumption."""
    return {
        "kind": "pretraining",
        "scene": plan.scene_identity,
        "model": plan.spec.to_dict(),
        "chips": {
            "size": cfg.chip_size,
            "stride": cfg.step,
            "min_valid_fraction": cfg.min_valid_fraction,
            "max_chips": cfg.max_chips,
        },
        "normalization": cfg.normalization,
        "views": cfg.views.to_dict(),
        "vicreg": cfg.vicreg.to_dict(),
    }


def claim_run(cfg: PretrainConfig, plan: PretrainPlan) -> str | None:
    """Start a new pretraining run or check that the existing one can be resumed."""
    return claim(cfg, fingerprint(cfg, plan))
