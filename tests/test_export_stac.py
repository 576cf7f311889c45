"""The export's STAC Items as a catalogue takes them: valid offline, WKT2, dates of the
imagery, a counter-clockwise footprint of the valid pixels (split at the antimeridian),
links and hrefs relative to the Item, and the model as an MLM Item."""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import pytest
import rasterio.features
import shapely
from affine import Affine
from pyproj import CRS, Transformer
from shapely.geometry import shape

from tests.test_export import CLASSES, PROVENANCE, make_mosaic
from w2w.core.grid import Grid, Window
from w2w.core.store import MosaicStore
from w2w.export import ExportConfig, export, footprint
from w2w.export.stac_schemas import EXTENSIONS, validator


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a network connection fails the test (schemas must be local)."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"network access attempted: {args[:2]}")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def irregular_map(h: int, w: int) -> np.ndarray:
    """Classes inside a disk with a hole and a notch; nodata elsewhere (outside the state)."""
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot(yy - h / 2, xx - w / 2)
    cls = np.where(r < min(h, w) * 0.45, 1 + (xx // 17 + yy // 23) % 6, 255).astype("uint8")
    cls[(r < 9)] = 255  # a hole of no data
    cls[h // 2 - 3 : h // 2 + 3, : w // 2] = 255  # a notch one block deep
    return cls


def with_provenance(tmp_path: Path, cls: np.ndarray, provenance: dict[str, Any]) -> str:
    url = str(tmp_path / "mosaic.zarr")
    make_mosaic(url, cls, np.where(cls == 255, 0, 200).astype("uint8"), block=32)
    store = MosaicStore.open(url, mode="r+")
    store.update_meta(provenance=provenance)
    store.finalize()
    return url


def read_item(path: str) -> pystac.Item:
    """The Item as written (pystac's reader would migrate its extension versions)."""
    item = pystac.Item.from_dict(json.loads(Path(path).read_text()), migrate=False)
    item.set_self_href(path)
    return item


def to_grid_crs(geometry: dict[str, Any], grid: Grid) -> shapely.Geometry:
    to_map = Transformer.from_crs("EPSG:4326", grid.crs_wkt, always_xy=True)
    return shapely.transform(shape(geometry), lambda xy: np.column_stack(to_map.transform(*xy.T)))


def valid_area(cls: np.ndarray, transform: Affine) -> shapely.Geometry:
    """The union of the valid pixels' squares, by GDAL's polygonize of the whole mask."""
    valid = cls != 255
    pieces = [
        shape(g)
        for g, _ in rasterio.features.shapes(valid.astype("uint8"), mask=valid, transform=transform)
    ]
    return shapely.union_all(pieces)


def test_item_validates_offline_with_wkt2_and_a_tight_ccw_footprint(
    tmp_path: Path, no_network: None
) -> None:
    cls = irregular_map(150, 170)
    url = with_provenance(tmp_path, cls, {**PROVENANCE, "imagery_datetime": None})
    result = export(
        ExportConfig(
            input=url, output=str(tmp_path / "map.tif"), blocksize=64, datetime="2024-06-30"
        ),
        progress=False,
    )
    item = read_item(result.stac)
    assert item.validate(validator=validator())  # core + every declared extension, offline
    assert set(item.stac_extensions) == {
        EXTENSIONS[e] for e in ("projection", "classification", "raster", "file", "processing")
    }
    wkt = item.properties["proj:wkt2"]
    assert wkt.startswith("PROJCRS[") and CRS.from_wkt(wkt) == CRS.from_epsg(32613)

    grid = MosaicStore.open(url).grid
    footprint = shape(item.geometry)
    assert footprint.geom_type == "Polygon"
    assert shapely.is_ccw(footprint.exterior)
    assert all(not shapely.is_ccw(ring) for ring in footprint.interiors)  # the hole is kept
    mapped = to_grid_crs(item.geometry, grid)
    valid = valid_area(cls, grid.transform)
    pixel = grid.res[0]
    assert mapped.buffer(0.01).covers(valid)  # every valid pixel (reprojection: < 1 cm)
    assert valid.buffer(pixel + 0.01, join_style="mitre").covers(mapped)  # <= 1 px more
    assert mapped.area < valid.area * 1.1
    assert len(shapely.get_coordinates(footprint)) < 0.9 * len(shapely.get_coordinates(valid))
    lon, lat = shapely.get_coordinates(footprint).T
    assert item.bbox == pytest.approx([lon.min(), lat.min(), lon.max(), lat.max()], abs=1e-7)


@pytest.mark.parametrize("tile", [7, 16, 1000])
def test_footprint_pieces_are_gdals_outline_of_the_valid_pixels_whatever_the_tiling(
    monkeypatch: pytest.MonkeyPatch, tile: int
) -> None:
    # Windows split into tiles (only those the border crosses are polygonized) give exactly
    # the union GDAL's polygonize gives for the whole mask, holes and notches included.
    monkeypatch.setattr(footprint, "TILE", tile)
    cls = irregular_map(101, 93)
    builder = footprint.FootprintBuilder()
    for row in range(0, 101, 50):
        for col in range(0, 93, 40):
            window = Window(row, col, min(50, 101 - row), min(40, 93 - col))
            builder.add(window, cls[window.slices] != 255)
    union = shapely.union_all(builder._pieces)
    expected = valid_area(cls, Affine.identity())
    assert union.symmetric_difference(expected).area == 0
    assert union.area == int((cls != 255).sum())


def test_links_and_hrefs_resolve_relative_to_the_item(tmp_path: Path) -> None:
    cls = irregular_map(90, 90)
    out = tmp_path / "maps"
    provenance = {
        **PROVENANCE,
        "scene": str(tmp_path / "scene.zarr"),
        "input_provenance": {"scene": str(tmp_path / "data" / "scene.zarr")},
    }
    url = with_provenance(tmp_path, cls, provenance)
    result = export(
        ExportConfig(input=url, output=str(out / "map.tif"), blocksize=64, datetime="2024-06-30"),
        progress=False,
    )
    raw = json.loads(Path(result.stac).read_text())
    links = {ln["rel"]: ln["href"] for ln in raw["links"]}
    assert links["self"] == str(out / "map.json")
    assert links["derived_from"] == "../mosaic.zarr"
    props = raw["properties"]
    assert props["w2w:provenance"]["scene"] == "../scene.zarr"
    assert props["w2w:provenance"]["input_provenance"]["scene"] == "../data/scene.zarr"
    assert props["w2w:provenance"]["bundle"] == PROVENANCE["bundle"]  # not a path: as it is
    for asset in raw["assets"].values():
        assert not os.path.isabs(asset["href"])
        assert (out / asset["href"]).exists(), asset["href"]
    assert (out / links["derived_from"]).resolve() == Path(url).resolve()
    # pystac resolves them the same way, from the Item's own location.
    item = read_item(result.stac)
    assert Path(item.assets["classes"].get_absolute_href() or "") == Path(result.cog)


@pytest.mark.parametrize(
    ("span", "expected"),
    [
        (
            {"start": "2024-06-28T17:41:00Z", "end": "2024-06-30T17:29:00Z"},
            {
                "datetime": None,
                "start_datetime": "2024-06-28T17:41:00Z",
                "end_datetime": "2024-06-30T17:29:00Z",
            },
        ),
        (
            {"start": "2024-06-30T17:29:00Z", "end": "2024-06-30T17:29:00Z"},
            {"datetime": "2024-06-30T17:29:00Z"},
        ),
    ],
)
def test_datetime_is_the_imagerys(tmp_path: Path, span: dict, expected: dict) -> None:
    """Dates recorded by ingest (here in a sieved mosaic's input provenance) become the
    Item's; ``--datetime`` overrides them."""
    cls = irregular_map(64, 64)
    url = with_provenance(tmp_path, cls, {"input_provenance": {"imagery_datetime": span}})
    result = export(ExportConfig(input=url, output=str(tmp_path / "a.tif")), progress=False)
    props = json.loads(Path(result.stac).read_text())["properties"]
    assert {k: props.get(k) for k in expected} == expected
    assert props["w2w:datetime_source"] == "imagery"
    chosen = export(
        ExportConfig(input=url, output=str(tmp_path / "b.tif"), datetime="2023-01-05"),
        progress=False,
    )
    props = json.loads(Path(chosen.stac).read_text())["properties"]
    assert props["datetime"] == "2023-01-05T00:00:00Z" and "start_datetime" not in props


def test_unknown_date_is_said_not_guessed_silently(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = with_provenance(tmp_path, irregular_map(64, 64), PROVENANCE)
    with caplog.at_level(logging.WARNING, logger="w2w"):
        result = export(ExportConfig(input=url, output=str(tmp_path / "a.tif")), progress=False)
    assert "pass --datetime" in caplog.text
    props = json.loads(Path(result.stac).read_text())["properties"]
    assert props["w2w:datetime_source"].startswith("export time")


def test_footprint_is_split_at_the_antimeridian(tmp_path: Path, no_network: None) -> None:
    """A state on UTM zone 60N that reaches past 180 degrees east."""
    crs = CRS.from_epsg(32660)
    to_map = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    x0, y0 = to_map.transform(179.0, 65.5)
    res = 1000.0
    grid = Grid(crs.to_wkt(), Affine(res, 0, round(x0), 0, -res, round(y0)), 90, 120)
    cls = np.full((grid.height, grid.width), 3, dtype="uint8")
    url = str(tmp_path / "mosaic.zarr")
    store = MosaicStore.create(
        url, grid, block=32, classes=CLASSES, provenance=PROVENANCE, with_confidence=False
    )
    for w in grid.blocks(store.block).windows():
        store.write("class", w, cls[w.slices])
        store.mark_block_done(w)
    store.mark_complete()
    result = export(
        ExportConfig(
            input=url, output=str(tmp_path / "m.tif"), confidence="none", datetime="2024-06-30"
        ),
        progress=False,
    )
    item = read_item(result.stac)
    assert item.validate(validator=validator())
    geom = shape(item.geometry)
    assert geom.geom_type == "MultiPolygon" and len(geom.geoms) == 2
    assert all(shapely.is_ccw(p.exterior) for p in geom.geoms)
    west, _, east, _ = item.bbox
    assert west > 0 > east  # the antimeridian convention: west edge east of the east edge
    lons = shapely.get_coordinates(geom)[:, 0]
    assert lons.min() >= -180 and lons.max() <= 180
    assert 180.0 in lons and -180.0 in lons


def make_bundle(url: str) -> Any:
    import torch

    from w2w.model.bundle import Bundle, save_bundle
    from w2w.model.models import ModelSpec
    from w2w.model.normalization import Normalizer

    bands = ("blue", "green", "red", "nir")
    bundle = Bundle(
        spec=ModelSpec("Unet", "resnet18", len(bands), len(CLASSES)),
        bands=bands,
        normalizer=Normalizer("percentile", (1.0,) * 4, (9.0,) * 4, (1.0, 2, 3, 4), (10.0,) * 4),
        chip_size=64,
        classes=tuple(CLASSES),
    )
    return save_bundle(url, bundle, {"w": torch.zeros(3, 5), "b": torch.zeros(7)})


def test_model_item_describes_the_bundle_with_mlm(tmp_path: Path, no_network: None) -> None:
    bundle = make_bundle(str(tmp_path / "models" / "model.safetensors"))
    provenance = {
        "bundle": str(tmp_path / "models" / "model.safetensors"),
        "bundle_hash": bundle.content_hash,
        "predict_config": {"batch_size": 16},
    }
    url = with_provenance(tmp_path, irregular_map(64, 64), {"input_provenance": provenance})
    out = tmp_path / "out"
    result = export(
        ExportConfig(input=url, output=str(out / "map.tif"), datetime="2024-06-30"),
        progress=False,
    )
    links = json.loads(Path(result.stac).read_text())["links"]
    assert {"rel": "derived_from", "href": "./map_model.json"}.items() <= {
        k: v for ln in links if ln["href"].endswith("_model.json") for k, v in ln.items()
    }.items()
    model = read_item(str(out / "map_model.json"))
    assert model.validate(validator=validator())  # the MLM schema, offline
    props = model.properties
    assert props["mlm:architecture"] == "Unet" and props["mlm:framework"] == "pytorch"
    assert props["mlm:tasks"] == ["semantic-segmentation"]
    assert props["mlm:total_parameters"] == 15 + 7
    assert props["mlm:batch_size_suggestion"] == 16
    (inp,) = props["mlm:input"]
    assert inp["bands"] == ["blue", "green", "red", "nir"]
    assert inp["input"]["shape"] == [-1, 4, 64, 64]
    assert [s["minimum"] for s in inp["value_scaling"]] == [1.0, 2.0, 3.0, 4.0]
    (output,) = props["mlm:output"]
    assert output["result"]["shape"] == [-1, len(CLASSES), 64, 64]
    assert [c["value"] for c in output["classification:classes"]] == list(range(len(CLASSES)))
    weights = model.assets["weights"]
    assert "mlm:model" in (weights.roles or []) and weights.href == "../models/model.safetensors"
    assert Path(weights.get_absolute_href() or "").resolve() == (
        tmp_path / "models" / "model.safetensors"
    )


def test_no_model_item_when_the_bundle_is_not_the_one_that_made_the_map(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_bundle(str(tmp_path / "model.safetensors"))
    provenance = {"bundle": str(tmp_path / "model.safetensors"), "bundle_hash": "sha256:other"}
    url = with_provenance(tmp_path, irregular_map(64, 64), provenance)
    with caplog.at_level(logging.WARNING, logger="w2w"):
        result = export(
            ExportConfig(input=url, output=str(tmp_path / "map.tif"), datetime="2024-06-30"),
            progress=False,
        )
    assert "is not the one that made the map" in caplog.text
    assert not (tmp_path / "map_model.json").exists()
    links = json.loads(Path(result.stac).read_text())["links"]
    assert [ln["rel"] for ln in links] == ["self", "derived_from"]
