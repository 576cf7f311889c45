"""Settings fitted to the scene: what a setting left unset becomes, and that a setting given
is kept."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TINY_MODEL
from w2w.core.store import SceneStore
from w2w.train import TrainConfig
from w2w.train.fit import SMALL_RECIPE, fit, fit_to_scene, small_stride


@pytest.fixture
def info(synthetic_scene: str):
    return SceneStore.open(synthetic_scene).info


def test_a_small_scene_left_to_w2w_gets_the_small_scene_recipe(info, synthetic_scene: str) -> None:
    cfg, chosen = fit_to_scene(TrainConfig(scene=synthetic_scene), info)
    recipe = SMALL_RECIPE
    assert cfg.model.encoder == recipe["model"]["encoder"]
    assert cfg.model.options == recipe["model"]["options"]
    assert cfg.chips.size == 64 and cfg.chips.stride == 8  # 384 px: ~2,300 chips an epoch
    assert cfg.normalization == "zscore" and cfg.epochs == 18 and cfg.optim.lr == 0.01
    assert chosen["chips.stride"] == 8 and chosen["model.encoder"] == "tu-resnet10t"
    again, more = fit_to_scene(cfg, info)  # fitting a fitted config changes nothing
    assert again == cfg and more == {}


def test_settings_given_are_kept_and_a_chip_size_keeps_its_stride(
    info, synthetic_scene: str
) -> None:
    given = TrainConfig.from_dict(
        {
            "scene": synthetic_scene,
            "model": TINY_MODEL,
            "chips": {"size": 128},
            "epochs": 3,
            "optim": {"lr": 0.002},
        }
    )
    cfg, chosen = fit_to_scene(given, info)
    assert cfg.model.encoder == TINY_MODEL["encoder"] and cfg.model.options == TINY_MODEL["options"]
    assert cfg.chips.size == 128 and cfg.chips.stride is None
    assert cfg.epochs == 3 and cfg.optim.lr == 0.002
    assert cfg.optim.weight_decay == 0.01  # unset in the given section: fitted
    assert not {"model.encoder", "chips.size", "chips.stride", "epochs", "optim.lr"} & set(chosen)
    off, none = fit_to_scene(given.replace(fit_to_scene=False), info)
    assert none == {} and off.chips.size == 128 and off.normalization == "percentile"


def test_a_large_scene_keeps_the_general_defaults(info, synthetic_scene: str) -> None:
    from w2w.core.grid import Grid

    g = info.grid
    big = dataclasses.replace(
        info,
        grid=Grid(g.crs_wkt, g.transform, 20_000, 30_000),
        class_histogram={1: 5_000_000, 2: 3_000_000},
    )
    cfg, chosen = fit_to_scene(TrainConfig(scene=synthetic_scene), big)
    assert chosen == {} and cfg.chips.size == 256 and cfg.model.encoder == "resnet34"
    assert small_stride(big, 64) == 64


def test_a_pretrained_encoder_brings_its_model_chip_size_and_normalisation(
    synthetic_scene: str, tmp_path: Path
) -> None:
    from w2w.model.encoder_file import EncoderFile, save_encoder
    from w2w.model.models import build_model
    from w2w.model.normalization import Normalizer
    from w2w.model.spec import ModelSpec

    spec = ModelSpec("Unet", TINY_MODEL["encoder"], 6, 1, TINY_MODEL["options"])
    norm = Normalizer("percentile", (0.0,) * 6, (1.0,) * 6, (0.0,) * 6, (1.0,) * 6)
    url = str(tmp_path / "encoder.safetensors")
    bands = ("B02", "B03", "B04", "B08", "B11", "B12")
    save_encoder(
        url, EncoderFile(spec, bands, norm, 32, {}), build_model(spec).encoder.state_dict()
    )
    cfg, chosen = fit(
        TrainConfig.from_dict({"scene": synthetic_scene, "model": {"encoder_weights": url}})
    )
    assert (cfg.model.arch, cfg.model.encoder) == ("Unet", TINY_MODEL["encoder"])
    assert cfg.model.options == TINY_MODEL["options"] and cfg.model.encoder_weights == url
    assert cfg.chips.size == 32 and cfg.normalization == "percentile"
    assert chosen["normalization"] == "percentile"


def test_published_weights_keep_the_encoder_they_were_made_for(info, synthetic_scene: str) -> None:
    """On a small scene the recipe's encoder would give way: smp's ``imagenet`` keeps the
    default encoder (which has them), torchgeo's weights bring the encoder they name."""
    pytest.importorskip("torchgeo")
    default = TrainConfig(scene=synthetic_scene).model.encoder
    for weights, encoder in [
        ("imagenet", default),
        ("ResNet18_Weights.SENTINEL2_ALL_MOCO", "resnet18"),
    ]:
        cfg = TrainConfig.from_dict(
            {"scene": synthetic_scene, "model": {"encoder_weights": weights}}
        )
        fitted, chosen = fit(cfg)
        assert fitted.model.encoder == encoder and fitted.model.encoder_weights == weights
        assert fitted.chips.size == 64  # the rest of the small-scene recipe holds
        assert chosen.get("model.encoder", default) == encoder


@pytest.mark.slow
def test_train_with_defaults_on_a_small_scene_with_few_labels_beats_the_per_pixel_baseline(
    tmp_path: Path, ray_session: None
) -> None:
    """A 450 x 450 px state with a few thousand labelled pixels, in a few places: `w2w train
    scene.zarr` with no settings (only where to put the run) fits the small-scene recipe to it,
    and on the test split its map is at least as accurate as the per-pixel baseline that
    `w2w evaluate` fits on the same training split and scores on the same pixels."""
    import rasterio
    from typer.testing import CliRunner

    from benchmarks.labels import keep_by_region
    from w2w.cli import app

    def cli(*args: str) -> str:
        result = CliRunner().invoke(app, ["--quiet", *args])
        assert result.exit_code == 0, result.output
        return result.stdout

    cli("synth", str(tmp_path / "state"), "--size", "450", "--seed", "3")
    with rasterio.open(tmp_path / "state" / "labels.tif") as src:
        labels, profile = src.read(1), src.profile
    everywhere = np.ones(labels.shape, dtype=bool)
    kept = keep_by_region(labels > 0, everywhere, 0.02, seed=0)
    assert 2_000 <= int(kept.sum()) <= 8_000
    with rasterio.open(tmp_path / "few.tif", "w", **profile) as dst:
        dst.write(np.where(kept, labels, 0).astype(labels.dtype), 1)
    scene = str(tmp_path / "scene.zarr")
    cli(
        "ingest",
        str(tmp_path / "state" / "image.tif"),
        "--label",
        str(tmp_path / "few.tif"),
        "-o",
        scene,
    )
    out = cli(
        "train",
        scene,
        "--storage-path",
        str(tmp_path / "runs"),
        "-m",
        str(tmp_path / "m.safetensors"),
    )
    assert "fitted to the scene: " in out and "model.encoder tu-resnet10t" in out, out
    model = str(tmp_path / "m.safetensors")
    cli("predict", scene, "-m", model, "-o", str(tmp_path / "map.zarr"))
    cli(
        "evaluate",
        str(tmp_path / "map.zarr"),
        "--scene",
        scene,
        "-m",
        model,
        "-o",
        str(tmp_path / "ev"),
    )

    report = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    network = report["accuracy"]["overall_accuracy"]
    baseline = report["baseline"]["accuracy"]["overall_accuracy"]
    assert network >= baseline, (network, baseline)
