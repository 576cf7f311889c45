"""Vector export: the polygons equal GDAL's polygonize of the whole raster at once (no seam
at block borders), areas in hectares (planar and geodesic), GeoPackage and FlatGeobuf files
in the export's set, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyogrio
import pyogrio.raw
import pytest
import rasterio
import rasterio.features
import shapely
from affine import Affine
from pyproj import CRS, Geod
from scipy import ndimage
from shapely.geometry import shape

from tests.conftest import local_copy
from tests.test_export import CLASSES, NAMES, grid_of, make_mosaic
from w2w.core import storage
from w2w.core.errors import ConfigError, OutputError
from w2w.core.grid import Grid
from w2w.export import ExportConfig, export
from w2w.export.vector import write_vector


def patchy_map(h: int = 200, w: int = 200) -> np.ndarray:
    """Irregular patches much larger than the blocks: smoothed noise in four classes (patches
    that run across many blocks), a ring (a polygon with a hole) around a core, a one-pixel
    staircase across the map, a checkerboard over a block corner (same-class pixels that only
    meet diagonally, across the border), and nodata: a corner, a strip through patches, a
    hole in the core and a hole across a block border."""
    rng = np.random.default_rng(42)
    field = ndimage.gaussian_filter(rng.normal(size=(h, w)), 8)
    cls = (np.digitize(field, np.quantile(field, [0.3, 0.55, 0.8])) + 1).astype(np.uint8)
    rows, cols = np.mgrid[:h, :w]
    dist = np.hypot(rows - 90.5, cols - 110.5)
    cls[(dist >= 25) & (dist < 38)] = 5
    cls[dist < 12] = 6
    steps = np.arange(60, h)
    cls[steps, steps - 60] = 6
    cls[steps[:-1], steps[:-1] - 59] = 6
    cls[28:36, 156:164] = 1 + np.indices((8, 8)).sum(axis=0) % 2
    cls[:15, :25] = 255
    cls[100:104, 150:] = 255
    cls[88:92, 108:112] = 255
    cls[94:99, 30:36] = 255
    return cls


def write_tif(path: Path, cls: np.ndarray, grid: Grid) -> Path:
    """The class raster as a plain GeoTIFF (what ``write_vector`` reads)."""
    profile = {"driver": "GTiff", "height": grid.height, "width": grid.width, "count": 1}
    with rasterio.open(
        path, "w", **profile, dtype="uint8", crs=grid.crs, transform=grid.transform, nodata=255
    ) as ds:
        ds.write(cls, 1)
    return path


def read_polygons(path: str | Path) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The metadata, class ids, class names, areas (ha) and polygons of a vector file."""
    meta, _, wkb, (class_id, class_name, area_ha) = pyogrio.raw.read(str(path))
    return meta, class_id, class_name, area_ha, shapely.from_wkb(wkb)


