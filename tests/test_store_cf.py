"""Stores that plain xarray and CF/GeoZarr readers take as they are: CF decoding of
confidence and classes, a band coordinate, bookkeeping out of the data group, declared
Zarr conventions with real WKT2; and stores written before that layout still read."""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pyproj
import pytest
import xarray as xr
import zarr

from tests.conftest import write_tif
from w2w.core.classes import ClassInfo
from w2w.core.errors import InputError
from w2w.core.grid import Grid
from w2w.core.store import MosaicStore, SceneStore
from w2w.ingest import IngestConfig, ingest
from w2w.ingest.synth import SynthConfig

CLASSES = [
    ClassInfo(1, "Dense forest", (0, 100, 0)),
    ClassInfo(4, "Forêt / eau", (0, 0, 200)),
    ClassInfo(7, "built-up", (200, 0, 0)),
]
#: The published identities of the Zarr conventions (zarr-conventions/proj and /spatial).
PROJ_UUID = "f17cb550-5864-4468-aeb7-f3180cfb622f"
SPATIAL_UUID = "689b58e2-cf7b-45e0-9fff-9cfc0883d6b4"
#: Fields a Convention Metadata Object may have (zarr-conventions-spec).
CMO_FIELDS = {"uuid", "schema_url", "spec_url", "name", "description"}


def small_grid(h: int = 50, w: int = 70) -> Grid:
    return SynthConfig(output="unused", height=h, width=w).grid


def written_mosaic(
    url: str, rng: np.random.Generator
) -> tuple[MosaicStore, np.ndarray, np.ndarray]:
    """A complete mosaic with random classes (some nodata) and confidences covering 0..255."""
    grid = small_grid()
    store = MosaicStore.create(url, grid, block=32, classes=CLASSES)
    classes = rng.choice(np.array([1, 4, 7, 255], dtype=np.uint8), size=grid.shape)
    confidence = rng.integers(0, 256, size=grid.shape).astype(np.uint8)
    confidence.flat[:256] = np.arange(256)  # every stored value, 0 (nodata) and 1 (sieved)
    for w in store.blocks():
        store.write("class", w, classes[w.slices])
        store.write("confidence", w, confidence[w.slices])
        store.mark_block_done(w, int((classes[w.slices] != 255).sum()))
    store.mark_complete()
    return store, classes, confidence


def open_plain(url: str) -> xr.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr: consolidated metadata is not in the v3 spec
        return xr.open_zarr(url)


