"""Ingest: exact round trips, stacking, label grids, statistics, bounded memory, bad inputs."""

from __future__ import annotations

import logging
import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rioxarray  # noqa: F401 - registers the .rio accessor
import xarray as xr

from tests.conftest import ABER, CHIAPAS, write_tif
from w2w.core.errors import ConfigError, GridMismatchError, InputError, OutputError
from w2w.core.stats import BandAccumulator
from w2w.core.store import SceneStore
from w2w.ingest import IngestConfig, ingest
from w2w.ingest.synth import SynthConfig, synthesize


def run(tmp_path: Path, images: list[Path | str], **kw: object) -> SceneStore:
    out = kw.pop("output", tmp_path / "scene.zarr")
    cfg = IngestConfig(
        images=[str(p) for p in images], output=str(out), engine=kw.pop("engine", "local"), **kw
    )
    ingest(cfg, progress=False)
    return SceneStore.open(str(out))


def assert_round_trip(store_path: str, image: str, label: str | None) -> None:
    """Pixels, CRS and transform read back through xarray + rioxarray equal the source's."""
    ds = xr.open_zarr(store_path)
    with rasterio.open(image) as src:
        np.testing.assert_array_equal(ds["image"].values, src.read())
        assert ds["image"].rio.crs == src.crs
        assert ds["image"].rio.transform() == src.transform
    if label is not None:
        with rasterio.open(label) as src:
            np.testing.assert_array_equal(ds["label"].values, src.read(1))
            assert ds["label"].rio.transform() == src.transform


# -- round trips -----------------------------------------------------------------------------


@pytest.mark.skipif(not CHIAPAS.exists(), reason="real imagery (../shared/data/real) absent")
def test_round_trip_chiapas_sparse_labels(tmp_path: Path) -> None:
    image = str(CHIAPAS / "LE70220491999322EDC01_stack.gtif")
    label = str(CHIAPAS / "training_data.gtif")
    store = run(tmp_path, [image], label=label, chunk=64, block=128)
    assert_round_trip(store.url, image, label)
    info = store.info
    assert info.nodata == -9999 and info.dtype == "int16" and info.n_bands == 8
    assert sum(info.class_histogram.values()) == 718  # the sparse human labels, 0 = unlabelled
    assert set(info.class_histogram) == {1, 2, 3, 4, 5}


@pytest.mark.skipif(not ABER.exists(), reason="real imagery (../shared/data/real) absent")
def test_round_trip_aberystwyth_on_ray(tmp_path: Path, ray_session: None) -> None:
    image = str(ABER / "sen2_20210527_aber_subset.tif")
    label = str(ABER / "aber_subset_labels.tif")
    store = run(tmp_path, [image], label=label, chunk=64, block=128, engine="ray")
    assert_round_trip(store.url, image, label)
    assert store.info.grid.shape == (339, 324)
    assert store.info.grid.crs.to_epsg() == 27700


@pytest.mark.parametrize("shape", [(97, 130), (130, 97), (1, 40)])
def test_round_trip_synthetic_odd_sizes(
    tmp_path: Path, shape: tuple[int, int], ray_session: None
) -> None:
    h, w = shape
    out = synthesize(
        SynthConfig(
            output=str(tmp_path / "syn"), height=max(h, 8), width=max(w, 8), engine="local"
        ),
        progress=False,
    )
    image, label = out.images[0], out.label
    if h < 8:  # crop to a one-row raster
        with rasterio.open(image) as src:
            data = src.read(window=((0, h), (0, w)))
            image = str(write_tif(tmp_path / "row.tif", data, nodata=0))
        label = None
    store = run(tmp_path, [image], label=label, chunk=32, block=64, engine="ray")
    assert_round_trip(store.url, image, label)


