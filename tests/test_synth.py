"""The synthetic state: every class present, streamable windows, context-dependent classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from w2w.core.grid import Window
from w2w.core.store import SceneStore
from w2w.ingest.synth import CLASSES, NODATA, SynthConfig, SynthReader, synthesize


def test_every_class_and_a_boundary_on_a_test_sized_state() -> None:
    cfg = SynthConfig(output="unused", height=512, width=512)
    image, cover = SynthReader(cfg)(cfg.grid.full_window)
    present = set(np.unique(cover).tolist())
    assert present == {0, *CLASSES}, present
    inside = (cover > 0).mean()
    assert 0.5 < inside < 0.9  # an irregular state, with nodata around it
    assert (image[:, cover == 0] == NODATA).all()
    assert (image[:, cover > 0] > 0).all()  # no valid pixel is mistaken for nodata
    # Each class is a few percent of the state at least, as a real state's rarer classes.
    fractions = np.bincount(cover[cover > 0], minlength=7)[1:] / (cover > 0).sum()
    assert fractions.min() > 0.01, fractions


def test_windows_are_independent_of_how_the_scene_is_cut() -> None:
    cfg = SynthConfig(output="unused", height=300, width=260, seed=3)
    whole_img, whole_cover = SynthReader(cfg)(cfg.grid.full_window)
    for w in cfg.grid.blocks(97, 61).windows():
        img, cover = SynthReader(cfg)(w)
        np.testing.assert_array_equal(img, whole_img[(..., *w.slices)])
        np.testing.assert_array_equal(cover, whole_cover[w.slices])


def test_seed_changes_the_state() -> None:
    a = SynthReader(SynthConfig(output="u", height=128, width=128, seed=1))(Window(0, 0, 128, 128))
    b = SynthReader(SynthConfig(output="u", height=128, width=128, seed=2))(Window(0, 0, 128, 128))
    assert not np.array_equal(a[1], b[1])


def test_urban_and_bare_soil_differ_only_in_texture() -> None:
    """Same spectra pixel by pixel; only the neighbourhood tells them apart."""
    cfg = SynthConfig(output="unused", height=1024, width=1024, seed=0)
    image, cover = SynthReader(cfg)(cfg.grid.full_window)
    nir = image[3].astype(float)
    urban, bare = cover == 5, cover == 6
    assert urban.sum() > 1000 and bare.sum() > 1000
    # Pixel-wise distributions match (mean and spread within a few percent).
    assert nir[urban].mean() == pytest.approx(nir[bare].mean(), rel=0.05)
    assert nir[urban].std() == pytest.approx(nir[bare].std(), rel=0.08)
    # Neighbouring pixels are correlated in towns (3 x 3 buildings), not on bare soil.
    both = cover[:, :-1] == cover[:, 1:]
    left, right = nir[:, :-1], nir[:, 1:]

    def neighbour_corr(mask: np.ndarray) -> float:
        m = both & mask[:, :-1]
        return float(np.corrcoef(left[m], right[m])[0, 1])

    assert neighbour_corr(urban) > 0.5
    assert abs(neighbour_corr(bare)) < 0.15


def test_geotiffs_and_store_hold_the_same_scene(tmp_path: Path, ray_session: None) -> None:
    base = {"height": 97, "width": 130, "seed": 5, "chunk": 32, "block": 64}
    tifs = synthesize(
        SynthConfig(output=str(tmp_path / "tif"), separate_bands=True, **base), progress=False
    )
    assert len(tifs.images) == 6 and tifs.label is not None
    store_out = synthesize(
        SynthConfig(output=str(tmp_path / "s.zarr"), format="store", **base), progress=False
    )
    store = SceneStore.open(str(store_out.store))
    full = store.grid.full_window
    for b, path in enumerate(tifs.images):
        with rasterio.open(path) as src:
            np.testing.assert_array_equal(src.read(1), store.read_image(full)[b])
            assert src.crs.to_epsg() == 32613 and src.transform == store.grid.transform
    with rasterio.open(tifs.label) as src:
        np.testing.assert_array_equal(src.read(1), store.read_label(full))
    assert store.info.classes, "the class table is recorded"
    for c in store.info.classes:
        assert c.name == CLASSES[c.id][0]


def test_synth_tiles_replace_an_earlier_set_whole(tmp_path: Path) -> None:
    """A smaller state over a larger one's folder: no tile of the earlier state stays (a glob
    of ``tiles/*.tif`` would mix the two), and the folder records what it holds."""
    import json

    from w2w.core.errors import OutputError
    from w2w.core.guard import check
    from w2w.core.outputs import FILESET_FILE

    def make(size: int, overwrite: bool) -> SynthConfig:
        cfg = SynthConfig(
            output=str(tmp_path / "state"),
            height=size,
            width=size,
            tiles=True,
            tile_size=64,
            tile_overlap=8,
            engine="local",
            overwrite=overwrite,
        )
        check(cfg)
        synthesize(cfg, progress=False)
        return cfg

    make(160, overwrite=False)
    tiles = tmp_path / "state" / "tiles"
    assert len(list(tiles.glob("*.tif"))) == 9
    small = make(96, overwrite=True)
    names = sorted(p.name for p in tiles.glob("*.tif"))
    assert len(names) == 4 and json.loads((tiles / FILESET_FILE).read_text())["tiles"] == names
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == [
        "boundary.gpkg",
        "image.tif",
        "labels.gpkg",
        "labels.tif",
        "tiles",
    ]
    (tiles / FILESET_FILE).unlink()  # a folder of someone else's tiles is not replaced
    with pytest.raises(OutputError, match="not written by w2w"):
        check(small)