def test_plain_xarray_decodes_confidence_to_probabilities_with_nan_for_nodata(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    store, _, stored = written_mosaic(str(tmp_path / "m.zarr"), rng)
    got = open_plain(store.url)["confidence"].values
    expected = np.where(stored == 0, np.nan, stored.astype(np.float64) / 255.0)
    np.testing.assert_allclose(got, expected, rtol=1e-12, equal_nan=True)
    assert np.isnan(got).sum() == (stored == 0).sum()
    assert np.nanmin(got) == pytest.approx(1 / 255) and np.nanmax(got) == pytest.approx(1.0)
    attrs = open_plain(store.url)["confidence"].attrs
    assert attrs["units"] == "1" and attrs["long_name"]
    assert "minimum mapping unit" in attrs["comment"] and "scale" not in attrs


def test_class_flags_are_readable_by_attribute(tmp_path: Path, rng: np.random.Generator) -> None:
    store, stored, _ = written_mosaic(str(tmp_path / "m.zarr"), rng)
    var = open_plain(store.url)["class"]
    assert var.attrs["flag_values"] == [1, 4, 7]
    meanings = var.attrs["flag_meanings"].split(" ")
    assert meanings == ["dense_forest", "foret_eau", "built_up"]
    assert all(re.fullmatch(r"[A-Za-z0-9_.+@-]+", m) for m in meanings)  # CF flag words
    assert var.encoding["_FillValue"] == 255 and var.attrs["long_name"]
    # CF decoding masks nodata; the ids are unchanged elsewhere.
    values = var.values
    np.testing.assert_array_equal(np.isnan(values), stored == 255)
    np.testing.assert_array_equal(values[stored != 255], stored[stored != 255])
    # What a flag name selects, by attribute alone.
    lookup = dict(zip(meanings, var.attrs["flag_values"], strict=True))
    assert int((values == lookup["foret_eau"]).sum()) == int((stored == 4).sum())


def test_open_mosaic_keeps_class_ids_and_decodes_confidence(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    from w2w import open_mosaic

    store, classes, confidence = written_mosaic(str(tmp_path / "m.zarr"), rng)
    ds = open_mosaic(store.url)
    assert ds["class"].dtype == np.uint8 and ds["class"].rio.nodata == 255
    np.testing.assert_array_equal(ds["class"].values, classes)
    np.testing.assert_array_equal(np.isnan(ds["confidence"].values), confidence == 0)


def test_scene_band_names_are_a_coordinate_without_w2w(tmp_path: Path) -> None:
    grid = small_grid()
    store = SceneStore.create(
        str(tmp_path / "s.zarr"), grid, band_names=["blue", "red", "nir"], dtype="int16", nodata=-1
    )
    data = np.arange(3 * 50 * 70, dtype="int16").reshape(3, 50, 70)
    store.write("image", grid.full_window, data)
    image = open_plain(store.url)["image"]
    assert image.dims == ("band", "y", "x")
    assert [str(b) for b in image["band"].values] == ["blue", "red", "nir"]
    np.testing.assert_array_equal(image.sel(band="nir").values, data[2])


def test_bookkeeping_arrays_are_outside_the_data_group(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    data = rng.integers(1, 4000, size=(2, 40, 50)).astype("uint16")
    image = write_tif(tmp_path / "i.tif", data, nodata=0)
    label = write_tif(tmp_path / "l.tif", rng.integers(0, 3, size=(40, 50)).astype("uint8"))
    scene = str(tmp_path / "s.zarr")
    ingest(
        IngestConfig(
            images=[str(image)], label=str(label), output=scene, chunk=16, block=32, engine="local"
        ),
        progress=False,
    )
    mosaic, _, _ = written_mosaic(str(tmp_path / "m.zarr"), rng)
    for url, variables in ((scene, {"image", "label"}), (mosaic.url, {"class", "confidence"})):
        ds = open_plain(url)
        assert set(ds.data_vars) == variables
        assert set(ds.dims) <= {"band", "y", "x"}, ds.dims
    books = {
        scene: {"block_digests", "blocks_written", "chunk_valid_pixels"},
        # A finished mosaic's per-block books, and the one-chunk copies readers read.
        mosaic.url: {
            f"{name}{suffix}"
            for name in ("blocks_done", "block_valid_pixels", "block_digests")
            for suffix in ("", "_sealed")
        },
    }
    for url, names in books.items():
        group = zarr.open_group(url, mode="r")
        assert set(group["_w2w"].array_keys()) == names
        assert not names & set(group.array_keys())


def _to_format_1(url: str) -> None:
    """Rewrite a store in the layout of format 1: bookkeeping arrays at the root, no band
    coordinate, ``format_version`` 1 (what an older w2w wrote)."""
    root = Path(url)
    for node in (root / "_w2w").iterdir():
        if node.is_dir() and not node.name.endswith("_sealed"):  # an older w2w sealed none
            shutil.move(str(node), str(root / node.name))
    shutil.rmtree(root / "_w2w")
    shutil.rmtree(root / "band", ignore_errors=True)
    meta_path = root / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta.pop("consolidated_metadata", None)
    meta["attributes"]["w2w"]["format_version"] = 1
    meta_path.write_text(json.dumps(meta))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(zarr.storage.LocalStore(url))


def test_a_format_1_store_is_still_read_and_resumed(
    tmp_path: Path, rng: np.random.Generator, synthetic_scene: str
) -> None:
    from w2w import open_scene

    scene = str(tmp_path / "s.zarr")
    shutil.copytree(synthetic_scene, scene)
    before = SceneStore.open(scene)
    digests, written = before.digests(), before.written_blocks()
    assert digests is not None and before.has_book("chunk_valid_pixels")
    counts = [before.valid_pixels_in(w) for w in before.tiling]
    _to_format_1(scene)
    old = SceneStore.open(scene)
    assert old.format_version == 1
    np.testing.assert_array_equal(old.digests(), digests)
    np.testing.assert_array_equal(old.written_blocks(), written)
    assert [old.valid_pixels_in(w) for w in old.tiling] == counts
    assert list(open_scene(scene)["band"].values) == list(old.info.band_names)

    mosaic, _, _ = written_mosaic(str(tmp_path / "m.zarr"), rng)
    expected = mosaic.expected_valid_pixels()
    _to_format_1(mosaic.url)
    old_mosaic = MosaicStore.open(mosaic.url, mode="r+")
    assert old_mosaic.done_blocks().all()
    np.testing.assert_array_equal(old_mosaic.expected_valid_pixels(), expected)
    first = old_mosaic.blocks()[0]
    old_mosaic.clear_block(first)  # a resumed run writes the old layout in place
    assert not MosaicStore.open(mosaic.url).done_blocks()[0, 0]


def test_a_store_from_a_newer_w2w_is_refused(tmp_path: Path) -> None:
    store = MosaicStore.create(str(tmp_path / "m.zarr"), small_grid(), block=32, classes=[])
    group = zarr.open_group(store.url, mode="r+")
    group.attrs["w2w"] = {**group.attrs["w2w"], "format_version": 99}
    with pytest.raises(InputError, match="newer w2w"):
        MosaicStore.open(store.url)


@pytest.mark.parametrize(("epsg", "keyword"), [(32613, "PROJCRS"), (4326, "GEOGCRS")])
def test_zarr_conventions_are_declared_with_real_wkt2(
    tmp_path: Path, epsg: int, keyword: str
) -> None:
    from affine import Affine

    res = 10.0 if keyword == "PROJCRS" else 0.001
    transform = Affine(res, 0.0, 300000.0 if keyword == "PROJCRS" else -105.0, 0.0, -res, 40.0)
    grid = Grid(pyproj.CRS.from_epsg(epsg).to_wkt("WKT1_GDAL"), transform, 20, 30)
    store = MosaicStore.create(str(tmp_path / "m.zarr"), grid, block=32, classes=[])
    attrs = zarr.open_group(store.url, mode="r").attrs.asdict()
    declared = {c.get("uuid"): c for c in attrs["zarr_conventions"]}
    assert set(declared) == {PROJ_UUID, SPATIAL_UUID}
    for cmo in declared.values():
        assert set(cmo) <= CMO_FIELDS and cmo["schema_url"].startswith("https://")
    assert declared[PROJ_UUID]["name"] == "proj" and declared[SPATIAL_UUID]["name"] == "spatial"
    crs = pyproj.CRS.from_wkt(attrs["proj:wkt2"])
    assert crs.to_wkt().startswith(keyword) and attrs["proj:wkt2"].startswith(keyword)
    assert crs == pyproj.CRS.from_epsg(epsg) and attrs["proj:code"] == f"EPSG:{epsg}"
    assert attrs["spatial:dimensions"] == ["y", "x"]
    assert attrs["spatial:transform"] == list(transform)[:6]
    assert attrs["spatial:shape"] == [20, 30]
    x0, y1 = transform.c, transform.f
    assert attrs["spatial:bbox"] == pytest.approx([x0, y1 - 20 * res, x0 + 30 * res, y1])
    # The grid keeps its own WKT (identities hash it); only the convention attrs are WKT2.
    assert store.grid.crs_wkt == grid.crs_wkt and not grid.crs_wkt.startswith(keyword)
