"""The whole job from one config, and `w2w demo` (the new user's main command)."""

from __future__ import annotations

from pathlib import Path

import pytest
import rasterio
import yaml
from rio_cogeo.cogeo import cog_validate
from typer.testing import CliRunner

from w2w.cli import app
from w2w.core.errors import ConfigError
from w2w.pipeline import PipelineConfig, demo_config, run_pipeline, stage_configs

runner = CliRunner()


def test_small_demo_runs_every_stage(tmp_path: Path, ray_session: None) -> None:
    """`w2w demo` end to end, small and short (its map quality is the slow test's below).

    Without pretraining here: the demo with its pretraining stage runs end to end in the
    registry matrices' demo run (tests/test_guarantees.py, slow, every CI run), and the
    pretraining stage's link to training is checked in tests/test_pretrain.py."""
    result = runner.invoke(
        app, ["--quiet", "demo", str(tmp_path / "demo"), "--size", "256", "--epochs", "1"]
    )
    assert result.exit_code == 0, result.output
    out = result.stdout
    for name in (
        "scene store",
        "model bundle",
        "mosaic",
        "sieved mosaic",
        "COG",
        "STAC item",
        "quicklook",
        "evaluation report",
        "validation: mIoU",
        "test split: mIoU",
        "per-pixel baseline, same pixels: mIoU",
    ):
        assert name in out, out
    cog = tmp_path / "demo" / "landcover.tif"
    is_valid, errors, _ = cog_validate(str(cog))
    assert is_valid, errors
    with rasterio.open(cog) as src:
        # The demo maps the state's tiles (UTM 12N and 13N) on Mexico's national grid, inside
        # its boundary (issue 15): the COG is on EPSG:6372, about the state's size.
        assert src.crs.to_epsg() == 6372 and 200 <= min(src.shape) <= max(src.shape) <= 320
        assert src.colormap(1)[1][:3] == (34, 110, 42)  # forest green from the class table
    assert (tmp_path / "demo" / "evaluation" / "evaluation.md").exists()


def test_a_typo_in_a_late_stage_fails_before_anything_runs(tmp_path: Path) -> None:
    cfg = demo_config(str(tmp_path / "w"), size=128, epochs=1).model_dump()
    cfg["export"] = {"overwrite": True, "blocksise": 512}
    with pytest.raises(ConfigError, match=r"pipeline \[export\].*unknown key 'blocksise'"):
        run_pipeline(PipelineConfig.from_dict(cfg))
    assert not (tmp_path / "w").exists()


def test_stage_paths_are_linked_under_the_workdir(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "workdir": "s3://bucket/chihuahua",
                "ingest": {
                    "images": ["s3://bucket/in/s2.tif"],
                    "label": "s3://bucket/in/labels.tif",
                },
                "train": {"epochs": 1},
                "predict": {"use_gpu": True, "actors": 4},
                "sieve": {"min_pixels": 100},
                "export": {},
                "evaluate": {},
            }
        )
    )
    configs = stage_configs(PipelineConfig.load(str(path)))
    assert list(configs) == ["ingest", "train", "predict", "sieve", "export", "evaluate"]
    assert configs["train"].scene == "s3://bucket/chihuahua/scene.zarr"  # type: ignore[attr-defined]
    assert configs["predict"].bundle == "s3://bucket/chihuahua/model.safetensors"  # type: ignore[attr-defined]
    assert configs["sieve"].min_pixels == 100 and configs["sieve"].min_area_ha is None  # type: ignore[attr-defined]
    assert configs["export"].input == "s3://bucket/chihuahua/mosaic-mmu.zarr"  # type: ignore[attr-defined]


@pytest.mark.slow
def test_default_demo_maps_the_synthetic_state_well(tmp_path: Path, ray_session: None) -> None:
    result = run_pipeline(demo_config(str(tmp_path / "demo")), progress=False)
    # Six classes: chance is a mean IoU under 0.1.
    assert result.metrics["val_miou"] > 0.6, result.metrics
    assert result.metrics["test_miou"] > 0.6, result.metrics
    assert result.metrics["test_baseline_miou"] > 0.3, result.metrics  # beside it, same pixels


def test_check_validates_every_stage_and_runs_nothing(tmp_path: Path) -> None:
    cfg = yaml.safe_load((Path(__file__).parents[1] / "jobs/configs/tiny-local.yaml").read_text())
    cfg["workdir"] = str(tmp_path / "w")
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = runner.invoke(app, ["pipeline", str(path), "--check"])
    assert result.exit_code == 0, result.output
    for stage in ("synth", "ingest", "train", "predict", "sieve", "export", "evaluate"):
        assert f"{stage}: ok" in result.stdout
    assert not (tmp_path / "w").exists()
    cfg["predict"]["blok"] = 128
    path.write_text(yaml.safe_dump(cfg))
    bad = runner.invoke(app, ["pipeline", str(path), "--check"])
    assert bad.exit_code == 2 and "unknown key 'blok'; did you mean 'block'?" in bad.output
    # The outputs are checked as a run checks them before its first stage: a workdir that
    # is a file is refused by --check, not only by the run.
    del cfg["predict"]["blok"]
    cfg["workdir"] = str(tmp_path / "notes.txt")
    (tmp_path / "notes.txt").write_text("mine")
    path.write_text(yaml.safe_dump(cfg))
    refused = runner.invoke(app, ["pipeline", str(path), "--check"])
    assert refused.exit_code != 0 and "is a file, not a folder" in refused.output, refused.output
