"""Prediction: seamless and split-invariant, resumable, nodata kept, bundles checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from w2w.core.classes import CLASS_NODATA
from w2w.core.errors import BundleError, ConfigError, OutputError
from w2w.core.grid import Window
from w2w.core.store import MosaicStore, SceneStore
from w2w.predict import PredictConfig, predict
from w2w.predict.plan import BlockPlan, blend_weights


def run(scene: str, bundle: str, out: Path, **kw: object) -> MosaicStore:
    predict(PredictConfig(scene=scene, bundle=bundle, output=str(out), **kw), progress=False)
    return MosaicStore.open(str(out))


def full(m: MosaicStore, name: str = "class") -> np.ndarray:
    return m.read(name, m.grid.full_window, CLASS_NODATA if name == "class" else 0)


def test_mosaic_is_identical_for_any_block_size(
    tiny_run, synthetic_scene: str, tmp_path: Path
) -> None:
    bundle = tiny_run[1].bundle
    small = run(synthetic_scene, bundle, tmp_path / "b128.zarr", block=128)
    whole = run(synthetic_scene, bundle, tmp_path / "b384.zarr", block=384, actors=1)
    assert small.block_grid_shape == (3, 3) and whole.block_grid_shape == (1, 1)
    np.testing.assert_array_equal(full(small), full(whole))
    np.testing.assert_array_equal(full(small, "confidence"), full(whole, "confidence"))
    assert small.meta["complete"] and small.done_blocks().all()


def test_every_valid_pixel_is_mapped_and_nodata_stays_nodata(
    tiny_run, synthetic_scene: str, tmp_path: Path
) -> None:
    _cfg, report = tiny_run
    mosaic = run(synthetic_scene, report.bundle, tmp_path / "m.zarr", block=128)
    scene = SceneStore.open(synthetic_scene)
    image = scene.read_image(scene.grid.full_window)
    valid = scene.valid_mask(image)
    classes, conf = full(mosaic), full(mosaic, "confidence")
    ids = {c.id for c in mosaic.classes}
    assert set(np.unique(classes[valid]).tolist()) <= ids  # no hole inside the state
    assert (classes[~valid] == CLASS_NODATA).all() and (conf[~valid] == 0).all()
    assert conf[valid].min() >= 255 // len(ids)  # top class of K has probability >= 1/K
    # The map agrees with the synthetic truth far better than chance (6 classes).
    labels = scene.read_label(scene.grid.full_window)
    assert (classes[valid] == labels[valid]).mean() > 0.5
    assert mosaic.grid == scene.grid and mosaic.meta["provenance"]["bundle_hash"].startswith(
        "sha256:"
    )


def test_interrupted_prediction_resumes_to_the_same_mosaic(
    tiny_run, synthetic_scene: str, tmp_path: Path
) -> None:
    bundle = tiny_run[1].bundle
    clean = run(synthetic_scene, bundle, tmp_path / "clean.zarr", block=128)
    out = tmp_path / "partial.zarr"
    first = predict(
        PredictConfig(
            scene=synthetic_scene, bundle=bundle, output=str(out), block=128, max_blocks=4
        ),
        progress=False,
    )
    assert first.blocks_written == 4
    assert 0 < first.first_block_seconds <= first.last_block_seconds <= first.seconds
    partial = MosaicStore.open(str(out))
    assert int(partial.done_blocks().sum()) == 4 and not partial.meta["complete"]
    second = predict(
        PredictConfig(scene=synthetic_scene, bundle=bundle, output=str(out), block=128),
        progress=False,
    )
    assert second.blocks_done_before == 4 and second.blocks_written == 5  # none written twice
    np.testing.assert_array_equal(full(MosaicStore.open(str(out))), full(clean))
    again = predict(
        PredictConfig(scene=synthetic_scene, bundle=bundle, output=str(out), block=128),
        progress=False,
    )
    assert again.blocks_written == 0 and again.blocks_done_before == 9
    assert again.first_block_seconds is None and again.last_block_seconds is None


def test_existing_mosaic_from_other_settings_is_refused(
    tiny_run, synthetic_scene: str, tmp_path: Path
) -> None:
    bundle = tiny_run[1].bundle
    out = tmp_path / "m.zarr"
    predict(
        PredictConfig(
            scene=synthetic_scene, bundle=bundle, output=str(out), block=128, max_blocks=1
        ),
        progress=False,
    )
    with pytest.raises(OutputError, match="another model, scene or settings; pass --overwrite"):
        predict(
            PredictConfig(scene=synthetic_scene, bundle=bundle, output=str(out), block=256),
            progress=False,
        )
    redone = predict(
        PredictConfig(
            scene=synthetic_scene, bundle=bundle, output=str(out), block=256, overwrite=True
        ),
        progress=False,
    )
    assert redone.blocks_done_before == 0


def test_scene_with_other_bands_is_refused_before_any_work(
    tiny_run, tmp_path: Path, rng: np.random.Generator
) -> None:
    from tests.conftest import write_tif
    from w2w.ingest import IngestConfig, ingest

    img = write_tif(tmp_path / "i.tif", rng.integers(1, 100, (4, 64, 64)).astype("uint16"))
    ingest(
        IngestConfig(
            images=[str(img)],
            output=str(tmp_path / "s.zarr"),
            engine="local",
            band_names=["B02", "B03", "B04", "B08"],
        ),
        progress=False,
    )
    with pytest.raises(BundleError) as err:
        predict(
            PredictConfig(
                scene=str(tmp_path / "s.zarr"),
                bundle=tiny_run[1].bundle,
                output=str(tmp_path / "m.zarr"),
            ),
            progress=False,
        )
    text = str(err.value)
    assert "[B02, B03, B04, B08] (4)" in text and "[B02, B03, B04, B08, B11, B12] (6)" in text
    assert not (tmp_path / "m.zarr").exists()


def test_block_must_be_a_multiple_of_the_stride(
    tiny_run, synthetic_scene: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="multiple of the chip stride"):
        predict(
            PredictConfig(
                scene=synthetic_scene,
                bundle=tiny_run[1].bundle,
                output=str(tmp_path / "m.zarr"),
                block=100,
            ),
            progress=False,
        )


def test_chunk_ownership_check_catches_unaligned_blocks() -> None:
    from w2w.ingest.synth import SynthConfig

    grid = SynthConfig(output="u", height=300, width=300).grid
    grid.blocks(128).check_one_writer((128, 128), what="the mosaic's")
    with pytest.raises(ConfigError, match="not aligned to the mosaic's 128 x 128 write units"):
        grid.blocks(96).check_one_writer((128, 128), what="the mosaic's")
    with pytest.raises(ConfigError, match="not aligned"):
        grid.blocks(192).check_one_writer((128, 128), what="the mosaic's")
    grid.blocks(256).check_one_writer((128, 128), what="the mosaic's")  # whole chunks
    with pytest.raises(ConfigError, match="writers, not one"):
        grid.blocks(128).check_one_writer(
            (128, 128), grid.blocks(128).windows()[:-1], what="the mosaic's"
        )


def test_block_plan_reads_every_global_chip_that_touches_a_block() -> None:
    plan = BlockPlan(height=300, width=250, block=128, chip=64, stride=32)
    block = Window(128, 128, 128, 122)
    win = plan.window(block)
    assert win.height == win.width == plan.window_size
    for chip in plan.chips(block):
        assert win.contains(chip)  # every chip lies inside the read window
        assert chip.row % 32 == 0 and chip.col % 32 == 0  # anchored on the scene
    w = blend_weights(64)
    assert w.min() > 0 and w[32, 32] == w.max()
