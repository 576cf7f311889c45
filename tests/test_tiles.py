"""Statewide inputs: tiles in two UTM zones onto one target grid, a boundary, vector labels,
STAC, overlap rules and masks -- each checked against GDAL's warp of the whole grid or
rasterio's rasterize, written here, not against w2w itself."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT

from tests.conftest import write_tif
from w2w.core.errors import ConfigError, InputError
from w2w.core.store import SceneStore
from w2w.ingest import IngestConfig, SynthConfig, ingest, synthesize

TARGET = "EPSG:6372"  # Mexico ITRF2008 LCC, the national grid


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    folder = tmp_path_factory.mktemp("tiles") / "state"
    out = synthesize(
        SynthConfig(
            output=str(folder),
            height=200,
            width=230,
            seed=4,
            tiles=True,
            tile_size=96,
            tile_overlap=16,
            engine="local",
        ),
        progress=False,
    )
    return {"folder": folder, "out": out}


def middle(state: dict[str, object], tmp_path: Path, edge: float = 1500.0) -> list[float]:
    """Bounds of a square of ``edge`` m in the middle of the state, where tiles overlap."""
    grid = run(state, tmp_path / "full").grid
    left, bottom, right, top = grid.bounds
    x, y = (left + right) / 2, (bottom + top) / 2
    return [x - edge / 2, y - edge / 2, x + edge / 2, y + edge / 2]


def run(state: dict[str, object], tmp_path: Path, **kw: object) -> SceneStore:
    out = state["out"]
    settings: dict[str, object] = {
        "tiles": list(out.tiles),  # type: ignore[attr-defined]
        "output": str(tmp_path / "scene.zarr"),
        "crs": TARGET,
        "resolution": 10.0,
        "chunk": 32,
        "block": 64,
        "engine": "local",
        "overwrite": True,
    }
    settings.update(kw)
    if "aoi" not in settings and "bounds" not in settings:
        settings["aoi"] = out.boundary  # type: ignore[attr-defined]
    ingest(IngestConfig.from_dict(settings), progress=False)
    return SceneStore.open(str(tmp_path / "scene.zarr"))


def reference(
    tiles: list[str], store: SceneStore, resampling: str, rule: str = "first"
) -> tuple[np.ndarray, np.ndarray]:
    """GDAL's warp of every tile onto the whole grid (the exact transformer, as `gdalwarp
    -et 0`), combined in the given order: (bands, h, w) float with NaN where nothing."""
    g = store.grid
    warped = []
    for path in tiles:
        with rasterio.open(path) as src:
            scale = min(src.res[0] / g.res[0], 1.0)
            with WarpedVRT(
                src,
                crs=g.crs,
                transform=g.transform,
                width=g.width,
                height=g.height,
                resampling=Resampling[resampling],
                src_nodata=src.nodata,
                nodata=math.nan,
                dtype="float32",
                tolerance=1e-9,
                XSCALE=scale,
                YSCALE=scale,
            ) as vrt:
                warped.append(vrt.read())
    stack = np.stack(warped)
    valid = ~np.isnan(stack).any(axis=1)
    if rule == "median":
        with np.errstate(all="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                return np.nanmedian(np.where(valid[:, None], stack, np.nan), axis=0), valid.any(0)
    order = range(len(tiles)) if rule == "first" else range(len(tiles) - 1, -1, -1)
    out = np.full(stack.shape[1:], np.nan, dtype=np.float64)
    filled = np.zeros(valid.shape[1:], dtype=bool)
    for i in order:
        take = valid[i] & ~filled
        out[:, take] = stack[i][:, take]
        filled |= take
    return out, filled


def _inside(store: SceneStore, boundary: str) -> np.ndarray:
    import pyogrio
    import shapely
    from rasterio.features import geometry_mask
    from rasterio.warp import transform_geom

    _, _, wkb, _ = pyogrio.raw.read(boundary)
    g = transform_geom(
        "EPSG:4326", store.grid.crs, shapely.geometry.mapping(shapely.from_wkb(wkb[0]))
    )
    return geometry_mask([g], store.grid.shape, store.grid.transform, invert=True)


def test_nearest_ingest_of_tiles_in_two_zones_equals_gdal_warp_of_the_whole_grid(
    state: dict[str, object], tmp_path: Path
) -> None:
    out = state["out"]
    with rasterio.open(out.tiles[0]) as a, rasterio.open(out.tiles[-1]) as b:  # type: ignore[attr-defined]
        assert a.crs.to_epsg() == 32612 and b.crs.to_epsg() == 32613  # two zones
    store = run(state, tmp_path, resampling="nearest")
    ref, filled = reference(list(out.tiles), store, "nearest")  # type: ignore[attr-defined]
    inside = _inside(store, out.boundary)  # type: ignore[attr-defined]
    image = store.read_image(store.grid.full_window)
    expected = np.where((filled & inside)[None], np.nan_to_num(ref), 0).astype("uint16")
    np.testing.assert_array_equal(image, expected)
    # Blocks the boundary does not touch were never written.
    written = store.written_blocks()
    assert not written.all() and store.meta["blocks_skipped"] == int((~written).sum())
    # Each tile's acquisition time (GDAL's IMAGERY metadata, read here by GDAL) is the
    # scene's date range, which predict carries to the map's STAC Item.
    seen = set()
    for path in out.tiles:  # type: ignore[attr-defined]
        with rasterio.open(path) as ds:
            seen.add(ds.tags(ns="IMAGERY")["ACQUISITIONDATETIME"])
    assert len(seen) == 2
    assert store.meta["source"]["datetime"] == {"start": min(seen), "end": max(seen)}


def test_bilinear_agrees_with_gdal_within_one_count(
    state: dict[str, object], tmp_path: Path
) -> None:
    out = state["out"]
    store = run(state, tmp_path, resampling="bilinear")
    ref, filled = reference(list(out.tiles), store, "bilinear")  # type: ignore[attr-defined]
    inside = _inside(store, out.boundary) & filled  # type: ignore[attr-defined]
    image = store.read_image(store.grid.full_window).astype(np.float64)
    diff = np.abs(image - np.floor(np.nan_to_num(ref) + 0.5))[:, inside]
    assert (diff <= 1).mean() >= 0.999 and (diff == 0).mean() >= 0.99


@pytest.mark.parametrize("rule", ["last", "median"])
def test_overlap_rules(state: dict[str, object], tmp_path: Path, rule: str) -> None:
    out = state["out"]
    store = run(
        state,
        tmp_path,
        resampling="nearest",
        overlap=rule,
        aoi=None,
        bounds=middle(state, tmp_path),
    )
    ref, filled = reference(list(out.tiles), store, "nearest", rule)  # type: ignore[attr-defined]
    image = store.read_image(store.grid.full_window)
    expected = np.where(filled[None], np.floor(np.nan_to_num(ref) + 0.5), 0).astype("uint16")
    np.testing.assert_array_equal(image, expected)


def test_vector_labels_equal_rasterize_of_the_reprojected_geometries(
    state: dict[str, object], tmp_path: Path
) -> None:
    import pyogrio
    import shapely
    from rasterio.features import rasterize
    from rasterio.warp import transform_geom

    out = state["out"]
    store = run(state, tmp_path, resampling="nearest", label=out.vector_labels, label_field="class")  # type: ignore[attr-defined]
    meta, _, wkb, fields = pyogrio.raw.read(out.vector_labels)  # type: ignore[attr-defined]
    geoms = [
        transform_geom(meta["crs"], store.grid.crs, shapely.geometry.mapping(g))
        for g in shapely.from_wkb(wkb)
    ]
    expected = rasterize(
        zip(geoms, fields[0], strict=True),
        out_shape=store.grid.shape,
        transform=store.grid.transform,
        fill=0,
        dtype="uint8",
    )
    expected[~_inside(store, out.boundary)] = 0  # type: ignore[attr-defined]
    labels = store.read_label(store.grid.full_window)
    np.testing.assert_array_equal(labels, expected)
    assert int((labels > 0).sum()) > 400  # polygons and points both labelled pixels


def test_a_mask_band_drops_pixels_before_the_overlap_rule(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    data = rng.integers(1, 1000, (3, 40, 40)).astype("uint16")
    data[2] = 0
    data[2, :10] = 9  # a 'cloud' in the first tile's mask band
    first = write_tif(tmp_path / "a.tif", data, nodata=0)
    second = data.copy()
    second[:2] += 1000
    second[2] = 0
    write_tif(tmp_path / "b.tif", second, nodata=0)
    settings = {
        "tiles": [str(first), str(tmp_path / "b.tif")],
        "output": str(tmp_path / "s.zarr"),
        "crs": "EPSG:32613",
        "resolution": 10.0,
        "bounds": [300000, 3499600, 300400, 3500000],
        "mask_band": 3,
        "mask_values": "9",
        "resampling": "nearest",
        "chunk": 16,
        "block": 32,
        "engine": "local",
    }
    ingest(IngestConfig.from_dict(settings), progress=False)
    image = SceneStore.open(str(tmp_path / "s.zarr")).read_image(
        SceneStore.open(str(tmp_path / "s.zarr")).grid.full_window
    )
    assert image.shape[0] == 2  # the mask band is not data
    np.testing.assert_array_equal(image[:, :10], second[:2, :10])  # cloudy: from the second
    np.testing.assert_array_equal(image[:, 10:], data[:2, 10:])  # clear: the first wins


def test_stac_items_with_band_assets_ingest_like_their_files(
    state: dict[str, object], tmp_path: Path
) -> None:
    out = state["out"]
    tiles = list(out.tiles)  # type: ignore[attr-defined]
    items = []
    for k, path in enumerate(tiles):
        assets = {}
        with rasterio.open(path) as src:
            profile = src.profile
            for b, name in enumerate(("B02", "B03", "B04"), start=1):
                band_file = tmp_path / f"t{k}_{name}.tif"
                with rasterio.open(band_file, "w", **{**profile, "count": 1}) as dst:
                    dst.write(src.read(b), 1)
                assets[name] = {
                    "href": band_file.name,
                    "type": "image/tiff; application=geotiff",
                    "eo:bands": [{"name": name, "common_name": ("blue", "green", "red")[b - 1]}],
                }
        items.append(
            {
                "type": "Feature",
                "stac_version": "1.0.0",
                "id": f"tile-{k}",
                "geometry": None,
                "properties": {"datetime": f"2024-06-0{k + 1}T17:00:00Z"},
                "links": [],
                "assets": assets,
            }
        )
    collection = tmp_path / "items.json"
    collection.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    # Relative hrefs resolve against the collection's folder.
    common = {"aoi": None, "bounds": middle(state, tmp_path, 1200.0), "resampling": "nearest"}
    store = run(state, tmp_path, tiles=[str(collection)], bands="red,B03", **common)
    assert store.info.band_names == ("red", "B03")
    files = run(state, tmp_path / "f", tiles=tiles, **common)
    full = files.read_image(files.grid.full_window)
    np.testing.assert_array_equal(store.read_image(store.grid.full_window), full[[2, 1]])
    assert store.meta["source"]["datetime"] == {
        "start": "2024-06-01T17:00:00Z",
        "end": "2024-06-09T17:00:00Z",
    }
    with pytest.raises(InputError, match="has no asset 'nir'.*assets are: B02, B03, B04"):
        run(state, tmp_path, tiles=[str(collection)], bands="nir", **common)


def _vector(path: Path, geometry: dict[str, object], crs: str, **props: object) -> str:
    """A one-feature GeoJSON file in ``crs``."""
    doc: dict[str, object] = {
        "type": "FeatureCollection",
        "crs": {"type": "name", "properties": {"name": crs}},
        "features": [{"type": "Feature", "properties": props, "geometry": geometry}],
    }
    path.write_text(json.dumps(doc))
    return str(path)


def _no_crs_shapefile(path: Path) -> str:
    """A boundary in a shapefile with no .prj: a polygon in no CRS."""
    import pyogrio.raw
    import shapely

    geom = shapely.box(300000, 3400000, 310000, 3410000)
    with warnings.catch_warnings():  # no CRS is the point of this file
        warnings.simplefilter("ignore", UserWarning)
        pyogrio.raw.write(
            str(path), shapely.to_wkb(np.asarray([geom], dtype=object)), [], [],
            driver="ESRI Shapefile", geometry_type="Polygon", crs=None,
        )  # fmt: skip
    return str(path)


def _bad_tile_inputs(
    state: dict[str, object], tmp: Path, rng: np.random.Generator
) -> dict[str, tuple[dict[str, object], str]]:
    """Each case of the statewide table in docs/errors.md: (ingest settings, the error)."""
    out = state["out"]
    tiles = list(out.tiles)  # type: ignore[attr-defined]
    plain = tmp / "nocrs.tif"
    with rasterio.open(
        plain,
        "w",
        driver="GTiff",
        width=8,
        height=8,
        count=1,
        dtype="uint16",
        transform=rasterio.Affine(10, 0, 0, 0, -10, 0),
    ) as dst:
        dst.write(np.ones((1, 8, 8), "uint16"))
    four = write_tif(tmp / "four.tif", rng.integers(1, 9, (4, 8, 8)).astype("uint16"))
    flat = {
        "type": "Polygon",
        "coordinates": [[[-106, 28], [-105, 28], [-105, 28], [-106, 28]]],
    }
    line = {"type": "LineString", "coordinates": [[300000, 3499000], [300500, 3499500]]}
    item = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": "tile-0",
        "geometry": None,
        "properties": {"datetime": "2024-06-01T17:00:00Z"},
        "links": [],
        "assets": {"B04": {"href": tiles[0], "type": "image/tiff; application=geotiff"}},
    }
    stac = tmp / "items.json"
    stac.write_text(json.dumps({"type": "FeatureCollection", "features": [item]}))
    labels = out.vector_labels  # type: ignore[attr-defined]
    return {
        "tiles-miss-aoi": (
            {"tiles": tiles[:2]},
            r"do not cover .* of the area to map \(for example around lon",
        ),
        "tile-no-crs": ({"tiles": [str(plain)]}, r"tile .*nocrs.tif has no CRS; assign one"),
        "tiles-differ": ({"tiles": [tiles[0], str(four)]}, "has 4 bands but tile"),
        "aoi-no-crs": (
            {"aoi": _no_crs_shapefile(tmp / "nocrs.shp")},
            r"AOI file .* has no CRS; assign one \(e.g. `ogr2ogr -a_srs",
        ),
        "aoi-empty": (
            {"aoi": _vector(tmp / "flat.geojson", flat, "EPSG:4326")},
            r"AOI file .* covers no area; check the file and its CRS",
        ),
        "aoi-where-none": ({"aoi_where": "fid = 99"}, "AOI file .* has no feature matching"),
        "stac-no-asset": (
            {"tiles": [str(stac)], "bands": "nir"},
            r"STAC Item tile-0 in .* has no asset 'nir'.*assets are: B04",
        ),
        "no-label-field": (
            {"label": labels, "label_field": "klass"},
            "has no field 'klass'; its fields are: class",
        ),
        "label-lines": (
            {
                "label": _vector(tmp / "lines.geojson", line, "EPSG:32613", **{"class": 1}),
                "label_field": "class",
            },
            "holds LineString features; labels are polygons",
        ),
    }


