"""The sieve: block by block, exactly rasterio's (GDAL's) sieve of the whole raster."""

from __future__ import annotations

import os
import tempfile
import tracemalloc
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio.features
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.crs import CRS
from typer.testing import CliRunner

from w2w.cli import app
from w2w.core.classes import CLASS_NODATA, ClassInfo
from w2w.core.errors import ConfigError, InputError, OutputError
from w2w.core.grid import Grid, Window
from w2w.core.store import MosaicStore
from w2w.sieve import SieveConfig, sieve
from w2w.sieve.passes import sieve_blocks
from w2w.sieve.run import MosaicWriter

CLASSES = [ClassInfo(i, f"class_{i}", (10 * i, 20 * i, 30 * i)) for i in range(5)]


def make_grid(height: int, width: int, *, pixel: float = 10.0, epsg: int = 32613) -> Grid:
    transform = Affine(pixel, 0.0, 300_000.0, 0.0, -pixel, 3_500_000.0)
    return Grid(CRS.from_epsg(epsg).to_wkt(), transform, height, width)


def write_mosaic(
    url: str, cls: np.ndarray, block: int, *, grid: Grid | None = None, complete: bool = True
) -> str:
    """A finished mosaic holding ``cls``; confidence is a pattern that tells pixels apart."""
    grid = grid or make_grid(*cls.shape)
    store = MosaicStore.create(url, grid, block=block, classes=CLASSES, provenance={"by": "test"})
    confidence = (np.arange(cls.size) % 250 + 1).astype(np.uint8).reshape(cls.shape)
    for window in grid.blocks(store.block).windows():
        store.write("class", window, cls[window.slices])
        store.write("confidence", window, confidence[window.slices])
        store.mark_block_done(window)
    if complete:
        store.mark_complete()
    return url


def read_all(url: str, name: str = "class") -> np.ndarray:
    store = MosaicStore.open(url)
    return store.read(name, store.grid.full_window, 0)


def reference(cls: np.ndarray, min_pixels: int, connectivity: int) -> np.ndarray:
    """rasterio's sieve of the whole raster, nodata (255) masked out."""
    return rasterio.features.sieve(
        cls, min_pixels, mask=cls != CLASS_NODATA, connectivity=connectivity
    )


@dataclass(frozen=True)
class ArrayReader:
    """Blocks of an in-memory class raster (the sieve's I/O without a store)."""

    cls: np.ndarray

    def read_class(self, window: Window) -> np.ndarray:
        return self.cls[window.slices].copy()


class ArrayWriter:
    """Collects sieved blocks into an array; every pixel must be written exactly once."""

    def __init__(self, shape: tuple[int, int]) -> None:
        self.out = np.zeros(shape, dtype=np.uint8)
        self.writes = np.zeros(shape, dtype=np.int32)

    def write_block(
        self, window: Window, sieved: np.ndarray, changed: np.ndarray, classified: int
    ) -> None:
        self.out[window.slices] = sieved
        self.writes[window.slices] += 1


def sieve_in_memory(
    cls: np.ndarray, block: int, min_pixels: int, connectivity: int, max_pairs: float = 2.0
) -> np.ndarray:
    """The block-wise sieve (the same passes as ``w2w sieve``) on an in-memory raster."""
    writer = ArrayWriter(cls.shape)
    sieve_blocks(
        ArrayReader(cls),
        writer,
        make_grid(*cls.shape),
        block,
        min_pixels=min_pixels,
        connectivity=connectivity,
        engine="local",
        progress=False,
        max_pairs=max_pairs,
    )
    assert (writer.writes == 1).all()
    return writer.out


def run_sieve(input_url: str, output_url: str, **settings: object) -> np.ndarray:
    sieve(
        SieveConfig.from_dict(
            {"input": input_url, "output": output_url, "engine": "local", **settings}
        ),
        progress=False,
    )
    return read_all(output_url)


# -- random class rasters ---------------------------------------------------------------------


