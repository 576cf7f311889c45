"""Grid and window properties: chips and blocks cover every pixel; blocks never overlap."""

from __future__ import annotations

import numpy as np
import pytest
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st

from w2w.core.crs import crs_relation
from w2w.core.errors import ConfigError, GridMismatchError, InputError
from w2w.core.grid import Grid, Window, chip_origins

UTM13_WGS84 = "EPSG:32613"


def make_grid(height: int, width: int, crs: str = UTM13_WGS84, x0: float = 300000.0) -> Grid:
    from rasterio.crs import CRS

    return Grid(
        CRS.from_user_input(crs).to_wkt(), Affine(10, 0, x0, 0, -10, 3500000), height, width
    )


sizes = st.integers(min_value=1, max_value=300)


@st.composite
def chip_specs(draw: st.DrawFn) -> tuple[int, int]:
    size = draw(st.integers(min_value=1, max_value=96))
    stride = draw(st.integers(min_value=1, max_value=size))
    return size, stride


@settings(max_examples=200, deadline=None)
@given(height=sizes, width=sizes, spec=chip_specs())
def test_chips_cover_every_pixel(height: int, width: int, spec: tuple[int, int]) -> None:
    size, stride = spec
    grid = make_grid(height, width)
    covered = np.zeros((height, width), dtype=np.int32)
    for w in grid.chips(size, stride).windows():
        assert w.row % stride == 0 and w.col % stride == 0  # anchored on the global grid
        assert w.row < height and w.col < width  # no chip lies wholly outside
        inner = w.intersect(grid.full_window)
        assert inner is not None
        covered[inner.slices] += 1
    assert covered.min() >= 1


@settings(max_examples=200, deadline=None)
@given(height=sizes, width=sizes, bh=st.integers(1, 128), bw=st.integers(1, 128))
def test_blocks_tile_without_overlap(height: int, width: int, bh: int, bw: int) -> None:
    grid = make_grid(height, width)
    count = np.zeros((height, width), dtype=np.int32)
    for w in grid.blocks(bh, bw).windows():
        assert grid.full_window.contains(w)
        assert w.height > 0 and w.width > 0
        count[w.slices] += 1
    assert (count == 1).all()


@settings(max_examples=150, deadline=None)
@given(
    height=sizes,
    width=sizes,
    spec=chip_specs(),
    block=st.integers(1, 128),
    data=st.data(),
)
def test_chips_touching_a_block_are_exactly_the_overlapping_chips(
    height: int, width: int, spec: tuple[int, int], block: int, data: st.DataObject
) -> None:
    size, stride = spec
    grid = make_grid(height, width)
    blocks = grid.blocks(block).windows()
    b = data.draw(st.sampled_from(blocks))
    expected = [w for w in grid.chips(size, stride).windows() if w.intersect(b) is not None]
    assert grid.chips(size, stride).touching(b) == expected
    # The chips of a block, read through its halo, cover the block itself.
    covered = np.zeros((b.height, b.width), dtype=bool)
    for w in expected:
        inner = w.intersect(b)
        assert inner is not None
        covered[inner.relative_to(b).slices] = True
    assert covered.all()


def test_chip_origins_round_up_and_keep_the_last_partial_chip() -> None:
    assert chip_origins(97, 32, 32).tolist() == [0, 32, 64, 96]
    assert chip_origins(96, 32, 32).tolist() == [0, 32, 64]
    assert chip_origins(10, 32, 16).tolist() == [0]
    assert chip_origins(130, 64, 48).tolist() == [0, 48, 96]
    with pytest.raises(ValueError, match="exceeds chip size"):
        chip_origins(100, 16, 32)


def test_window_algebra() -> None:
    w = Window(10, 20, 30, 40)
    assert w.intersect(Window(0, 0, 15, 25)) == Window(10, 20, 5, 5)
    assert w.intersect(Window(100, 100, 5, 5)) is None
    assert Window(12, 25, 3, 3).relative_to(w) == Window(2, 5, 3, 3)
    assert w.to_rasterio().col_off == 20 and w.to_rasterio().height == 30


