"""The sieve stage: a mosaic in, a sieved mosaic out, exactly GDAL's sieve of the whole map.

See :mod:`w2w.sieve` for the rule and the passes. Confidence: where the sieve changes a
pixel's class its confidence becomes 1 (``CONFIDENCE_SIEVED``: class set by the minimum
mapping unit, probability unknown), never 0, which is nodata; elsewhere it is copied.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from w2w.core import storage
from w2w.core.classes import CONFIDENCE_SIEVED
from w2w.core.grid import Grid, Window
from w2w.core.outputs import replace_store
from w2w.core.store import MosaicStore
from w2w.core.store.mosaic import PROBABILITIES
from w2w.sieve.config import SieveConfig
from w2w.sieve.passes import sieve_blocks

log = logging.getLogger("w2w")


@dataclass(frozen=True)
class SieveReport:
    """What the sieve wrote."""

    output: str
    grid: Grid
    min_pixels: int
    connectivity: int
    changed_pixels: int


@dataclass(frozen=True)
class MosaicReader:
    """Reads the classes of a mosaic store."""

    url: str
    #: The mosaic's content identity, as the driver read it (:meth:`GeoStore.open_for_blocks`).
    identity: str | None = None

    def read_class(self, window: Window) -> np.ndarray:
        """(h, w) classes of ``window``, 255 on nodata."""
        return MosaicStore.open_for_blocks(self.url, self.identity).read_class(window)


@dataclass(frozen=True)
class MosaicWriter:
    """Writes sieved blocks into the new mosaic.

    Per block: ``class``; ``confidence``, ``CONFIDENCE_SIEVED`` where the class changed and
    copied from the input elsewhere; ``probabilities`` (if any) copied as the model gave them;
    then the block's entry in the manifest of finished blocks.
    """

    input_url: str
    output_url: str
    #: Content identities of both, as the driver read them (:meth:`GeoStore.open_for_blocks`).
    input_identity: str | None = None
    output_identity: str | None = None

    def write_block(
        self, window: Window, sieved: np.ndarray, changed: np.ndarray, classified: int
    ) -> None:
        """Write one block's chunks, then mark the block done."""
        target = MosaicStore.open_for_blocks(self.output_url, self.output_identity, mode="r+")
        source = MosaicStore.open_for_blocks(self.input_url, self.input_identity)
        if source.is_empty(window):  # outside the state: nothing was, nothing is written
            target.mark_block_done(window, 0, empty=True)
            return
        target.write("class", window, sieved)
        if target.has_confidence:
            confidence = source.read_confidence(window)
            confidence[changed] = CONFIDENCE_SIEVED
            target.write("confidence", window, confidence)
        if target.has_probabilities:  # the model's, as predicted: the sieve does not change them
            target.write(PROBABILITIES, window, source.read_probabilities(window))
        # The sieve never changes nodata: the input's classified pixels are the expectation
        # (counted by the task on the input block it read, not on what it wrote).
        target.mark_block_done(window, classified)


def sieve(cfg: SieveConfig, *, progress: bool = True) -> SieveReport:
    """Write a sieved copy of a mosaic; bad input raises a W2WError.

    The new mosaic is built beside the output and moved into place only when complete, so a
    failure leaves an existing output untouched.
    """
    output = cfg.output  # refused when it exists, unless overwrite: the output guard
    source = MosaicStore.open(cfg.input)
    source.require_complete()
    source.require_whole()
    min_pixels = cfg.min_unit_pixels(source.grid)
    provenance = {
        "made_from": {
            "mosaic": source.identity,
            "min_pixels": min_pixels,
            "connectivity": cfg.connectivity,
        },
        "stage": "sieve",
        "input": source.url,
        "min_pixels": min_pixels,
        "min_area_ha": cfg.min_area_ha,
        "connectivity": cfg.connectivity,
        "rule": "GDALSieveFilter (rasterio.features.sieve) with nodata 255 masked",
        "input_provenance": source.provenance,
    }
    with replace_store(output, overwrite=cfg.overwrite) as work_url:
        target = MosaicStore.create(
            work_url,
            source.grid,
            block=source.block,
            chunk=int(source.meta.get("chunk", source.block)),
            shard=bool(source.meta.get("sharded", False)),
            classes=list(source.classes),
            provenance=provenance,
            with_confidence=source.has_confidence,
            with_probabilities=source.has_probabilities,
            overwrite=cfg.overwrite,
        )
        try:
            changed = sieve_blocks(
                MosaicReader(source.url, source.identity),
                MosaicWriter(source.url, work_url, source.identity, target.identity),
                source.grid,
                source.block,
                min_pixels=min_pixels,
                connectivity=cfg.connectivity,
                engine=cfg.engine,
                progress=progress,
            )
            target.mark_complete(changed_pixels=changed)
        except BaseException:
            storage.remove_tree(work_url)
            raise
    log.debug("sieve changed %d pixels", changed)
    return SieveReport(output, source.grid, min_pixels, cfg.connectivity, changed)