BAD_TILE_INPUTS = [
    "tiles-miss-aoi",
    "tile-no-crs",
    "tiles-differ",
    "aoi-no-crs",
    "aoi-empty",
    "aoi-where-none",
    "stac-no-asset",
    "no-label-field",
    "label-lines",
    "no-target-grid",
]


def test_the_errors_table_lists_every_statewide_case() -> None:
    table = (Path(__file__).parents[1] / "docs" / "errors.md").read_text()
    section = table.split("## Statewide inputs", 1)[1].split("\n## ", 1)[0]
    ids = [line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| ")]
    assert ids[1:] == BAD_TILE_INPUTS


@pytest.mark.parametrize("case", BAD_TILE_INPUTS)
def test_bad_tile_input_gets_one_clear_error(
    case: str, state: dict[str, object], tmp_path: Path, rng: np.random.Generator
) -> None:
    out = tmp_path / "scene.zarr"
    if case == "no-target-grid":
        with pytest.raises(ConfigError, match="give its crs and resolution"):
            IngestConfig.from_dict(
                {"tiles": list(state["out"].tiles), "output": str(out), "aoi": "a.gpkg"}  # type: ignore[attr-defined]
            )
        return
    settings, expected = _bad_tile_inputs(state, tmp_path, rng)[case]
    with pytest.raises(InputError, match=expected) as err:
        run(state, tmp_path, **settings)
    assert "\n" not in str(err.value)
    assert not out.exists() and not list(tmp_path.glob(".scene.zarr*"))


def test_tiles_and_a_stac_collection_on_object_storage(
    state: dict[str, object], tmp_path: Path, s3_bucket: str
) -> None:
    from w2w.core import storage

    out = state["out"]
    tiles = list(out.tiles)  # type: ignore[attr-defined]
    features = []
    for k, path in enumerate(tiles):
        storage.atomic_put_file(path, f"{s3_bucket}/tiles/{Path(path).name}")
        features.append(
            {
                "type": "Feature",
                "stac_version": "1.1.0",
                "id": f"t{k}",
                "geometry": None,
                "properties": {"datetime": "2024-05-01T00:00:00Z"},
                "links": [],
                "assets": {
                    "image": {
                        "href": f"{s3_bucket}/tiles/{Path(path).name}",
                        "type": "image/tiff; application=geotiff",
                    }
                },
            }
        )
    storage.atomic_write_bytes(
        f"{s3_bucket}/items.json",
        json.dumps({"type": "FeatureCollection", "features": features}).encode(),
    )
    bounds = middle(state, tmp_path)
    from_s3 = run(
        state,
        tmp_path / "s3",
        tiles=[f"{s3_bucket}/items.json"],
        bands="image",
        aoi=None,
        bounds=bounds,
        resampling="nearest",
    )
    local = run(state, tmp_path / "local", aoi=None, bounds=bounds, resampling="nearest")
    a, b = (s.read_image(s.grid.full_window) for s in (from_s3, local))
    np.testing.assert_array_equal(a[0], b[0])  # the STAC asset is the files' first band