def test_statistics_match_numpy(tmp_path: Path, rng: np.random.Generator) -> None:
    data = rng.integers(1, 5000, size=(3, 61, 77)).astype("uint16")
    data[:, :5, :] = 0  # nodata rows
    data[1, 30, 30] = 0  # a pixel invalid because one band is nodata
    labels = rng.integers(0, 4, size=(61, 77)).astype("uint8")
    image = write_tif(tmp_path / "img.tif", data, nodata=0)
    label = write_tif(tmp_path / "lab.tif", labels)
    store = run(tmp_path, [image], label=label, chunk=16, block=32)
    info = store.info
    valid = (data != 0).all(axis=0)
    for b, name in enumerate(info.band_names):
        v = data[b][valid].astype(np.float64)
        s = info.stats[name]
        assert s.count == valid.sum()
        assert s.mean == pytest.approx(v.mean(), rel=1e-12)
        assert s.std == pytest.approx(v.std(), rel=1e-9)
        assert s.p2 == np.percentile(v, 2, method="inverted_cdf")
        assert s.p98 == np.percentile(v, 98, method="inverted_cdf")
        assert (s.min, s.max) == (v.min(), v.max())
    expected = {c: int(((labels == c) & valid).sum()) for c in (1, 2, 3)}
    assert info.class_histogram == expected  # 0 is unlabelled by default
    assert [c.id for c in info.classes] == [1, 2, 3]


def test_block_histograms_span_their_values_and_merge_in_any_order(
    rng: np.random.Generator,
) -> None:
    """Exact 16-bit percentiles from histograms that cover only the values each block holds:
    merged in any order they equal numpy's over all the values, and a block's partial result
    is as small as its value range (not 65,536 bins a band)."""
    blocks = [
        rng.integers(lo, hi, size=500).astype("int16")
        for lo, hi in ((-3000, -2000), (100, 400), (-2500, 9000), (8000, 8001))
    ]
    parts = []
    for i, values in enumerate(blocks):
        part = BandAccumulator("int16")
        part.add(values, seed=i)
        assert part.hist is not None
        assert part.hist.size == int(values.max()) - int(values.min()) + 1
        parts.append(part)
    every = np.concatenate(blocks).astype(np.float64)
    for order in ([0, 1, 2, 3], [3, 1, 0, 2], [1, 3, 2, 0]):
        total = BandAccumulator("int16")
        for i in order:
            total.merge(parts[i])
        for q in (0.5, 2, 50, 98, 100):
            assert total.percentile(q) == np.percentile(every, q, method="inverted_cdf"), (
                order,
                q,
            )
        assert total.count == every.size


def test_float_image_statistics_from_sample(tmp_path: Path, rng: np.random.Generator) -> None:
    data = rng.normal(0.2, 0.05, size=(2, 90, 90)).astype("float32")
    data[:, 0, :] = np.nan  # NaN is never a valid value
    store = run(tmp_path, [write_tif(tmp_path / "f.tif", data)], chunk=32, block=32)
    s = store.info.stats["band1"]
    valid = data[0][1:]
    assert s.count == valid.size
    assert s.mean == pytest.approx(float(valid.mean()), rel=1e-6)
    assert s.p98 == pytest.approx(float(np.percentile(valid, 98)), abs=0.01)


# -- stacking and label grids --------------------------------------------------------------


