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
