"""Nothing lost, nothing silently wrong: outputs replaced only when their replacement is
complete, outputs that are inputs refused, resume and provenance by content identity, and
missing or damaged chunks named, never read as nodata."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import write_tif
from w2w.core.classes import CLASS_NODATA
from w2w.core.errors import ConfigError, InputError, OutputError
from w2w.core.store import MosaicStore, SceneStore
from w2w.ingest import IngestConfig, SynthConfig, ingest, synthesize
from w2w.predict import PredictConfig, predict


def _full(url: str | Path, name: str = "class") -> np.ndarray:
    m = MosaicStore.open(str(url))
    return m.read(name, m.grid.full_window, CLASS_NODATA if name == "class" else 0)


def _scene(path: Path, seed: int) -> str:
    synthesize(
        SynthConfig(
            output=str(path),
            format="store",
            height=256,
            width=256,
            chunk=64,
            block=128,
            seed=seed,
            engine="local",
            overwrite=True,
        ),
        progress=False,
    )
    return str(path)


# -- outputs that are inputs, names that escape their folder ----------------------------------


@pytest.mark.parametrize(
    ("cls", "settings", "message"),
    [
        (
            "predict",
            {"scene": "s.zarr", "bundle": "m.safetensors", "output": "s.zarr"},
            "is the input scene store",
        ),
        (
            "predict",
            {"scene": "s.zarr", "bundle": "m.safetensors", "output": "s.zarr/x"},
            "lies inside the input scene",
        ),
        ("ingest", {"images": ["a.tif", "b.tif"], "output": "b.tif"}, "is the input image"),
        (
            "evaluate",
            {"mosaic": "m.zarr", "scene": "s.zarr", "output": "."},
            "holds the input mosaic",
        ),
        ("train", {"scene": "s.zarr", "storage_path": "s.zarr"}, "lies inside the input scene"),
        ("train", {"scene": "s.zarr", "run_name": ".."}, "names a folder"),
        ("train", {"scene": "s.zarr", "run_name": "."}, "names a folder"),
        ("train", {"scene": "s.zarr", "run_name": "a/b"}, "run_name"),
    ],
)
def test_outputs_that_are_inputs_and_escaping_names_are_refused(
    cls: str,
    settings: dict[str, object],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from w2w.stages import stage_named

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=message):
        stage_named(cls).config.from_dict(settings)


# -- replacing an output ------------------------------------------------------------------------


def test_predict_overwrite_keeps_the_old_mosaic_until_the_new_one_is_complete(
    tiny_run, synthetic_scene: str, tmp_path: Path
) -> None:
    bundle = tiny_run[1].bundle
    out = tmp_path / "m.zarr"
    predict(
        PredictConfig(scene=synthetic_scene, bundle=bundle, output=str(out), block=128),
        progress=False,
    )
    old = _full(out)
    # A run that stops early (as a failure would): the complete mosaic stays as it was.
    partial = predict(
        PredictConfig(
            scene=synthetic_scene,
            bundle=bundle,
            output=str(out),
            block=128,
            stride=64,
            overwrite=True,
            max_blocks=2,
        ),
        progress=False,
    )
    assert partial.output != str(out) and Path(partial.output).name.startswith(".m.zarr.w2w-new-")
    assert MosaicStore.open(str(out)).meta["complete"]
    np.testing.assert_array_equal(_full(out), old)
    # Running it again resumes the replacement and swaps it in when complete.
    done = predict(
        PredictConfig(
            scene=synthetic_scene,
            bundle=bundle,
            output=str(out),
            block=128,
            stride=64,
            overwrite=True,
        ),
        progress=False,
    )
    assert done.output == str(out) and done.blocks_done_before == 2
    assert MosaicStore.open(str(out)).provenance["stride"] == 64
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_replacement_left_half_built_goes_once_another_is_published(
    tiny_run, synthetic_scene: str, tmp_path: Path
) -> None:
    """An ``--overwrite`` run stopped part-way leaves its replacement beside the output, to
    resume; a later run with other settings that publishes its own leaves none behind."""
    bundle = tiny_run[1].bundle
    out = tmp_path / "m.zarr"
    settings = {"scene": synthetic_scene, "bundle": bundle, "output": str(out), "block": 128}
    predict(PredictConfig(**settings, stride=64), progress=False)
    partial = predict(
        PredictConfig(**settings, stride=32, overwrite=True, max_blocks=2), progress=False
    )
    assert Path(partial.output).exists()
    done = predict(PredictConfig(**settings, stride=64, overwrite=True), progress=False)
    assert done.output == str(out) and MosaicStore.open(str(out)).provenance["stride"] == 64
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_train_overwrite_puts_the_old_run_back_when_the_new_one_fails(tmp_path: Path) -> None:
    from w2w.core.outputs import set_aside
    from w2w.train.config import TrainConfig
    from w2w.train.plan import release_run

    cfg = TrainConfig(
        scene=str(tmp_path / "s.zarr"), storage_path=str(tmp_path / "runs"), run_name="r"
    )
    run = Path(cfg.run_dir)
    run.mkdir(parents=True)
    (run / "old.txt").write_text("old run")
    aside = set_aside(cfg.run_dir)
    run.mkdir()
    (run / "new.txt").write_text("half a new run")
    release_run(cfg, aside, succeeded=False)
    assert (run / "old.txt").read_text() == "old run" and not (run / "new.txt").exists()
    aside = set_aside(cfg.run_dir)
    release_run(cfg, aside, succeeded=True)
    assert not Path(aside).exists()


# -- resume and provenance by content -----------------------------------------------------------


def test_resume_compares_scene_content_not_its_path(tiny_run, tmp_path: Path) -> None:
    scene = _scene(tmp_path / "scene.zarr", seed=1)
    first = SceneStore.open(scene).identity
    bundle = tiny_run[1].bundle
    out = tmp_path / "m.zarr"
    predict(
        PredictConfig(scene=scene, bundle=bundle, output=str(out), block=64, max_blocks=3),
        progress=False,
    )
    _scene(tmp_path / "scene.zarr", seed=2)  # other imagery under the same path
    assert SceneStore.open(scene).identity not in (None, first)
    with pytest.raises(OutputError, match=r"another model, scene or settings.*scene: sha256:"):
        predict(
            PredictConfig(scene=scene, bundle=bundle, output=str(out), block=64), progress=False
        )
    _scene(tmp_path / "scene.zarr", seed=1)  # the same imagery again: the same identity
    assert SceneStore.open(scene).identity == first
    resumed = predict(
        PredictConfig(scene=scene, bundle=bundle, output=str(out), block=64), progress=False
    )
    assert resumed.blocks_done_before == 3


def test_training_does_not_resume_on_other_scene_content(tmp_path: Path) -> None:
    from tests.conftest import TINY_MODEL
    from w2w.train import TrainConfig, claim_run, prepare

    scene = _scene(tmp_path / "scene.zarr", seed=1)
    cfg = TrainConfig.from_dict(
        {
            "scene": scene,
            "run_name": "r",
            "storage_path": str(tmp_path / "runs"),
            "model": TINY_MODEL,
            "chips": {"size": 64},
            "split": {"block_chips": 1},
            "engine": "local",
        }
    )
    claim_run(cfg, prepare(cfg, progress=False))
    _scene(tmp_path / "scene.zarr", seed=2)
    with pytest.raises(ConfigError, match=r"other scene settings \(scene content sha256:"):
        claim_run(cfg, prepare(cfg, progress=False))


def test_evaluate_refuses_a_bundle_other_than_the_one_that_predicted(
    tiny_run, synthetic_scene: str, tmp_path: Path
) -> None:
    from w2w.evaluate import EvaluateConfig, evaluate
    from w2w.model.bundle import load_bundle, save_bundle

    bundle = load_bundle(tiny_run[1].bundle)
    other = tmp_path / "other.safetensors"
    save_bundle(
        str(other),
        bundle.__class__(**{**bundle.__dict__, "created": "2020-01-01T00:00:00"}),
        bundle.state,
    )
    out = tmp_path / "m.zarr"
    predict(
        PredictConfig(scene=synthetic_scene, bundle=tiny_run[1].bundle, output=str(out), block=128),
        progress=False,
    )
    with pytest.raises(InputError, match="was predicted by bundle sha256:.*not by"):
        evaluate(
            EvaluateConfig(
                mosaic=str(out),
                scene=synthetic_scene,
                bundle=str(other),
                output=str(tmp_path / "e"),
                engine="local",
            ),
            progress=False,
        )


# -- missing and damaged chunks -------------------------------------------------------------------


def test_missing_and_damaged_scene_chunks_are_named_not_read_as_nodata(
    tiny_run, tmp_path: Path
) -> None:
    from w2w.core.coverage import verify_scene

    scene = _scene(tmp_path / "scene.zarr", seed=3)
    assert verify_scene(scene, engine="local").ok
    broken = tmp_path / "broken.zarr"
    shutil.copytree(scene, broken)
    (broken / "image" / "c" / "0" / "1" / "2").unlink()  # an interrupted copy
    report = verify_scene(str(broken), engine="local")
    assert not report.ok and "image chunk (1, 2) is missing" in report.describe()
    with pytest.raises(InputError, match=r"image chunk \(1, 2\) is missing"):
        predict(
            PredictConfig(
                scene=str(broken), bundle=tiny_run[1].bundle, output=str(tmp_path / "m.zarr")
            ),
            progress=False,
        )
    assert not (tmp_path / "m.zarr").exists()
    damaged = tmp_path / "damaged.zarr"
    shutil.copytree(scene, damaged)
    chunk = damaged / "image" / "c" / "0" / "2" / "2"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    store = SceneStore.open(str(damaged))
    with pytest.raises(InputError, match="damaged.*checksum"):
        store.read_image(store.grid.blocks(64).window(2, 2))
    report = verify_scene(str(damaged), engine="local")
    assert not report.ok and report.damaged
    # In a Ray worker the same failure reaches the user as its cause, not Ray's advice.
    with pytest.raises(InputError, match=r"damaged\.zarr: a chunk of 'image' is damaged"):
        predict(
            PredictConfig(
                scene=str(damaged), bundle=tiny_run[1].bundle, output=str(tmp_path / "d.zarr")
            ),
            progress=False,
        )


def test_a_lost_mosaic_chunk_is_found_by_verify_and_refused_by_export(
    tiny_run, synthetic_scene: str, tmp_path: Path
) -> None:
    from w2w.core.coverage import verify_coverage
    from w2w.export import ExportConfig, export

    out = tmp_path / "m.zarr"
    predict(
        PredictConfig(scene=synthetic_scene, bundle=tiny_run[1].bundle, output=str(out), block=128),
        progress=False,
    )
    (out / "class" / "c" / "1" / "1").unlink()
    report = verify_coverage(str(out), engine="local")
    assert not report.ok and any(w.row == 128 and w.col == 128 for w in report.missing)
    with pytest.raises(InputError, match=r"class chunk \(1, 1\) is missing"):
        export(ExportConfig(input=str(out), output=str(tmp_path / "map.tif")), progress=False)


# -- a stack keeps each file's nodata -----------------------------------------------------------


def test_each_file_of_a_stack_keeps_its_own_nodata(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    a = rng.integers(1, 100, (1, 32, 32)).astype("int16")
    a[0, :4] = 0  # nodata of file a
    b = rng.integers(0, 100, (1, 32, 32)).astype("int16")
    b[0, 10, :] = 0  # genuine zeros in file b, valid there
    b[0, -4:] = -9999  # nodata of file b
    write_tif(tmp_path / "a.tif", a, nodata=0)
    write_tif(tmp_path / "b.tif", b, nodata=-9999)
    report = ingest(
        IngestConfig(
            images=[str(tmp_path / "a.tif"), str(tmp_path / "b.tif")],
            output=str(tmp_path / "s.zarr"),
            chunk=16,
            block=32,
            engine="local",
        ),
        progress=False,
    )
    store = SceneStore.open(report.output)
    assert store.meta["nodata"] == [0, -9999]
    image = store.read_image(store.grid.full_window)
    valid = store.valid_mask(image)
    expected = np.ones((32, 32), dtype=bool)
    expected[:4] = False
    expected[-4:] = False
    np.testing.assert_array_equal(valid, expected)  # row 10 (b's zeros) is valid
    assert report.valid_pixels == int(expected.sum())
