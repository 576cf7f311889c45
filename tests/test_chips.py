"""Reading training chips: chips cut from one read of their chunk equal chips read alone, a
chunk is fetched once per group rather than once per chip, and the chunk-ordered dataset
hands the trainer the same sequence of chips as the dataset read in the given order."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest

from w2w.core.classes import IGNORE
from w2w.core.grid import Window
from w2w.core.store import SceneStore
from w2w.model.normalization import Normalizer
from w2w.train.chips import ChipReader, chip_dataset


def _reader(scene: str, size: int) -> ChipReader:
    store = SceneStore.open(scene)
    info = store.info
    norm = Normalizer.from_stats(info.stats, list(info.band_names), "zscore")
    lut = np.full(256, IGNORE, dtype=np.uint8)
    for k, c in enumerate(info.classes):
        lut[c.id] = k
    return ChipReader(scene, size, norm.to_dict(), tuple(int(v) for v in lut), chunk=info.chunk)


def _windows(size: int) -> list[Window]:
    """Chips inside one chunk, across chunk edges and over the scene's edge (384 px, 128 px
    chunks), in no particular order, one of them twice."""
    origins = [(0, 0), (16, 48), (112, 100), (40, 200), (130, 250), (360, 360), (0, 0), (250, 5)]
    return [Window(r, c, size, size) for r, c in origins]


def test_chips_cut_from_a_chunk_read_equal_a_plain_reading_of_the_arrays(
    synthetic_scene: str,
) -> None:
    """The reference reads the whole image and label arrays with zarr, pads them with the
    store's fill values and normalises and maps each chip by itself."""
    import zarr

    size = 32
    reader = _reader(synthetic_scene, size)
    images, labels = reader.read(_windows(size))

    group = zarr.open_group(synthetic_scene, mode="r")
    image, label = group["image"][...], group["label"][...]
    store = SceneStore.open(synthetic_scene)
    nodata = store.meta["nodata"]
    fill = 0 if nodata is None else nodata
    unl = store.meta.get("unlabelled") or 0
    pad = size
    image = np.pad(image, ((0, 0), (0, pad), (0, pad)), constant_values=fill)
    label = np.pad(label, ((0, pad), (0, pad)), constant_values=unl)
    inside = np.pad(np.ones(image.shape[1:] - np.array([pad, pad]), bool), ((0, pad), (0, pad)))
    norm = Normalizer.from_dict(reader.normalizer)
    lut = np.asarray(reader.lut, dtype=np.uint8)
    for k, w in enumerate(_windows(size)):
        raw = image[:, w.row : w.row_stop, w.col : w.col_stop]
        valid = inside[w.row : w.row_stop, w.col : w.col_stop].copy()
        if nodata is not None:
            valid &= (raw != nodata).all(axis=0)
        expected = norm(raw, valid)
        np.testing.assert_array_equal(images[k], expected)
        lab = lut[label[w.row : w.row_stop, w.col : w.col_stop]]
        lab[~valid] = IGNORE
        np.testing.assert_array_equal(labels[k], lab)


def test_a_chunk_is_fetched_once_for_the_chips_that_lie_in_it(
    synthetic_scene: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sixteen 32 px chips whose origins lie in one 128 px chunk: the chunks they span are
    fetched once each (image and label), not once per chip. Counted at zarr's store."""
    from zarr.storage import LocalStore

    fetched: Counter[str] = Counter()
    get = LocalStore.get

    async def counting_get(self: Any, key: str, *args: Any, **kwargs: Any) -> Any:
        if "/c/" in key:
            fetched[key] += 1
        return await get(self, key, *args, **kwargs)

    monkeypatch.setattr(LocalStore, "get", counting_get)
    size = 32
    reader = _reader(synthetic_scene, size)
    windows = [Window(r, c, size, size) for r in range(128, 256, 32) for c in range(0, 128, 32)]
    images, _ = reader.read(windows)
    assert images.shape[0] == 16
    assert fetched and max(fetched.values()) == 1, fetched
    assert sum(1 for k in fetched if k.startswith("image/")) == 1, fetched


def test_the_chunk_ordered_dataset_hands_out_the_chips_in_the_given_order(
    synthetic_scene: str, ray_session: None
) -> None:
    """The same shuffled rows, read in their order and read grouped by chunk then sorted back:
    the same chips in the same sequence, in the same blocks at every run."""
    size = 32
    reader = _reader(synthetic_scene, size)
    grid = [(r, c) for r in range(0, 384, 16) for c in range(0, 384, 16)]
    order = np.random.default_rng(3).permutation(len(grid))[:96]
    rows = [{"row": grid[i][0], "col": grid[i][1]} for i in order]

    def chips(ds: Any) -> tuple[np.ndarray, np.ndarray, list[int]]:
        batches = list(ds.materialize().iter_batches(batch_size=None, batch_format="numpy"))
        sizes = [len(b["image"]) for b in batches]  # one batch a block
        image = np.concatenate([b["image"] for b in batches])
        label = np.concatenate([b["label"] for b in batches])
        return image, label, sizes

    from ray.data import DataContext

    context = DataContext.get_current()
    before = context.execution_options.preserve_order
    context.execution_options.preserve_order = True  # as training does when reproducible
    try:
        plain_image, plain_label, _ = chips(chip_dataset(rows, reader, batch_size=8))
    finally:
        context.execution_options.preserve_order = before
    windows = [Window(r["row"], r["col"], size, size) for r in rows]
    np.testing.assert_array_equal(plain_image, reader.read(windows)[0])
    grouped_image, grouped_label, sizes = chips(
        chip_dataset(rows, reader, batch_size=8, chunk_order=True)
    )
    np.testing.assert_array_equal(grouped_image, plain_image)
    np.testing.assert_array_equal(grouped_label, plain_label)
    again = chips(chip_dataset(rows, reader, batch_size=8, chunk_order=True))[2]
    assert sizes == again and len(sizes) > 1, (sizes, again)
