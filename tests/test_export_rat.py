"""Class names where GIS tools look: the PAM sidecar read by GDAL itself (gdalinfo's
``Categories``, the default RAT through GDAL's C API), and the SLD style."""

from __future__ import annotations

import hashlib
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pystac
import pytest
from rio_cogeo.cogeo import cog_validate

from tests import gdal_c
from w2w.core.classes import ClassInfo
from w2w.core.grid import Grid
from w2w.core.store import MosaicStore
from w2w.export import ExportConfig, export, export_targets
from w2w.export.pam import sidecar_asset
from w2w.export.styles import sld_asset
from w2w.ingest.synth import SynthConfig

#: Ids with gaps (0, 3, 5 and 6 unused), a non-ASCII name and XML's special characters.
CLASSES = [
    ClassInfo(1, "Bosque de pino–encino", (34, 110, 42)),
    ClassInfo(2, "grass & <shrubs>", (150, 205, 90)),
    ClassInfo(4, "water", (40, 100, 220)),
    ClassInfo(7, "urban", (210, 40, 40)),
]
SLD = "{http://www.opengis.net/sld}"


def _grid(h: int, w: int) -> Grid:
    return SynthConfig(output="unused", height=h, width=w).grid


def _mosaic(url: str, classes: np.ndarray, confidence: np.ndarray) -> None:
    grid = _grid(*classes.shape)
    store = MosaicStore.create(url, grid, block=32, classes=CLASSES)
    for w in grid.blocks(store.block).windows():
        store.write("class", w, classes[w.slices])
        store.write("confidence", w, confidence[w.slices])
        store.mark_block_done(w)
    store.mark_complete()


@pytest.fixture
def mosaic(tmp_path: Path, rng: np.random.Generator) -> tuple[str, np.ndarray]:
    ids = np.array([c.id for c in CLASSES], dtype="uint8")
    cls = rng.choice(ids, size=(70, 90), p=[0.5, 0.3, 0.15, 0.05]).astype("uint8")
    cls[:5, :9] = 255  # outside the state
    conf = rng.integers(2, 256, size=cls.shape).astype("uint8")
    conf[cls == 255] = 0
    url = str(tmp_path / "mosaic.zarr")
    _mosaic(url, cls, conf)
    return url, cls


def _check_gdal_sees_the_classes(cog: str, cls: np.ndarray) -> None:
    """gdalinfo lists every class under Categories; the default RAT has one row per class
    with its value, name, colour and pixel count (counted here with numpy)."""
    info = gdal_c.gdalinfo(cog)
    assert "Categories:" in info, info
    categories = info[info.index("Categories:") :]
    for c in CLASSES:
        assert f"{c.id}: {c.name}" in categories, (c, categories)
    expected = [""] * (max(c.id for c in CLASSES) + 1)
    for c in CLASSES:
        expected[c.id] = c.name
    assert gdal_c.category_names(cog) == expected

    rat = gdal_c.raster_attribute_table(cog)
    assert rat is not None, "GDAL finds no raster attribute table"
    assert rat.thematic
    assert len(rat.rows) == len(CLASSES)
    names = [name for name, _, _ in rat.columns]
    assert names == ["Value", "Class_name", "Red", "Green", "Blue", "Alpha", "Count"]
    assert rat.column(gdal_c.GFU_MIN_MAX) == [c.id for c in CLASSES]
    assert rat.column(gdal_c.GFU_NAME) == [c.name for c in CLASSES]
    rgba = zip(
        *(rat.column(u) for u in (gdal_c.GFU_RED, gdal_c.GFU_GREEN, gdal_c.GFU_BLUE)),
        strict=True,
    )
    assert list(rgba) == [c.color for c in CLASSES]
    assert rat.column(gdal_c.GFU_ALPHA) == [255] * len(CLASSES)
    assert rat.column(gdal_c.GFU_PIXEL_COUNT) == [float((cls == c.id).sum()) for c in CLASSES]
    types = {name: kind for name, kind, _ in rat.columns}
    assert types["Class_name"] == gdal_c.GFT_STRING and types["Value"] == gdal_c.GFT_INTEGER


