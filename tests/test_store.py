"""Scene and mosaic stores: padded reads, one writer per chunk, object storage."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import rioxarray  # noqa: F401 - registers the .rio accessor
import xarray as xr

from tests.conftest import write_tif
from w2w.core.errors import InputError, OutputError
from w2w.core.grid import Grid, Window
from w2w.core.store import MosaicStore, SceneStore
from w2w.ingest import IngestConfig, ingest
from w2w.ingest.synth import SynthConfig


def small_grid(h: int = 50, w: int = 70) -> Grid:
    return SynthConfig(output="unused", height=h, width=w).grid


def test_padded_reads_fill_outside_the_grid(tmp_path: Path) -> None:
    grid = small_grid()
    store = SceneStore.create(
        str(tmp_path / "s.zarr"),
        grid,
        band_names=["a", "b"],
        dtype="int16",
        nodata=-1,
        chunk=16,
        with_label=True,
    )
    data = np.arange(2 * 50 * 70, dtype="int16").reshape(2, 50, 70)
    for w in grid.blocks(32).windows():
        store.write("image", w, data[(..., *w.slices)])
    got = store.read_image(Window(-5, 60, 20, 20))
    assert got.shape == (2, 20, 20)
    assert (got[:, :5] == -1).all() and (got[:, :, 10:] == -1).all()
    np.testing.assert_array_equal(got[:, 5:, :10], data[:, 0:15, 60:70])
    valid = store.valid_mask(got, Window(-5, 60, 20, 20))
    assert valid[5:, :10].all() and not valid[:5].any() and not valid[:, 10:].any()
    assert (store.read_label(Window(45, 0, 10, 10))[5:] == 0).all()


def test_writes_must_own_whole_chunks(tmp_path: Path) -> None:
    grid = small_grid()
    store = MosaicStore.create(str(tmp_path / "m.zarr"), grid, block=16, classes=[])
    store.write("class", Window(16, 32, 16, 16), np.zeros((16, 16), "uint8"))
    store.write("class", Window(48, 64, 2, 6), np.zeros((2, 6), "uint8"))  # edge chunk
    with pytest.raises(ValueError, match="exactly one writer"):
        store.write("class", Window(8, 0, 16, 16), np.zeros((16, 16), "uint8"))
    with pytest.raises(ValueError, match="exactly one writer"):
        store.write("class", Window(0, 0, 16, 8), np.zeros((16, 8), "uint8"))


def test_sharded_mosaic_write_unit_is_the_shard(tmp_path: Path) -> None:
    store = MosaicStore.create(
        str(tmp_path / "m.zarr"), small_grid(), block=32, chunk=16, shard=True, classes=[]
    )
    assert store.chunk_shape("class") == (32, 32)
    with pytest.raises(ValueError, match="exactly one writer"):
        store.write("class", Window(16, 0, 16, 32), np.zeros((16, 32), "uint8"))


def test_manifest_records_finished_blocks(tmp_path: Path) -> None:
    store = MosaicStore.create(str(tmp_path / "m.zarr"), small_grid(), block=32, classes=[])
    assert store.block_grid_shape == (2, 3)
    assert not store.done_blocks().any()
    store.mark_block_done(Window(32, 64, 18, 6))
    reopened = MosaicStore.open(store.url)
    assert reopened.done_blocks().tolist() == [[False, False, False], [False, False, True]]


def test_open_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no w2w scene store at"):
        SceneStore.open(str(tmp_path / "missing.zarr"))
    MosaicStore.create(str(tmp_path / "m.zarr"), small_grid(), block=32, classes=[])
    with pytest.raises(InputError, match="is not a w2w scene store"):
        SceneStore.open(str(tmp_path / "m.zarr"))
    with pytest.raises(OutputError, match="exists already"):
        MosaicStore.create(str(tmp_path / "m.zarr"), small_grid(), block=32, classes=[])


def test_ingest_to_s3_equals_local(
    tmp_path: Path, s3_bucket: str, rng: np.random.Generator, ray_session: None
) -> None:
    data = rng.integers(1, 4000, size=(3, 45, 61)).astype("uint16")
    labels = rng.integers(0, 3, size=(45, 61)).astype("uint8")
    image = str(write_tif(tmp_path / "i.tif", data, nodata=0))
    label = str(write_tif(tmp_path / "l.tif", labels))
    local = str(tmp_path / "s.zarr")
    remote = f"{s3_bucket}/scenes/s.zarr"
    for out in (local, remote):
        ingest(
            IngestConfig(images=[image], label=label, output=out, chunk=16, block=32),
            progress=False,
        )
    a, b = SceneStore.open(local), SceneStore.open(remote)
    full = a.grid.full_window
    np.testing.assert_array_equal(a.read_image(full), b.read_image(full))
    np.testing.assert_array_equal(a.read_label(full), b.read_label(full))
    assert a.info.stats == b.info.stats and a.grid == b.grid
    # Other tools read it from object storage too.
    ds = xr.open_zarr(remote, storage_options={"endpoint_url": os.environ["AWS_ENDPOINT_URL"]})
    np.testing.assert_array_equal(ds["image"].values, data)
    assert ds["image"].rio.transform() == a.grid.transform
    with pytest.raises(OutputError, match="exists already"):
        ingest(IngestConfig(images=[image], output=remote), progress=False)


def test_a_finished_mosaic_reads_its_block_books_in_one_request_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Block tasks record their blocks one object per block; a reader of the finished mosaic
    reads each book (finished blocks, valid pixels) in one request, from the copy sealed when
    it was marked complete, and the copy says what the cells say. A block cleared afterwards
    makes the mosaic incomplete, and the cells are read again. Counted at zarr's store."""
    from zarr.storage import LocalStore

    grid = small_grid()
    store = MosaicStore.create(str(tmp_path / "m.zarr"), grid, block=8, classes=[])
    blocks = store.blocks()
    assert len(blocks) == 63
    for k, w in enumerate(blocks):
        store.write("class", w, np.full((w.height, w.width), k % 3, "uint8"))
        store.mark_block_done(w, valid_pixels=w.size - k % 2)
    expected_valid = np.array([w.size - k % 2 for k, w in enumerate(blocks)]).reshape(7, 9)
    store.mark_complete()

    fetched: list[str] = []
    get = LocalStore.get

    async def counting_get(self: object, key: str, *args: object, **kwargs: object) -> object:
        if "/c/" in key and key.startswith("_w2w/"):
            fetched.append(key)
        return await get(self, key, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(LocalStore, "get", counting_get)
    finished = MosaicStore.open(store.url)
    assert finished.done_blocks().all()
    np.testing.assert_array_equal(finished.expected_valid_pixels(), expected_valid)
    assert len(fetched) == 2, fetched

    fetched.clear()
    writer = MosaicStore.open(store.url, mode="r+")
    writer.clear_block(blocks[10])
    again = MosaicStore.open(store.url)
    assert not again.meta["complete"]
    done = again.done_blocks()
    assert not done[1, 1] and done.sum() == 62
    assert len([k for k in fetched if "blocks_done/" in k]) >= 63, fetched


def test_an_open_store_looks_up_each_array_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each node's metadata is one request on object storage; a block task writing two blocks
    and asking what the mosaic holds reads each array's metadata once. Counted at zarr's
    store."""
    from collections import Counter

    from zarr.storage import LocalStore

    store = MosaicStore.create(str(tmp_path / "m.zarr"), small_grid(), block=16, classes=[])
    fetched: Counter[str] = Counter()
    get = LocalStore.get

    async def counting_get(self: object, key: str, *args: object, **kwargs: object) -> object:
        if key.endswith("zarr.json"):
            fetched[key] += 1
        return await get(self, key, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(LocalStore, "get", counting_get)
    task = MosaicStore.open(store.url, mode="r+")
    for w in task.blocks()[:2]:
        assert task.has_confidence and not task.has_probabilities
        task.write("class", w, np.zeros((w.height, w.width), "uint8"))
        task.write("confidence", w, np.zeros((w.height, w.width), "uint8"))
        task.mark_block_done(w, valid_pixels=w.size)
    assert fetched and max(fetched.values()) == 1, fetched


def test_block_tasks_of_a_process_read_a_stores_metadata_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Predict's read and write tasks (and the sieve's) open their stores through
    ``open_for_blocks``: one process reads each store's metadata once for all the blocks it
    works on, not once a block; a store whose content identity is not the driver's is an
    error. Counted at zarr's store."""
    from collections import Counter

    from zarr.storage import LocalStore

    from w2w.core.pins import InputChangedError
    from w2w.core.store import base
    from w2w.predict.plan import BlockPlan
    from w2w.predict.run import read_blocks, write_blocks

    monkeypatch.setattr(base, "_OPENED", {})
    grid = small_grid(64, 64)
    scene = SceneStore.create(
        str(tmp_path / "s.zarr"), grid, band_names=["a"], dtype="uint16", nodata=0
    )
    scene.write("image", grid.full_window, np.ones((1, 64, 64), "uint16"))
    scene.update_meta(identity="scene-1", complete=True)
    mosaic = MosaicStore.create(
        str(tmp_path / "m.zarr"), grid, block=16, classes=[], provenance={"made_from": {"a": 1}}
    )
    assert scene.identity and mosaic.identity
    plan = BlockPlan(64, 64, 16, 8, 8).__dict__
    fetched: Counter[str] = Counter()
    get = LocalStore.get

    async def counting_get(self: object, key: str, *args: object, **kwargs: object) -> object:
        if key.endswith("zarr.json"):
            fetched[f"{self.root}/{key}"] += 1  # type: ignore[attr-defined]
        return await get(self, key, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(LocalStore, "get", counting_get)
    for w in mosaic.blocks()[:4]:  # one block a task, as predict runs them
        rows = {k: np.asarray([v]) for k, v in w.to_dict().items()}
        read = read_blocks(rows, scene.url, scene.identity, plan)
        assert read["valid"][0].any()
        out = {
            **rows,
            "class": np.zeros((1, 16, 16), "uint8"),
            "confidence": np.zeros((1, 16, 16), "uint8"),
            "valid_pixels": np.asarray([256]),
            "chips_forwarded": np.asarray([1]),
            "chips_skipped": np.asarray([0]),
        }
        write_blocks(out, mosaic.url, mosaic.identity, True)
    assert fetched and max(fetched.values()) == 1, fetched
    assert MosaicStore.open(mosaic.url).done_blocks().sum() == 4
    with pytest.raises(InputChangedError, match="changed while it was being read"):
        SceneStore.open_for_blocks(scene.url, "another-identity")