@st.composite
def class_rasters(draw: st.DrawFn, max_side: int = 48) -> np.ndarray:
    """Class rasters of odd sizes.

    Blobs with speckle, chains of one-pixel patches, thin stripes, squares of equal size
    (ties), with nodata as speckle and as blobs.
    """
    height = draw(st.integers(2, max_side))
    width = draw(st.integers(2, max_side))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n_classes = draw(st.integers(2, 5))
    pattern = draw(st.sampled_from(["blobs", "chains", "stripes", "squares"]))
    if pattern == "blobs":
        cell = draw(st.integers(2, 12))
        coarse = rng.integers(0, n_classes, (height // cell + 2, width // cell + 2))
        dy, dx = rng.integers(0, cell, 2)
        cls = np.kron(coarse, np.ones((cell, cell), np.int64))[dy : dy + height, dx : dx + width]
    elif pattern == "chains":  # alternating pixels: one-pixel patches, long chains, ties
        cls = (np.add.outer(np.arange(height), np.arange(width)) % 2).astype(np.int64)
        cls[:, : rng.integers(0, width)] = 2
    elif pattern == "stripes":
        stripe = int(rng.integers(1, 4))
        cls = np.broadcast_to((np.arange(width) // stripe) % n_classes, (height, width)).copy()
        cls[: rng.integers(0, height)] = n_classes - 1
    else:  # squares of one size: many ties between neighbours of equal size
        side = int(rng.integers(1, 5))
        coarse = rng.integers(0, n_classes, (height // side + 1, width // side + 1))
        cls = np.kron(coarse, np.ones((side, side), np.int64))[:height, :width]
    speckle = draw(st.sampled_from([0.0, 0.05, 0.3]))
    noise = rng.random((height, width)) < speckle
    cls[noise] = rng.integers(0, n_classes, int(noise.sum()))
    out = cls.astype(np.uint8)
    nodata = draw(st.sampled_from([0.0, 0.0, 0.05, 0.3]))
    out[rng.random((height, width)) < nodata] = CLASS_NODATA
    if draw(st.booleans()):  # a nodata blob
        r, c = rng.integers(0, height), rng.integers(0, width)
        out[r : r + rng.integers(1, 12), c : c + rng.integers(1, 12)] = CLASS_NODATA
    return out


@st.composite
def sieve_cases(draw: st.DrawFn) -> tuple[np.ndarray, int, int, int]:
    """(raster, block, min pixels, connectivity); thresholds up to beyond a block's area."""
    block = draw(st.sampled_from([1, 3, 4, 5, 8, 13, 16, 64]))
    cls = draw(class_rasters(max_side=16 if block < 4 else 48))  # tiny blocks: many tasks
    limit = cls.size - 1  # rasterio refuses a size not smaller than the raster
    min_pixels = draw(
        st.one_of(st.integers(1, min(12, limit)), st.integers(1, min(3 * block * block, limit)))
    )
    connectivity = draw(st.sampled_from([4, 8]))
    return cls, block, min_pixels, connectivity


#: How many pixel pairs pass 1 may hand to pass 3 per edge pixel: none (pass 3 reads every
#: block again), the default, and no limit (pass 3 never reads a block).
MAX_PAIRS = st.sampled_from([0.0, 2.0, 1e9])


@settings(max_examples=120, deadline=None)
@given(case=sieve_cases(), max_pairs=MAX_PAIRS)
def test_blockwise_sieve_equals_rasterio_on_the_whole_raster(
    case: tuple[np.ndarray, int, int, int], max_pairs: float
) -> None:
    cls, block, min_pixels, connectivity = case
    got = sieve_in_memory(cls, block, min_pixels, connectivity, max_pairs)
    np.testing.assert_array_equal(got, reference(cls, min_pixels, connectivity))
    assert ((got == CLASS_NODATA) == (cls == CLASS_NODATA)).all()


@settings(max_examples=10, deadline=None)
@given(case=sieve_cases())
def test_sieve_of_a_mosaic_store_equals_rasterio(case: tuple[np.ndarray, int, int, int]) -> None:
    cls, block, min_pixels, connectivity = case
    block = max(block, 8)  # a store write per block: keep the block count moderate
    with tempfile.TemporaryDirectory() as tmp:
        src = write_mosaic(os.path.join(tmp, "in.zarr"), cls, block)
        got = run_sieve(
            src, os.path.join(tmp, "out.zarr"), min_pixels=min_pixels, connectivity=connectivity
        )
    np.testing.assert_array_equal(got, reference(cls, min_pixels, connectivity))


# -- adversarial cases, by hand ---------------------------------------------------------------


@pytest.mark.parametrize("connectivity", [4, 8])
def test_small_patch_between_two_large_regions_that_leave_every_window(
    tmp_path: Path, connectivity: int
) -> None:
    # Class 0 fills the left half but loses a corner to class 3, so it is smaller than class 1
    # on the right; near the patch both look alike and class 0 is met first in the scan. Only
    # the true sizes (from far across block borders) make class 1 the largest neighbour.
    cls = np.zeros((40, 40), np.uint8)
    cls[:, 20:] = 1
    cls[:6, :10] = 3
    cls[20:22, 19:21] = 2
    got = run_sieve(
        write_mosaic(str(tmp_path / "in.zarr"), cls, 8),
        str(tmp_path / "out.zarr"),
        min_pixels=10,
        connectivity=connectivity,
    )
    np.testing.assert_array_equal(got, reference(cls, 10, connectivity))
    assert (got[20:22, 19:21] == 1).all()


@pytest.mark.parametrize("connectivity", [4, 8])
def test_chain_of_small_patches_across_many_blocks(tmp_path: Path, connectivity: int) -> None:
    # A row of one-pixel patches of alternating class: each one's largest neighbour is the
    # one on its left (equal size, met first), so the class of the large patch at the left
    # end travels along the whole row, through five blocks.
    cls = np.full((5, 40), CLASS_NODATA, np.uint8)
    cls[:, :5] = 2
    cls[2, 5:] = np.arange(35) % 2
    got = run_sieve(
        write_mosaic(str(tmp_path / "in.zarr"), cls, 8),
        str(tmp_path / "out.zarr"),
        min_pixels=10,
        connectivity=connectivity,
    )
    np.testing.assert_array_equal(got, reference(cls, 10, connectivity))
    assert (got[2] == 2).all()


@pytest.mark.parametrize("connectivity", [4, 8])
def test_equal_neighbours_tie_on_the_first_met_across_a_seam(connectivity: int) -> None:
    # A patch on the seam between an upper and a lower block, between two halves of equal
    # true size: GDAL keeps the neighbour it compares first (above the patch's first pixel).
    cls = np.zeros((16, 16), np.uint8)
    cls[8:] = 1
    cls[7:9, 3:5] = 2
    got = sieve_in_memory(cls, 8, 10, connectivity)
    np.testing.assert_array_equal(got, reference(cls, 10, connectivity))
    assert (got[7:9, 3:5] == 0).all()
    # The same across the seam between a left and a right block: the left half is met first.
    got = sieve_in_memory(cls.T.copy(), 8, 10, connectivity)
    np.testing.assert_array_equal(got, reference(cls.T.copy(), 10, connectivity))
    assert (got[3:5, 7:9] == 0).all()


def test_small_patches_that_are_each_others_largest_neighbour_stay() -> None:
    # Two one-pixel patches in different blocks, each the other's largest neighbour, with
    # nothing large around: GDAL leaves such a circle as it is. So does a patch cut off by
    # nodata, and a patch in a corner of the raster.
    cls = np.full((6, 6), CLASS_NODATA, np.uint8)
    cls[2, 2:4] = [0, 1]
    cls[0, 0] = 3
    cls[5, 4:] = 4
    for block in (1, 3, 4):
        got = sieve_in_memory(cls, block, 5, 4)
        np.testing.assert_array_equal(got, reference(cls, 5, 4))
        np.testing.assert_array_equal(got, cls)


class CountingReader:
    """Blocks of an in-memory class raster, counting how often each block is read."""

    def __init__(self, cls: np.ndarray) -> None:
        self.cls = cls
        self.reads: Counter[Window] = Counter()

    def read_class(self, window: Window) -> np.ndarray:
        self.reads[window] += 1
        return self.cls[window.slices].copy()


@pytest.mark.parametrize("connectivity", [4, 8])
def test_pass_3_reads_only_blocks_whose_pairs_were_too_many(
    rng: np.random.Generator, connectivity: int
) -> None:
    # Land cover with specks: pass 1 hands pass 3 the pairs it needs, so every block is read
    # twice (label, write), not three times. Pure speckle in one block: that block's pairs
    # are more than pass 1 may report, and pass 3 reads it again. Both as rasterio.
    cls = np.kron(rng.integers(0, 3, (8, 8)), np.ones((12, 12), np.int64)).astype(np.uint8)
    specks = rng.random(cls.shape) < 0.02
    cls[specks] = rng.integers(0, 3, int(specks.sum()))
    cls[:32, :32] = rng.integers(0, 3, (32, 32))  # the first block: speckle
    reader, writer = CountingReader(cls), ArrayWriter(cls.shape)
    sieve_blocks(
        reader,
        writer,
        make_grid(*cls.shape),
        32,
        min_pixels=20,
        connectivity=connectivity,
        engine="local",
        progress=False,
    )
    np.testing.assert_array_equal(writer.out, reference(cls, 20, connectivity))
    reads = reader.reads
    assert reads.pop(Window(0, 0, 32, 32)) == 3
    assert set(reads.values()) == {2}
    assert len(reads) == 3 * 3 - 1


def test_nodata_never_changes_and_never_wins(rng: np.random.Generator) -> None:
    cls = rng.integers(0, 3, (37, 29)).astype(np.uint8)
    cls[5:30, 4:20] = CLASS_NODATA  # a large nodata region next to small patches
    got = sieve_in_memory(cls, 8, 6, 8)
    np.testing.assert_array_equal(got, reference(cls, 6, 8))
    assert ((got == CLASS_NODATA) == (cls == CLASS_NODATA)).all()


def test_threshold_of_one_or_beyond_the_raster_changes_nothing(
    rng: np.random.Generator,
) -> None:
    cls = rng.integers(0, 3, (9, 11)).astype(np.uint8)
    for min_pixels in (1, cls.size, cls.size + 50):  # nothing is large enough to merge into
        np.testing.assert_array_equal(sieve_in_memory(cls, 4, min_pixels, 4), cls)


# -- the stage --------------------------------------------------------------------------------


def blobs(rng: np.random.Generator, height: int, width: int, cell: int = 6) -> np.ndarray:
    coarse = rng.integers(0, 4, (height // cell + 1, width // cell + 1))
    cls = np.kron(coarse, np.ones((cell, cell), np.int64))[:height, :width]
    noise = rng.random((height, width)) < 0.1
    cls[noise] = rng.integers(0, 4, int(noise.sum()))
    out = cls.astype(np.uint8)
    out[rng.random((height, width)) < 0.03] = CLASS_NODATA
    return out


def test_output_keeps_grid_and_classes_and_records_provenance(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    cls = blobs(rng, 45, 61)
    src = write_mosaic(str(tmp_path / "in.zarr"), cls, 16)
    got = run_sieve(src, str(tmp_path / "out.zarr"), min_pixels=7, connectivity=8)
    np.testing.assert_array_equal(got, reference(cls, 7, 8))
    a, b = MosaicStore.open(src), MosaicStore.open(str(tmp_path / "out.zarr"))
    assert b.grid == a.grid and b.grid.crs_wkt == a.grid.crs_wkt
    assert b.classes == a.classes and b.block == a.block
    assert b.chunk_shape("class") == a.chunk_shape("class")
    assert b.meta["complete"] and b.done_blocks().all()
    prov = b.meta["provenance"]
    assert prov["input"] == a.url and prov["min_pixels"] == 7 and prov["connectivity"] == 8
    assert prov["input_provenance"] == {"by": "test"}
    changed = got != cls
    assert b.meta["changed_pixels"] == int(changed.sum()) > 0
    # Confidence: 1 (set by the sieve) where the class changed, never 0 (nodata) on a
    # classified pixel, copied from the input elsewhere.
    conf_in, conf_out = read_all(src, "confidence"), read_all(b.url, "confidence")
    assert (conf_out[changed] == 1).all()
    assert (conf_out[got != 255] != 0).all()
    np.testing.assert_array_equal(conf_out[~changed], conf_in[~changed])


def test_min_area_ha_is_converted_with_the_pixel_area(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    grid10 = make_grid(8, 8, pixel=10.0)  # 100 m² a pixel
    assert SieveConfig(input="a", output="b", min_area_ha=0.05).min_unit_pixels(grid10) == 5
    assert SieveConfig(input="a", output="b", min_area_ha=0.0501).min_unit_pixels(grid10) == 6
    assert SieveConfig(input="a", output="b", min_area_ha=0.5).min_unit_pixels(grid10) == 50
    grid30 = make_grid(8, 8, pixel=30.0)  # 900 m²: 1 ha is 11.1 pixels, so 12 are needed
    assert SieveConfig(input="a", output="b", min_area_ha=1).min_unit_pixels(grid30) == 12

    cls = blobs(rng, 30, 26)
    src = write_mosaic(str(tmp_path / "in.zarr"), cls, 8)
    by_area = run_sieve(src, str(tmp_path / "area.zarr"), min_area_ha=0.05)
    by_pixels = run_sieve(src, str(tmp_path / "px.zarr"), min_pixels=5)
    np.testing.assert_array_equal(by_area, by_pixels)
    assert MosaicStore.open(str(tmp_path / "area.zarr")).meta["provenance"]["min_pixels"] == 5


def test_min_area_ha_needs_a_metric_crs(tmp_path: Path) -> None:
    grid = Grid(CRS.from_epsg(4326).to_wkt(), Affine(0.001, 0, -100, 0, -0.001, 40), 10, 12)
    src = write_mosaic(str(tmp_path / "in.zarr"), np.zeros((10, 12), np.uint8), 8, grid=grid)
    with pytest.raises(InputError, match="min_pixels instead"):
        run_sieve(src, str(tmp_path / "out.zarr"), min_area_ha=1.0)
    assert not (tmp_path / "out.zarr").exists()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"min_pixels": 5, "min_area_ha": 1.0}, "exactly one minimum mapping unit"),
        ({}, "exactly one minimum mapping unit"),
        ({"min_pixels": 5, "min_pixel": 4}, "unknown key 'min_pixel'; did you mean 'min_pixels'"),
        ({"min_pixels": 0}, "'min_pixels'"),
        ({"min_area_ha": -1.0}, "'min_area_ha'"),
        ({"min_pixels": 5, "connectivity": 6}, "'connectivity'"),
        ({"min_pixels": 5, "output": "in.zarr"}, "is the input mosaic"),
    ],
)
def test_config_errors(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SieveConfig.from_dict({"input": "in.zarr", "output": "out.zarr", **settings})


def test_incomplete_input_is_refused(tmp_path: Path) -> None:
    src = write_mosaic(str(tmp_path / "in.zarr"), np.zeros((9, 9), np.uint8), 8, complete=False)
    with pytest.raises(InputError, match="incomplete"):
        run_sieve(src, str(tmp_path / "out.zarr"), min_pixels=3)


def test_existing_output_is_refused_and_survives_a_failed_run(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    cls = blobs(rng, 30, 30)
    src = write_mosaic(str(tmp_path / "in.zarr"), cls, 8)
    out = str(tmp_path / "out.zarr")
    first = run_sieve(src, out, min_pixels=4)
    with pytest.raises(OutputError, match="exists already"):
        run_sieve(src, out, min_pixels=9)

    calls = {"n": 0}
    original = MosaicWriter.write_block

    def fail_on_third_block(self: MosaicWriter, *args: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        original(self, *args)

    monkeypatch.setattr(MosaicWriter, "write_block", fail_on_third_block)
    with pytest.raises(OSError, match="disk full"):
        run_sieve(src, out, min_pixels=9, overwrite=True)
    np.testing.assert_array_equal(read_all(out), first)
    assert MosaicStore.open(out).meta["provenance"]["min_pixels"] == 4
    assert sorted(os.listdir(tmp_path)) == ["in.zarr", "out.zarr"]  # no leftovers

    monkeypatch.undo()
    np.testing.assert_array_equal(
        run_sieve(src, out, min_pixels=9, overwrite=True), reference(cls, 9, 4)
    )


def test_sieve_on_ray(tmp_path: Path, rng: np.random.Generator, ray_session: None) -> None:
    cls = blobs(rng, 50, 70, cell=5)
    src = write_mosaic(str(tmp_path / "in.zarr"), cls, 16)
    cfg = SieveConfig(
        input=src, output=str(tmp_path / "out.zarr"), min_pixels=12, connectivity=8, engine="ray"
    )
    report = sieve(cfg, progress=False)
    got = read_all(report.output)
    np.testing.assert_array_equal(got, reference(cls, 12, 8))
    assert report.changed_pixels == int((got != cls).sum())


def _peak_python_allocations(tmp: str, height: int, width: int) -> int:
    """Peak of Python allocations (numpy arrays included) of a local-engine sieve."""
    cls = blobs(np.random.default_rng(3), height, width, cell=9)
    src = write_mosaic(str(Path(tmp) / f"in{height}.zarr"), cls, 128)
    cfg = SieveConfig(
        input=src, output=str(Path(tmp) / f"out{height}.zarr"), min_pixels=20, engine="local"
    )
    tracemalloc.start()
    try:
        sieve(cfg, progress=False)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_raster(tmp_path: Path) -> None:
    # Same block size, 4x the area: the peak of Python allocations (numpy arrays included)
    # is set by one block's working set, not by the raster. The driver's few integers per
    # edge patch do grow with the number of blocks, but stay small next to a block's working
    # set: measured 1.16x here; margin 1.25x (a whole-raster sieve would take about 4x).
    # Measured in a process of its own: tracemalloc counts every thread's allocations, and
    # the test session's (a local Ray's) would be counted too.
    import subprocess
    import sys

    # Each size is measured three times and its largest peak kept: a run now and then misses a
    # few hundred KB that is not the sieve's (measured 0.63 MB against 0.91 MB for the same
    # 4 blocks), which alone would make the ratio look like growth.
    code = (
        "import sys; from tests.test_sieve import _peak_python_allocations as p; "
        "p(sys.argv[1] + '/warm', 128, 128); "  # imports and one-time set-up are not counted
        "print(*(max(p(f'{sys.argv[1]}/{k}', n, n) for k in 'abc') for n in (256, 512)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    ).stdout
    small, large = (int(v) for v in out.split())
    print(f"peak Python allocations: {small:,} B for 4 blocks, {large:,} B for 16 blocks")
    assert large < 1.25 * small, (small, large)


# -- command line -----------------------------------------------------------------------------


def test_cli_sieve(tmp_path: Path, rng: np.random.Generator) -> None:
    cls = blobs(rng, 33, 27)
    src = write_mosaic(str(tmp_path / "in.zarr"), cls, 8)
    out = str(tmp_path / "out.zarr")
    runner = CliRunner()
    args = ["--quiet", "sieve", src, "-o", out, "--min-pixels", "6", "--connectivity", "8"]
    result = runner.invoke(app, [*args, "--engine", "local"])
    assert result.exit_code == 0, result.stderr
    assert f"mosaic store: {out}" in result.stdout and "6 px, 8-connected" in result.stdout
    np.testing.assert_array_equal(read_all(out), reference(cls, 6, 8))

    result = runner.invoke(app, [*args, "--engine", "local"])
    assert result.exit_code == 2 and "exists already" in result.stderr

    # An option replaces the other unit given in the config file.
    config = tmp_path / "sieve.yaml"
    config.write_text(f"sieve:\n  input: {src}\n  min_area_ha: 1.0\n  engine: local\n")
    result = runner.invoke(
        app, ["--quiet", "sieve", "-c", str(config), "-o", str(tmp_path / "o2.zarr")]
    )
    assert result.exit_code == 0, result.stderr
    assert "100 px, 4-connected" in result.stdout
    result = runner.invoke(
        app,
        ["--quiet", "sieve", "-c", str(config), "-o", str(tmp_path / "o3"), "--min-pixels", "3"],
    )
    assert result.exit_code == 0, result.stderr
    assert "3 px" in result.stdout
