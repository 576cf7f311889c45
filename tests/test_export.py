"""Export: a valid COG on the mosaic's grid, mode overviews, STAC Item, quicklook, s3."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.warp import transform_bounds
from rio_cogeo.cogeo import cog_validate

from tests.conftest import local_copy
from w2w.core import storage
from w2w.core.classes import class_table
from w2w.core.errors import ConfigError, InputError, OutputError
from w2w.core.grid import Grid, Window
from w2w.core.store import MosaicStore
from w2w.export import ExportConfig, export, export_targets
from w2w.export.cog import overview_factors
from w2w.ingest.synth import SynthConfig

NAMES = {1: "forest", 2: "grassland", 3: "shrubland", 4: "water", 5: "urban", 6: "bare soil"}
CLASSES = class_table(list(NAMES), NAMES)
PROVENANCE = {"bundle": {"content_hash": "sha256:feedc0de"}, "predict": {"chip_size": 64}}


def grid_of(h: int, w: int) -> Grid:
    return SynthConfig(output="unused", height=h, width=w).grid


def make_mosaic(
    url: str,
    classes: np.ndarray,
    confidence: np.ndarray | None = None,
    *,
    block: int = 32,
    complete: bool = True,
) -> MosaicStore:
    """A mosaic store holding ``classes`` (and ``confidence``), written block by block."""
    grid = grid_of(*classes.shape)
    store = MosaicStore.create(
        url,
        grid,
        block=block,
        classes=CLASSES,
        provenance=PROVENANCE,
        with_confidence=confidence is not None,
    )
    for w in grid.blocks(store.block).windows():
        store.write("class", w, classes[w.slices])
        if confidence is not None:
            store.write("confidence", w, confidence[w.slices])
        store.mark_block_done(w)
    if complete:
        store.mark_complete()
    return store


def random_map(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    cls = rng.integers(1, 7, size=(h, w)).astype("uint8")
    cls[:7, :11] = 255  # a nodata corner (outside the state)
    conf = rng.integers(60, 256, size=(h, w)).astype("uint8")
    conf[cls == 255] = 0
    return cls, conf


@pytest.fixture
def small(tmp_path: Path, rng: np.random.Generator) -> tuple[str, np.ndarray, np.ndarray]:
    cls, conf = random_map(rng, 97, 130)
    url = str(tmp_path / "mosaic.zarr")
    make_mosaic(url, cls, conf, block=32)
    return url, cls, conf


def test_cog_is_valid_and_equals_the_mosaic(tmp_path: Path, small) -> None:
    url, cls, conf = small
    cfg = ExportConfig(input=url, output=str(tmp_path / "out" / "map.tif"), blocksize=64)
    result = export(cfg, progress=False)
    mosaic = MosaicStore.open(url)

    valid, errors, warnings = cog_validate(result.cog)
    assert valid and not errors, (errors, warnings)
    with rasterio.open(result.cog) as ds:
        assert ds.count == 1 and ds.dtypes[0] == "uint8"
        assert ds.nodata == 255
        assert ds.crs == mosaic.grid.crs
        assert ds.transform == mosaic.grid.transform
        assert ds.block_shapes == [(64, 64)]
        assert ds.overviews(1) == [2, 4] == overview_factors(97, 130, 64)
        np.testing.assert_array_equal(ds.read(1), cls)
        cmap = ds.colormap(1)
        for c in CLASSES:
            assert cmap[c.id][:3] == c.color
        assert cmap[255][3] == 0  # nodata is transparent
        band = ds.tags(1)
        assert json.loads(band["CLASSES"])[5] == {
            "value": 6,
            "name": "bare soil",
            "color": "#C8AA82",
        }
        assert band["CLASS_1"] == "forest"
        tags = ds.tags()
        assert json.loads(tags["W2W_PROVENANCE"]) == PROVENANCE
        assert tags["W2W_BUNDLE_HASH"] == "sha256:feedc0de"
        assert tags["TIFFTAG_SOFTWARE"].startswith("w2w ")
    # Confidence beside it: the same values, nodata 0 where the map has none, scale 1/255.
    assert result.confidence == str(tmp_path / "out" / "map_confidence.tif")
    valid, errors, _ = cog_validate(result.confidence)
    assert valid and not errors
    with rasterio.open(result.confidence) as ds:
        assert ds.nodata == 0 and ds.scales[0] == pytest.approx(1 / 255)
        assert ds.transform == mosaic.grid.transform and ds.crs == mosaic.grid.crs
        np.testing.assert_array_equal(ds.read(1), conf)
    assert result.class_counts["forest"] == int((cls == 1).sum())
    assert result.nodata_pixels == int((cls == 255).sum())
    assert sorted(os.listdir(tmp_path / "out")) == [
        "map.json",
        "map.qml",
        "map.sld",
        "map.tif",
        "map.tif.aux.xml",
        "map_confidence.tif",
        "map_quicklook.png",
    ]


def test_class_overviews_use_mode_and_confidence_average(tmp_path: Path) -> None:
    """Every 2 x 2 cell holds three pixels of one class and one of another, placed at random:
    mode gives the majority everywhere, where nearest would give the minority in about a
    quarter of the cells and an average a value between the two ids.
    """
    rng = np.random.default_rng(7)
    h, w = 200, 264  # several mosaic blocks, partial edge blocks, 4 tiles across
    major = rng.integers(1, 4, size=(h // 2, w // 2)).astype("uint8")
    minor = major + 3
    cls = np.repeat(np.repeat(major, 2, axis=0), 2, axis=1)
    odd = rng.integers(0, 4, size=major.shape)
    for k in range(4):
        r, c = divmod(k, 2)
        view = cls[r::2, c::2]
        view[odd == k] = minor[odd == k]
    conf = rng.integers(1, 256, size=(h, w)).astype("uint8")
    url = str(tmp_path / "m.zarr")
    make_mosaic(url, cls, conf, block=64)
    result = export(
        ExportConfig(input=url, output=str(tmp_path / "map.tif"), blocksize=64), progress=False
    )

    with rasterio.open(result.cog, overview_level=0) as ov:
        assert ov.shape == (h // 2, w // 2)
        np.testing.assert_array_equal(ov.read(1), major)
    nearest = cls[1::2, 1::2]  # what a nearest-neighbour decimation would pick
    assert (nearest != major).mean() > 0.2
    with rasterio.open(result.confidence, overview_level=0) as ov:
        got = ov.read(1).astype(float)
    mean = conf.reshape(h // 2, 2, w // 2, 2).astype(float).mean(axis=(1, 3))
    assert np.abs(got - mean).max() <= 1.0


def test_stac_item(tmp_path: Path, small) -> None:
    url, cls, _ = small
    result = export(
        ExportConfig(
            input=url, output=str(tmp_path / "map.tif"), blocksize=64, datetime="2024-06-30"
        ),
        progress=False,
    )
    item = json.loads(Path(result.stac).read_text())
    grid = MosaicStore.open(url).grid

    assert item["type"] == "Feature" and item["stac_version"] == "1.1.0"
    assert item["id"] == "map"
    for ext in ("projection/v2.0.0", "classification/v1.1.0", "raster/v2.0.0", "file/v2.1.0"):
        assert f"https://stac-extensions.github.io/{ext}/schema.json" in item["stac_extensions"]
    props = item["properties"]
    assert props["datetime"] == "2024-06-30T00:00:00Z" and props["created"].endswith("Z")
    assert props["proj:code"] == "EPSG:32613"
    assert props["proj:shape"] == [97, 130]
    assert props["proj:transform"] == list(grid.transform)[:6]
    assert props["proj:bbox"] == list(grid.bounds)
    assert props["w2w:bundle_hash"] == "sha256:feedc0de"
    assert props["w2w:provenance"] == PROVENANCE
    assert props["gsd"] == 10.0

    west, south, east, north = transform_bounds(grid.crs, "EPSG:4326", *grid.bounds)
    # The footprint is the valid area's (tests/test_export_stac.py): inside the grid's bounds.
    bw, bs, be, bn = item["bbox"]
    assert west - 1e-7 <= bw < be <= east + 1e-7 and south - 1e-7 <= bs < bn <= north + 1e-7
    ring = item["geometry"]["coordinates"][0]
    assert item["geometry"]["type"] == "Polygon" and ring[0] == ring[-1]
    lon, lat = zip(*ring, strict=True)
    assert [min(lon), min(lat), max(lon), max(lat)] == pytest.approx(item["bbox"], abs=1e-7)

    assets = item["assets"]
    cog = assets["classes"]
    assert cog["href"] == "./map.tif" and "profile=cloud-optimized" in cog["type"]
    assert cog["roles"] == ["data"]
    assert cog["bands"] == [
        {"name": "class", "nodata": 255, "data_type": "uint8", "raster:spatial_resolution": 10.0}
    ]
    assert cog["file:size"] == Path(result.cog).stat().st_size
    assert cog["file:checksum"].startswith("1220") and len(cog["file:checksum"]) == 68
    classes = {c["value"]: c for c in cog["classification:classes"]}
    assert set(classes) == {*NAMES, 255}
    assert classes[6]["name"] == "bare_soil" and classes[6]["title"] == "bare soil"
    assert classes[6]["color_hint"] == "C8AA82"
    assert classes[255]["nodata"] is True
    assert sum(c["count"] for c in classes.values()) == cls.size
    assert classes[4]["count"] == int((cls == 4).sum())
    assert assets["confidence"]["href"] == "./map_confidence.tif"
    assert assets["confidence"]["bands"][0]["raster:scale"] == pytest.approx(1 / 255)
    assert assets["quicklook"]["type"] == "image/png"
    assert "overview" in assets["quicklook"]["roles"]
    assert assets["quicklook"]["proj:code"] is None
    for asset in assets.values():
        assert (tmp_path / asset["href"]).exists()


def test_quicklook_size_and_style(tmp_path: Path, small) -> None:
    url, _, _ = small
    result = export(
        ExportConfig(input=url, output=str(tmp_path / "map.tif"), blocksize=64, quicklook_size=300),
        progress=False,
    )
    with Image.open(result.quicklook) as png:
        assert png.format == "PNG"
        assert png.size == (300, round(97 * 300 / 130))  # (width, height)
    item = json.loads(Path(result.stac).read_text())
    assert item["assets"]["quicklook"]["proj:shape"] == [round(97 * 300 / 130), 300]
    style = Path(result.style).read_text()
    assert 'label="bare soil"' in style and 'value="6"' in style and "#c8aa82" in style


def test_confidence_band_mode(tmp_path: Path, small) -> None:
    url, cls, conf = small
    result = export(
        ExportConfig(input=url, output=str(tmp_path / "map.tif"), blocksize=64, confidence="band"),
        progress=False,
    )
    assert result.confidence is None
    valid, errors, _ = cog_validate(result.cog)
    assert valid and not errors
    with rasterio.open(result.cog) as ds:
        assert ds.count == 2 and ds.nodata == 255
        np.testing.assert_array_equal(ds.read(1), cls)
        expected = np.minimum(conf, 254)
        expected[cls == 255] = 255
        np.testing.assert_array_equal(ds.read(2), expected)
        assert ds.colorinterp[1] != rasterio.enums.ColorInterp.alpha
    item = json.loads(Path(result.stac).read_text())
    bands = item["assets"]["classes"]["bands"]
    assert [b["name"] for b in bands] == ["class", "confidence"]
    assert "classification:classes" in bands[0]
    assert not (tmp_path / "map_confidence.tif").exists()


def test_s3_export_equals_local(tmp_path: Path, small, s3_bucket: str) -> None:
    url, _, _ = small
    local = export(
        ExportConfig(input=url, output=str(tmp_path / "map.tif"), blocksize=64), progress=False
    )
    remote = export(
        ExportConfig(input=url, output=f"{s3_bucket}/maps/map.tif", blocksize=64), progress=False
    )
    assert remote.cog == f"{s3_bucket}/maps/map.tif"
    assert remote.stac == f"{s3_bucket}/maps/map.json"
    for name in ("map.tif", "map_confidence.tif"):
        with local_copy(f"{s3_bucket}/maps/{name}", suffix=".tif") as path:
            assert cog_validate(path)[0]
            with rasterio.open(path) as a, rasterio.open(tmp_path / name) as b:
                np.testing.assert_array_equal(a.read(), b.read())
                assert a.profile == b.profile
                assert a.overviews(1) == b.overviews(1)
    item_s3 = json.loads(storage.read_bytes(remote.stac))
    item_local = json.loads(Path(local.stac).read_text())
    # Links and the mosaic's href: relative where the Item and the mosaic are side by side.
    self_s3, self_local = (
        {ln["rel"]: ln["href"] for ln in i["links"]} for i in (item_s3, item_local)
    )
    assert self_s3["self"] == remote.stac and self_local["self"] == str(tmp_path / "map.json")
    assert self_local["derived_from"] == item_local["properties"]["w2w:mosaic"] == "./mosaic.zarr"
    assert self_s3["derived_from"] == item_s3["properties"]["w2w:mosaic"] == url
    for item in (item_s3, item_local):
        for key in ("created", "datetime", "w2w:mosaic"):
            item["properties"].pop(key)
        item.pop("links")
        for asset in item["assets"].values():
            asset.pop("file:checksum", None)  # the GeoTIFF carries its creation time
    assert item_s3 == item_local
    png = storage.read_bytes(remote.quicklook)
    assert Image.open(io.BytesIO(png)).size == Image.open(local.quicklook).size


def test_existing_output_refused_and_kept_when_an_export_fails(
    tmp_path: Path, small, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _, _ = small
    cfg = ExportConfig(input=url, output=str(tmp_path / "map.tif"), blocksize=64)
    export(cfg, progress=False)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}

    with pytest.raises(OutputError, match="exists already; pass --overwrite"):
        export(cfg, progress=False)

    calls = {"n": 0}
    original = MosaicStore.read_class

    def failing(self: MosaicStore, window: Window) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError("connection reset while reading the mosaic")
        return original(self, window)

    monkeypatch.setattr(MosaicStore, "read_class", failing)
    with pytest.raises(OSError, match="connection reset"):
        export(cfg.replace(overwrite=True), progress=False)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert after == before  # every file untouched, no partial file beside them


def test_refusals(tmp_path: Path, rng: np.random.Generator) -> None:
    with pytest.raises(ConfigError, match="multiple of 16"):
        ExportConfig.from_dict({"input": "m.zarr", "output": "map.tif", "blocksize": 100})
    with pytest.raises(ConfigError, match="ending in .tif"):
        ExportConfig.from_dict({"input": "m.zarr", "output": "map.png"})
    with pytest.raises(ConfigError, match="ISO 8601"):
        ExportConfig.from_dict({"input": "m.zarr", "output": "map.tif", "datetime": "June"})
    cls, _ = random_map(rng, 40, 50)
    no_conf = str(tmp_path / "noconf.zarr")
    make_mosaic(no_conf, cls, None, block=16)
    with pytest.raises(InputError, match="no confidence array; export with --confidence none"):
        export(ExportConfig(input=no_conf, output=str(tmp_path / "a.tif")), progress=False)
    result = export(
        ExportConfig(input=no_conf, output=str(tmp_path / "a.tif"), confidence="none"),
        progress=False,
    )
    assert result.confidence is None and result.overviews == ()
    assert "confidence" not in json.loads(Path(result.stac).read_text())["assets"]
    partial = str(tmp_path / "partial.zarr")
    make_mosaic(partial, cls, None, block=16, complete=False)
    with pytest.raises(InputError, match="incomplete"):
        export(ExportConfig(input=partial, output=str(tmp_path / "b.tif")), progress=False)
    assert export_targets(ExportConfig(input="m", output="s3://b/x/y.tiff")).stac == (
        "s3://b/x/y.json"
    )


MEMORY_PROBE = textwrap.dedent(
    """
    import json, resource, sys, tracemalloc
    from w2w.export import ExportConfig, export
    import matplotlib.figure, PIL.Image, rasterio.shutil  # imported before measuring
    tracemalloc.start()
    export(ExportConfig(input=sys.argv[1], output=sys.argv[2], cache_mb=8), progress=False)
    peak = tracemalloc.get_traced_memory()[1]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"traced": peak, "rss": rss}))
    """
)


def test_export_memory_is_flat_when_the_area_grows_4x(tmp_path: Path) -> None:
    """Peak memory of an export of 2048^2 and 4096^2 px (4x the area), each in a fresh
    process. Python-side allocations (numpy included) are traced exactly; the process's
    peak RSS covers GDAL too. GDAL's own working sets are bounded but reach their bound only
    on large rasters (block cache: cache_mb; overview builder: GDAL_OVR_CHUNK_MAX_SIZE per
    thread), so the probe lowers both to reach the bounded regime at test size.
    """
    peaks = {}
    for n in (2048, 4096):
        url = str(tmp_path / f"m{n}.zarr")
        grid = grid_of(n, n)
        store = MosaicStore.create(url, grid, block=512, classes=CLASSES)
        rows, cols = np.mgrid[0:512, 0:512]
        for w in grid.blocks(512).windows():
            pattern = ((rows + w.row) // 7 + (cols + w.col) // 5) % 6 + 1
            store.write("class", w, pattern.astype("uint8"))
            store.write("confidence", w, (pattern * 40).astype("uint8"))
            store.mark_block_done(w)
        store.mark_complete()
        env = {**os.environ, "GDAL_OVR_CHUNK_MAX_SIZE": str(1 << 20)}
        env["PYTHONPATH"] = os.pathsep.join(
            [str(Path(__file__).parents[1]), env.get("PYTHONPATH", "")]
        )
        out = subprocess.run(
            [sys.executable, "-c", MEMORY_PROBE, url, str(tmp_path / f"map{n}.tif")],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        peaks[n] = json.loads(out.stdout.strip().splitlines()[-1])
    mib = 1 << 20
    grown_traced = (peaks[4096]["traced"] - peaks[2048]["traced"]) / mib
    grown_rss = (peaks[4096]["rss"] - peaks[2048]["rss"]) / mib
    shown = {n: {k: round(v / mib, 1) for k, v in p.items()} for n, p in peaks.items()}
    print(f"export peak memory (MiB): {shown}")
    # The larger class raster alone is 16 MiB (12 MiB more than the smaller), with confidence
    # 32 MiB: holding either in memory would break these bounds.
    assert grown_traced < 1.0, peaks
    assert grown_rss < 10.0, peaks


def test_cli_export(tmp_path: Path, small) -> None:
    from typer.testing import CliRunner

    from w2w.cli import app

    url, _, _ = small
    runner = CliRunner()
    args = ["--quiet", "export", url, "-o", str(tmp_path / "map.tif"), "--blocksize", "64"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    assert f"COG: {tmp_path / 'map.tif'}" in result.stdout
    assert "STAC item:" in result.stdout and "overviews: 2, 4" in result.stdout
    again = runner.invoke(app, args)
    assert again.exit_code == 2
    assert again.stderr.strip().startswith("error:") and "--overwrite" in again.stderr