def test_gdal_reads_class_names_and_rat_from_the_sidecar(tmp_path: Path, mosaic) -> None:
    url, cls = mosaic
    cfg = ExportConfig(input=url, output=str(tmp_path / "out" / "map.tif"), blocksize=64)
    result = export(cfg, progress=False)
    targets = export_targets(cfg)
    assert targets.sidecar == f"{result.cog}.aux.xml" and Path(targets.sidecar).is_file()
    assert targets.sld == str(tmp_path / "out" / "map.sld") and Path(targets.sld).is_file()

    _check_gdal_sees_the_classes(result.cog, cls)
    valid, errors, warnings = cog_validate(result.cog)
    assert valid and not errors, (errors, warnings)
    # The COG is the file that was validated and described: the sidecar did not touch it.
    item = json.loads(Path(result.stac).read_text())
    digest = hashlib.sha256(Path(result.cog).read_bytes()).hexdigest()
    assert item["assets"]["classes"]["file:checksum"] == "1220" + digest
    # The confidence COG has no classes: no sidecar, no RAT, no categories.
    assert result.confidence is not None
    assert not Path(f"{result.confidence}.aux.xml").exists()
    assert gdal_c.raster_attribute_table(result.confidence) is None
    assert gdal_c.category_names(result.confidence) == []


def test_confidence_band_mode_describes_band_1_only(tmp_path: Path, mosaic) -> None:
    url, cls = mosaic
    cfg = ExportConfig(input=url, output=str(tmp_path / "map.tif"), blocksize=64, confidence="band")
    result = export(cfg, progress=False)
    _check_gdal_sees_the_classes(result.cog, cls)
    assert gdal_c.raster_attribute_table(result.cog, band=2) is None
    assert gdal_c.category_names(result.cog, band=2) == []
    assert cog_validate(result.cog)[0]
    bands = ET.parse(f"{result.cog}.aux.xml").getroot().findall("PAMRasterBand")
    assert [b.get("band") for b in bands] == ["1"]


def test_sld_has_one_entry_per_class_in_the_class_colours(tmp_path: Path, mosaic) -> None:
    url, _ = mosaic
    cfg = ExportConfig(input=url, output=str(tmp_path / "landcover.tif"), blocksize=64)
    export(cfg, progress=False)
    root = ET.parse(export_targets(cfg).sld).getroot()

    assert root.tag == f"{SLD}StyledLayerDescriptor" and root.get("version") == "1.0.0"
    layer = root.find(f"{SLD}NamedLayer")
    assert layer is not None and layer.findtext(f"{SLD}Name") == "landcover"
    path = "/".join(
        f"{SLD}{tag}"
        for tag in ("UserStyle", "FeatureTypeStyle", "Rule", "RasterSymbolizer", "ColorMap")
    )
    colormaps = layer.findall(path)
    assert len(colormaps) == 1 and colormaps[0].get("type") == "values"
    entries = list(colormaps[0])
    assert {e.tag for e in entries} == {f"{SLD}ColorMapEntry"}
    got = [(int(e.get("quantity", "")), e.get("color"), e.get("label")) for e in entries]
    want = [(c.id, "#{:02X}{:02X}{:02X}".format(*c.color), c.name) for c in CLASSES]
    assert got == [*want, (255, "#000000", "No data")]
    assert [e.get("opacity") for e in entries] == [None] * len(CLASSES) + ["0"]


def test_stac_assets_of_the_sidecar_and_the_sld(tmp_path: Path, mosaic) -> None:
    """The asset entries stac.py adds: hrefs relative to the Item reach the files, and
    pystac reads them with their media types and roles."""
    url, _ = mosaic
    cfg = ExportConfig(input=url, output=str(tmp_path / "map.tif"), blocksize=64)
    result = export(cfg, progress=False)
    assets = {
        "classes_metadata": sidecar_asset("./map.tif.aux.xml"),
        "sld": sld_asset("./map.sld"),
    }
    item = pystac.Item.from_file(result.stac)
    for key, entry in assets.items():
        item.add_asset(key, pystac.Asset.from_dict(entry))
    sidecar, sld = item.assets["classes_metadata"], item.assets["sld"]
    assert sidecar.media_type == pystac.MediaType.XML and sidecar.roles == ["metadata"]
    assert sld.media_type == "application/vnd.ogc.sld+xml"
    assert sld.roles == ["metadata", "style"]
    for asset in (sidecar, sld):
        assert Path(asset.get_absolute_href() or "").resolve().is_file()
        assert asset.title