def gdal_reference(cls: np.ndarray, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """GDAL's polygonize of the whole raster at once, 4-connected: classes and polygons."""
    found = rasterio.features.shapes(cls, mask=cls != 255, connectivity=4, transform=grid.transform)
    values, polygons = zip(*((int(v), shape(g)) for g, v in found), strict=True)
    return np.array(values), np.array(polygons, dtype=object)


def assert_equals_whole_raster_polygonize(path: str | Path, cls: np.ndarray, grid: Grid) -> None:
    """The vector file at ``path`` holds exactly GDAL's polygons of the whole raster."""
    _, class_id, class_name, area_ha, polygons = read_polygons(path)
    ref_class, ref_polygons = gdal_reference(cls, grid)
    pixel_ha = grid.res[0] * grid.res[1] / 1e4

    assert len(polygons) == len(ref_polygons)
    assert shapely.is_valid(polygons).all()
    assert shapely.get_type_id(polygons).tolist() == [3] * len(polygons)  # Polygon
    assert [NAMES[i] for i in class_id] == class_name.tolist()
    np.testing.assert_allclose(area_ha, shapely.area(polygons) / 1e4, rtol=1e-12)
    # Areas per class: pixel count x pixel area.
    for c in NAMES:
        pixels = int((cls == c).sum())
        assert area_ha[class_id == c].sum() == pytest.approx(pixels * pixel_ha, rel=1e-9)
    # The multiset of (class, area) of the polygons is GDAL's.
    ref_area = shapely.area(ref_polygons) / 1e4
    mine, theirs = np.lexsort((area_ha, class_id)), np.lexsort((ref_area, ref_class))
    np.testing.assert_array_equal(class_id[mine], ref_class[theirs])
    np.testing.assert_allclose(area_ha[mine], ref_area[theirs], rtol=1e-9)
    # Per class, the polygons cover what GDAL's cover, exactly.
    for c in NAMES:
        union = shapely.union_all(polygons[class_id == c])
        ref_union = shapely.union_all(ref_polygons[ref_class == c])
        assert shapely.area(shapely.symmetric_difference(union, ref_union)) == 0.0
    # Polygon by polygon: each equals one of GDAL's, of its class (no seam, no split).
    tree = shapely.STRtree(ref_polygons)
    inside, found = tree.query(shapely.point_on_surface(polygons), predicate="within")
    assert np.array_equal(inside, np.arange(len(polygons)))  # one GDAL polygon each
    assert (ref_class[found] == class_id).all()
    assert shapely.equals(polygons, ref_polygons[found]).all()
    assert len(set(found.tolist())) == len(ref_polygons)


@pytest.mark.parametrize("block", [32, 37, 200])
def test_polygons_equal_gdal_polygonize_of_the_whole_raster(tmp_path: Path, block: int) -> None:
    """Blocks of 32 (borders on the ring, the checkerboard's corner, the nodata hole), an odd
    block of 37 (partial edge blocks), and one block for the whole map."""
    cls = patchy_map()
    grid = grid_of(*cls.shape)
    src = write_tif(tmp_path / "map.tif", cls, grid)
    count = write_vector(src, tmp_path / "map.gpkg", CLASSES, block=block, layer="landcover")
    assert count == pyogrio.read_info(tmp_path / "map.gpkg")["features"]
    # The map really has polygons that cross many block borders, and a ring.
    _, ref_polygons = gdal_reference(cls, grid)
    widths = np.diff(shapely.bounds(ref_polygons)[:, [0, 2]], axis=1).ravel() / grid.res[0]
    assert widths.max() > 4 * 32
    assert (shapely.get_num_interior_rings(ref_polygons) > 0).sum() >= 3
    assert_equals_whole_raster_polygonize(tmp_path / "map.gpkg", cls, grid)


@pytest.mark.parametrize("block", [8, 13])
def test_fragmented_random_map_with_tiny_blocks(tmp_path: Path, block: int) -> None:
    """Random classes: most patches are a few pixels, many touch only diagonally, and every
    block border cuts hundreds of them."""
    rng = np.random.default_rng(block)
    cls = rng.integers(1, 4, size=(41, 53)).astype(np.uint8)
    cls[rng.random(cls.shape) < 0.05] = 255
    grid = grid_of(*cls.shape)
    src = write_tif(tmp_path / "map.tif", cls, grid)
    write_vector(src, tmp_path / "map.fgb", CLASSES, block=block, layer="landcover")
    assert_equals_whole_raster_polygonize(tmp_path / "map.fgb", cls, grid)


def test_memory_follows_the_block_borders_not_the_area(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Peak Python memory (numpy included) of polygonizing maps 1024 px wide and 1024 or 4096
    px tall (4x the area, the same width: the same length of border per row of blocks) of
    16 px squares of random classes (~16,000 polygons in the larger one): it does not grow;
    holding the larger map (4 MiB) or its polygons would show."""
    import tracemalloc

    # With AWS keys in the environment (the S3 test server's) rasterio builds a boto3
    # session on every polygonize call, whose reference cycles wait for Python's garbage
    # collector: bounded, but noise for this measurement.
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    peaks = {}
    rng = np.random.default_rng(3)
    for height in (256, 1024, 4096):  # the first one warms up (caches, lazy imports)
        squares = rng.integers(1, 7, size=(height // 16, 1024 // 16)).astype(np.uint8)
        cls = np.repeat(np.repeat(squares, 16, axis=0), 16, axis=1)
        src = write_tif(tmp_path / f"m{height}.tif", cls, grid_of(height, 1024))
        del cls
        tracemalloc.start()
        write_vector(src, tmp_path / f"m{height}.gpkg", CLASSES, block=256, layer="lc", batch=500)
        peaks[height] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    print(f"vector peak memory (MiB) by map height: {peaks}")
    assert peaks[4096] - peaks[1024] < 0.5, peaks


def test_export_writes_a_geopackage_in_its_set(tmp_path: Path) -> None:
    cls = patchy_map()
    url = str(tmp_path / "m.zarr")
    make_mosaic(url, cls, block=32)
    out = tmp_path / "out"
    cfg = ExportConfig(
        input=url,
        output=str(out / "map.tif"),
        blocksize=64,
        confidence="none",
        vector=str(out / "landcover.gpkg"),
    )
    result = export(cfg, progress=False)
    grid = grid_of(*cls.shape)

    assert result.vector == str(out / "landcover.gpkg")
    assert sorted(p.name for p in out.iterdir()) == [
        "landcover.gpkg",
        "map.json",
        "map.qml",
        "map.sld",
        "map.tif",
        "map.tif.aux.xml",
        "map_quicklook.png",
    ]
    info = pyogrio.read_info(result.vector)
    assert info["driver"] == "GPKG" and info["layer_name"] == "landcover"
    assert info["geometry_type"] == "Polygon"
    assert info["fields"].tolist() == ["class_id", "class_name", "area_ha"]
    assert info["dtypes"].tolist() == ["int32", "object", "float64"]
    assert CRS.from_user_input(info["crs"]) == CRS.from_wkt(grid.crs_wkt)
    assert info["features"] == result.vector_polygons
    assert_equals_whole_raster_polygonize(result.vector, cls, grid)

    asset = json.loads(Path(result.stac).read_text())["assets"]["vector"]
    assert asset["href"] == "./landcover.gpkg"
    assert asset["type"] == "application/geopackage+sqlite3" and asset["roles"] == ["data"]
    assert asset["file:size"] == Path(result.vector).stat().st_size

    with pytest.raises(OutputError, match="landcover.gpkg exists already"):
        export(cfg.replace(output=str(out / "other.tif")), progress=False)
    before = Path(result.vector).stat().st_ino
    again = export(cfg.replace(overwrite=True), progress=False)
    assert Path(again.vector).stat().st_ino != before  # replaced by the new set
    assert again.vector_polygons == result.vector_polygons


def test_flatgeobuf_and_cli(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from w2w.cli import app

    cls = patchy_map()[:150, :190]  # partial edge blocks
    url = str(tmp_path / "m.zarr")
    make_mosaic(url, cls, block=32)
    vector = tmp_path / "polygons" / "landcover.fgb"
    args = ["--quiet", "export", url, "-o", str(tmp_path / "map.tif"), "--blocksize", "64"]
    result = CliRunner().invoke(app, [*args, "--confidence", "none", "--vector", str(vector)])
    assert result.exit_code == 0, result.stderr
    info = pyogrio.read_info(vector)
    assert info["driver"] == "FlatGeobuf" and info["geometry_type"] == "Polygon"
    assert f"vector: {vector} ({info['features']:,} polygons)" in result.stdout
    assert info["fields"].tolist() == ["class_id", "class_name", "area_ha"]
    grid = grid_of(*cls.shape)
    assert CRS.from_user_input(info["crs"]) == CRS.from_wkt(grid.crs_wkt)
    assert_equals_whole_raster_polygonize(vector, cls, grid)
    assert sorted(p.name for p in vector.parent.iterdir()) == ["landcover.fgb"]
    asset = json.loads((tmp_path / "map.json").read_text())["assets"]["vector"]
    assert asset["href"] == "./polygons/landcover.fgb"
    assert asset["type"] == "application/vnd.flatgeobuf"


def test_wrong_vector_extension_is_refused_before_any_work(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from w2w.cli import app

    with pytest.raises(ConfigError, match=r"\.gpkg.*\.fgb") as refused:
        ExportConfig.from_dict({"input": "m.zarr", "output": "map.tif", "vector": "map.shp"})
    assert "\n" not in str(refused.value)
    out = tmp_path / "out"
    args = ["export", "missing.zarr", "-o", str(out / "map.tif"), "--vector", "lc.geojson"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "GeoPackage (.gpkg)" in lines[0]
    assert not out.exists()


def test_geographic_grid_gives_geodesic_areas(tmp_path: Path) -> None:
    """On EPSG:4326 areas are geodesic: a rectangle of pixels has the area pyproj.Geod gives
    the same rectangle (a vertex at every pixel corner), and each class's polygons add up to
    the geodesic areas of its pixels."""
    res, west, north = 0.001, -100.0, 45.0
    transform = Affine(res, 0.0, west, 0.0, -res, north)
    grid = Grid(CRS.from_epsg(4326).to_wkt(), transform, 60, 90)
    cls = np.full(grid.shape, 3, dtype=np.uint8)
    cls[10:30, 5:70] = 1  # a rectangle across block borders
    rows, cols = np.mgrid[:60, :90]
    dist = np.hypot(rows - 44.5, cols - 60.5)
    cls[(dist >= 5) & (dist < 12)] = 2  # a ring around class 3
    cls[55:, :20] = 255
    src = write_tif(tmp_path / "geo.tif", cls, grid)
    write_vector(src, tmp_path / "geo.gpkg", CLASSES, block=16, layer="geo")
    meta, class_id, _, area_ha, polygons = read_polygons(tmp_path / "geo.gpkg")
    assert CRS.from_user_input(meta["crs"]) == CRS.from_epsg(4326)

    geod = Geod(ellps="WGS84")
    lon0, lon1 = west + 5 * res, west + 70 * res
    lat0, lat1 = north - 10 * res, north - 30 * res
    top = np.linspace(lon0, lon1, 66)
    side = np.linspace(lat0, lat1, 21)
    lons = np.concatenate([top, np.full(20, lon1), top[::-1][1:], np.full(20, lon0)])
    lats = np.concatenate([np.full(66, lat0), side[1:], np.full(65, lat1), side[::-1][1:]])
    expected = abs(geod.polygon_area_perimeter(lons, lats)[0]) / 1e4
    assert class_id[0] in (1, 2, 3)
    rectangle = area_ha[class_id == 1]
    assert rectangle.tolist() == pytest.approx([expected], rel=1e-9)
    planar = shapely.area(polygons[class_id == 1])[0] / 1e4  # square degrees, not ha
    assert abs(planar - expected) > 1.0

    # Every class: the sum of its pixels' geodesic areas (one cell per row suffices: cells
    # of one row are equal).
    cell_ha = np.array(
        [
            abs(
                geod.polygon_area_perimeter(
                    [west, west + res, west + res, west],
                    [
                        north - r * res,
                        north - r * res,
                        north - (r + 1) * res,
                        north - (r + 1) * res,
                    ],
                )[0]
            )
            / 1e4
            for r in range(grid.height)
        ]
    )
    for c in (1, 2, 3):
        pixels_per_row = (cls == c).sum(axis=1)
        assert area_ha[class_id == c].sum() == pytest.approx(pixels_per_row @ cell_ha, rel=1e-6)
    assert (shapely.get_num_interior_rings(polygons[class_id == 2]) == 1).all()


def test_s3_vector_equals_local(tmp_path: Path, s3_bucket: str) -> None:
    cls = patchy_map()[:100, :120]
    url = str(tmp_path / "m.zarr")
    make_mosaic(url, cls, block=32)
    common = {"input": url, "blocksize": 64, "confidence": "none"}
    local = export(
        ExportConfig(**common, output=str(tmp_path / "map.tif"), vector=str(tmp_path / "lc.gpkg")),
        progress=False,
    )
    remote = export(
        ExportConfig(
            **common, output=f"{s3_bucket}/maps/map.tif", vector=f"{s3_bucket}/maps/lc.gpkg"
        ),
        progress=False,
    )
    assert remote.vector == f"{s3_bucket}/maps/lc.gpkg"
    item = json.loads(storage.read_bytes(remote.stac))
    assert item["assets"]["vector"]["href"] == "./lc.gpkg"
    with local_copy(remote.vector, suffix=".gpkg") as path:
        _, *got = read_polygons(path)
    _, *expected = read_polygons(local.vector)
    for a, b in zip(got[:3], expected[:3], strict=True):  # class ids, names, areas
        np.testing.assert_array_equal(a, b)
    assert shapely.equals_exact(got[3], expected[3], tolerance=0).all()