def test_grid_geometry_and_attrs_round_trip() -> None:
    g = make_grid(97, 130)
    assert g.bounds == (300000.0, 3500000.0 - 970, 300000.0 + 1300, 3500000.0)
    assert g.pixel_area_m2 == 100.0
    assert g.window_transform(Window(2, 3, 1, 1)) == Affine(10, 0, 300030, 0, -10, 3499980)
    assert Grid.from_attrs(g.to_attrs()) == g
    with pytest.raises(InputError, match="zero size"):
        make_grid(0, 5)


def test_crs_relations() -> None:
    from rasterio.crs import CRS

    def wkt(code: str) -> str:
        return CRS.from_user_input(code).to_wkt()

    assert crs_relation(wkt("EPSG:32613"), wkt("EPSG:32613")) == "equal"
    # NAD83 / UTM 13N vs NAD83(HARN) / UTM 13N: same projection, another datum realisation.
    assert crs_relation(wkt("EPSG:26913"), wkt("EPSG:3743")) == "equivalent"
    assert crs_relation(wkt("EPSG:26913"), wkt("EPSG:26914")) == "different"
    assert crs_relation(wkt("EPSG:32613"), wkt("EPSG:4326")) == "different"


def test_check_matches_names_both_grids() -> None:
    a = make_grid(50, 60)
    shifted = make_grid(50, 60, x0=300005.0)
    with pytest.raises(GridMismatchError) as err:
        a.check_matches(shifted, what="label x.tif", fix="pass --reproject-labels")
    text = str(err.value)
    assert "origin (300000.000000" in text and "origin (300005.000000" in text
    assert "--reproject-labels" in text
    harn = make_grid(50, 60, crs="EPSG:3743")
    nad83 = make_grid(50, 60, crs="EPSG:26913")
    warning = nad83.check_matches(harn, what="label", fix="")
    assert warning is not None and "equivalent" in warning


@settings(max_examples=100, deadline=None)
@given(
    height=sizes, width=sizes, bh=st.integers(4, 64), bw=st.integers(4, 64), seed=st.integers(0, 99)
)
def test_block_tiling_indexes_its_blocks_and_iterates_a_mask(
    height: int, width: int, bh: int, bw: int, seed: int
) -> None:
    tiling = make_grid(height, width).blocks(bh, bw)
    assert len(tiling) == len(tiling.windows()) == tiling.shape[0] * tiling.shape[1]
    for key, w in zip(tiling.keys(), tiling.windows(), strict=True):
        assert tiling.index(w) == key and tiling[key] == w
    mask = np.random.default_rng(seed).random(tiling.shape) < 0.5
    assert tiling.windows(mask) == [w for w, m in zip(tiling, mask.ravel(), strict=True) if m]


def test_blocks_meeting_a_polygon_are_those_whose_area_it_touches() -> None:
    grid = make_grid(100, 120)  # 10 m pixels from (300000, 3500000)
    tiling = grid.blocks(32)
    # A triangle in the north-west corner, in map coordinates.
    x0, y0 = 300000.0, 3500000.0
    triangle = {
        "type": "Polygon",
        "coordinates": [
            [(x0 + 5, y0 - 5), (x0 + 500, y0 - 5), (x0 + 5, y0 - 500), (x0 + 5, y0 - 5)]
        ],
    }
    met = tiling.meeting(grid, [triangle])
    # Brute force: a block meets the triangle if any pixel of it is inside (x + y < 505 m).
    rows, cols = np.mgrid[0:100, 0:120]
    cx, cy = (cols + 0.5) * 10 + 5, (rows + 0.5) * 10 + 5
    inside = (cx + cy) < 500
    expected = np.zeros(tiling.shape, dtype=bool)
    for key, w in zip(tiling.keys(), tiling.windows(), strict=True):
        expected[key] = inside[w.slices].any()
    assert (met >= expected).all()  # every block with an inside pixel is met
    assert met.sum() <= expected.sum() + 2  # and at most the blocks the edge grazes


def test_one_writer_per_chunk_is_checked_on_the_tiling() -> None:
    grid = make_grid(300, 250)
    grid.blocks(128).check_one_writer((64, 64))
    with pytest.raises(ConfigError, match="not aligned to the store's 64 x 64"):
        grid.blocks(96).check_one_writer((64, 64))
