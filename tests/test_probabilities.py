"""Per-class probabilities: predicted with ``--probabilities``, kept by the sieve, exported
as a multi-band COG with a mask, named bands and a 1/255 scale."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
from rio_cogeo.cogeo import cog_validate

from w2w.core.classes import CLASS_NODATA
from w2w.core.errors import InputError
from w2w.core.store import MosaicStore
from w2w.export import ExportConfig, export
from w2w.predict import PredictConfig, predict
from w2w.sieve import SieveConfig, sieve


def test_probabilities_from_predict_to_a_multiband_cog(
    tiny_run, synthetic_scene: str, tmp_path: Path
) -> None:
    bundle = tiny_run[1].bundle
    url = str(tmp_path / "mosaic.zarr")
    predict(
        PredictConfig(
            scene=synthetic_scene, bundle=bundle, output=url, block=128, probabilities=True
        ),
        progress=False,
    )
    mosaic = MosaicStore.open(url)
    window = mosaic.grid.full_window
    classes, conf = mosaic.read_class(window), mosaic.read_confidence(window)
    probs = mosaic.read_probabilities(window)
    ids = np.array([c.id for c in mosaic.classes])
    valid = classes != CLASS_NODATA
    assert probs.shape == (len(ids), *classes.shape)
    # The class is the most probable one (up to rounding ties), its probability the confidence.
    top = probs.max(axis=0)
    assert np.abs(top[valid].astype(int) - conf[valid].astype(int)).max() <= 1
    agree = ids[probs.argmax(axis=0)] == classes
    assert agree[valid].mean() > 0.99
    assert np.abs(probs[:, valid].astype(int).sum(axis=0) - 255).max() <= len(ids)
    assert (probs[:, ~valid] == 0).all()
    # CF decoding by plain xarray: floats in [0, 1].
    ds = xr.open_zarr(url)
    decoded = ds["probabilities"].values
    np.testing.assert_allclose(decoded, probs / 255, atol=1e-6)

    sieved = str(tmp_path / "mmu.zarr")
    sieve(SieveConfig(input=url, output=sieved, min_pixels=4), progress=False)
    np.testing.assert_array_equal(MosaicStore.open(sieved).read_probabilities(window), probs)

    out = tmp_path / "map.tif"
    result = export(
        ExportConfig(input=sieved, output=str(out), blocksize=128, probabilities=True),
        progress=False,
    )
    cog = tmp_path / "map_probabilities.tif"
    valid_cog, errors, _ = cog_validate(str(cog))
    assert valid_cog and not errors, errors
    with rasterio.open(cog) as ds_:
        assert ds_.count == len(ids) and ds_.nodata is None
        np.testing.assert_array_equal(ds_.read(), probs)
        sieved_cls = MosaicStore.open(sieved).read_class(window)
        np.testing.assert_array_equal(ds_.dataset_mask() > 0, sieved_cls != CLASS_NODATA)
        assert ds_.scales == (1 / 255,) * len(ids)
        assert all(c.name in d for c, d in zip(mosaic.classes, ds_.descriptions, strict=True))
        assert ds_.overviews(1)
    item = json.loads(Path(result.stac).read_text())
    asset = item["assets"]["probabilities"]
    assert asset["href"] == "./map_probabilities.tif"
    assert len(asset["bands"]) == len(ids) and asset["file:size"] == cog.stat().st_size


def test_export_of_probabilities_needs_them_in_the_mosaic(tmp_path: Path) -> None:
    from tests.test_export import make_mosaic

    cls = np.ones((40, 40), np.uint8)
    url = str(tmp_path / "m.zarr")
    make_mosaic(url, cls, np.full_like(cls, 200))
    with pytest.raises(InputError, match="no probabilities; predict it with --probabilities"):
        export(
            ExportConfig(input=url, output=str(tmp_path / "a.tif"), probabilities=True),
            progress=False,
        )
    assert not (tmp_path / "a.tif").exists()