def test_stack_single_band_files_with_equivalent_label_crs(
    tmp_path: Path, rng: np.random.Generator, caplog: pytest.LogCaptureFixture
) -> None:
    bands = [rng.integers(1, 3000, size=(45, 67)).astype("uint16") for _ in range(3)]
    paths = [
        write_tif(tmp_path / f"b{i}.tif", b, crs="EPSG:26913", nodata=0)
        for i, b in enumerate(bands)
    ]
    labels = rng.integers(1, 3, size=(45, 67)).astype("uint8")
    # NAD83(HARN) / UTM 13N: the same projection on another realisation of NAD83.
    label = write_tif(tmp_path / "lab.tif", labels, crs="EPSG:3743")
    with caplog.at_level(logging.WARNING, logger="w2w"):
        store = run(
            tmp_path, paths, label=label, band_names=["red", "nir", "swir"], chunk=16, block=32
        )
    assert any("equivalent" in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(store.read_image(store.grid.full_window), np.stack(bands))
    np.testing.assert_array_equal(store.read_label(store.grid.full_window), labels)
    assert store.info.band_names == ("red", "nir", "swir")


def test_shifted_label_grid_fails_unless_reprojected(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    data = rng.integers(1, 3000, size=(2, 40, 50)).astype("uint16")
    image = write_tif(tmp_path / "img.tif", data)
    labels = np.zeros((40, 50), dtype="uint8")
    labels[:, 25:] = 2
    labels[:, :25] = 1
    # Shifted by 3 pixels east (30 m).
    label = write_tif(
        tmp_path / "lab.tif", labels, transform=(10.0, 0.0, 300030.0, 0.0, -10.0, 3500000.0)
    )
    with pytest.raises(GridMismatchError) as err:
        run(tmp_path, [image], label=label)
    assert "origin (300000.000000" in str(err.value) and "origin (300030.000000" in str(err.value)
    assert "--reproject-labels" in str(err.value)
    assert not (tmp_path / "scene.zarr").exists()

    store = run(tmp_path, [image], label=label, reproject_labels=True, chunk=16, block=16)
    got = store.read_label(store.grid.full_window)
    # Label column j covers image column j + 3; the first 3 image columns have no label.
    assert (got[:, :3] == 0).all()
    assert (got[:, 3:28] == 1).all() and (got[:, 28:] == 2).all()


def test_label_value_map_and_unlabelled(tmp_path: Path, rng: np.random.Generator) -> None:
    data = rng.integers(1, 3000, size=(1, 20, 20)).astype("int16")
    raw = np.array([-5, 2, 3, 6, 7], dtype="int16")[rng.integers(0, 5, size=(20, 20))]
    store = run(
        tmp_path,
        [write_tif(tmp_path / "i.tif", data)],
        label=write_tif(tmp_path / "l.tif", raw),
        label_map={-5: 0, 2: 1, 3: 1, 6: 1},
        label_map_rest="keep",  # 7 is a class of its own
        classes={1: "forest", 7: "water"},
        chunk=16,
        block=16,
    )
    got = store.read_label(store.grid.full_window)
    expected = np.select([raw == -5, np.isin(raw, [2, 3, 6])], [0, 1], default=raw)
    np.testing.assert_array_equal(got, expected)
    assert [(c.id, c.name) for c in store.info.classes] == [(1, "forest"), (7, "water")]
    assert store.info.class_histogram == {
        1: int(np.isin(raw, [2, 3, 6]).sum()),
        7: int((raw == 7).sum()),
    }


# -- memory ---------------------------------------------------------------------------------


def _peak_ingest_bytes(tmp_path: Path, size: int) -> int:
    syn = synthesize(
        SynthConfig(
            output=str(tmp_path / f"syn{size}"), height=size, width=size, engine="local", block=256
        ),
        progress=False,
    )
    cfg = IngestConfig(
        images=list(syn.images),
        label=syn.label,
        output=str(tmp_path / f"s{size}.zarr"),
        engine="local",
        chunk=128,
        block=256,
    )
    tracemalloc.start()
    try:
        ingest(cfg, progress=False)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_ingest_peak_memory_flat_when_area_grows_4x(tmp_path: Path) -> None:
    """Peak Python-heap memory of ingest (numpy buffers included) grows < 25% for 4x area."""
    small = _peak_ingest_bytes(tmp_path, 1024)
    large = _peak_ingest_bytes(tmp_path, 2048)
    whole_large_scene = 6 * 2048 * 2048 * 2  # what reading the 4x image at once would take
    assert large < 1.25 * small, (small, large)
    assert large < whole_large_scene / 2, (large, whole_large_scene)


# -- bad inputs -----------------------------------------------------------------------------


@pytest.fixture
def good_image(tmp_path: Path, rng: np.random.Generator) -> Path:
    return write_tif(
        tmp_path / "good.tif", rng.integers(1, 3000, size=(2, 40, 40)).astype("uint16")
    )


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"image file not found: .*nope\.tif; check the path"):
        run(tmp_path, [tmp_path / "nope.tif"])


def test_corrupt_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tif"
    bad.write_bytes(os.urandom(4000))
    with pytest.raises(InputError, match="cannot read image file .*bad.tif as a raster"):
        run(tmp_path, [bad])


def test_truncated_file(tmp_path: Path, rng: np.random.Generator) -> None:
    full = write_tif(
        tmp_path / "full.tif", rng.integers(0, 9999, size=(3, 200, 200)).astype("uint16")
    )
    cut = tmp_path / "cut.tif"
    cut.write_bytes(full.read_bytes()[: int(full.stat().st_size * 0.6)])
    with pytest.raises(InputError, match="corrupt or truncated"):
        run(tmp_path, [cut])
    assert not (tmp_path / "scene.zarr").exists()


def test_unsupported_dtype(tmp_path: Path) -> None:
    data = np.ones((1, 20, 20), dtype="complex64")
    with pytest.raises(InputError, match="unsupported pixel type complex64"):
        run(tmp_path, [write_tif(tmp_path / "c.tif", data)])


def test_float_labels_with_whole_codes_are_taken_and_fractions_refused(
    tmp_path: Path, good_image: Path
) -> None:
    # (Issue 15: a label raster exported as float32 with integer codes is accepted.)
    codes = np.ones((40, 40), dtype="float32")
    codes[:, 20:] = 2
    codes[0, 0] = np.nan  # no label there
    lab = write_tif(tmp_path / "l.tif", codes)
    store = run(tmp_path, [good_image], label=lab)
    labels = store.read_label(store.grid.full_window)
    assert labels[0, 0] == 0 and labels[0, 1] == 1 and labels[0, 39] == 2
    codes[7, 3] = 1.5
    lab = write_tif(tmp_path / "half.tif", codes)
    with pytest.raises(InputError, match=r"holds 1\.5 at pixel \(row 7, col 3\)"):
        run(tmp_path, [good_image], label=lab, overwrite=True)


def test_label_values_outside_class_range(tmp_path: Path, good_image: Path) -> None:
    lab = write_tif(tmp_path / "l.tif", np.full((40, 40), 300, dtype="int16"))
    with pytest.raises(InputError, match=r"values \[300\] .*--label-map"):
        run(tmp_path, [good_image], label=lab)
    assert not (tmp_path / "scene.zarr").exists()


def test_all_nodata_scene(tmp_path: Path) -> None:
    img = write_tif(tmp_path / "e.tif", np.zeros((2, 30, 30), dtype="uint16"), nodata=0)
    with pytest.raises(InputError, match="every pixel .* is nodata"):
        run(tmp_path, [img])
    assert not (tmp_path / "scene.zarr").exists()


def test_band_names_count_mismatch(tmp_path: Path, good_image: Path) -> None:
    with pytest.raises(ConfigError, match="3 band names given for 2 bands"):
        run(tmp_path, [good_image], band_names=["a", "b", "c"])


def test_existing_output_refused_then_replaced_only_on_success(
    tmp_path: Path, good_image: Path, rng: np.random.Generator
) -> None:
    store = run(tmp_path, [good_image])
    before = store.read_image(store.grid.full_window)
    with pytest.raises(OutputError, match="exists already; pass --overwrite"):
        run(tmp_path, [good_image])
    # A failing overwrite (truncated input) leaves the existing store as it was.
    full = write_tif(
        tmp_path / "full.tif", rng.integers(0, 9999, size=(2, 200, 200)).astype("uint16")
    )
    cut = tmp_path / "cut.tif"
    cut.write_bytes(full.read_bytes()[: int(full.stat().st_size * 0.6)])
    with pytest.raises(InputError):
        run(tmp_path, [cut], overwrite=True)
    again = SceneStore.open(str(tmp_path / "scene.zarr"))
    np.testing.assert_array_equal(again.read_image(again.grid.full_window), before)
    # A good overwrite replaces it; no temporary folders are left behind.
    other = write_tif(tmp_path / "other.tif", np.full((2, 40, 40), 7, dtype="uint16"))
    replaced = run(tmp_path, [other], overwrite=True)
    assert (replaced.read_image(replaced.grid.full_window) == 7).all()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_config_rejects_unknown_keys_and_bad_values() -> None:
    with pytest.raises(ConfigError, match="unknown key 'chunks'; did you mean 'chunk'"):
        IngestConfig.from_dict({"images": ["a.tif"], "output": "o", "chunks": 5})
    with pytest.raises(ConfigError, match="block .* must be a multiple of chunk"):
        IngestConfig.from_dict({"images": ["a.tif"], "output": "o", "chunk": 64, "block": 100})
    with pytest.raises(ConfigError, match="'images' is required"):
        IngestConfig.from_dict({"output": "o"})


def test_incomplete_store_is_refused(tmp_path: Path, good_image: Path) -> None:
    store = run(tmp_path, [good_image])
    store_rw = SceneStore.open(store.url, mode="r+")
    store_rw.update_meta(complete=False)
    with pytest.raises(InputError, match="incomplete"):
        SceneStore.open(store.url)
