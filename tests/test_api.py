"""The public Python API, the command line built from the configs, and the smells fixed by
the redesign (each with the test that would have caught it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from affine import Affine
from rasterio.crs import CRS
from typer.testing import CliRunner

from tests.conftest import TINY_MODEL
from w2w.cli import app
from w2w.core.errors import ConfigError, InputError
from w2w.core.grid import Grid

runner = CliRunner()


def test_public_api_names_resolve_and_version_is_printed() -> None:
    import w2w

    for name in w2w.__all__:
        assert getattr(w2w, name) is not None, name
    assert w2w.__version__ and w2w.__version__ != "0+unknown"
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"w2w {w2w.__version__}"


def test_open_scene_and_open_mosaic_carry_crs_transform_and_band_names(
    synthetic_scene: str, tmp_path: Path
) -> None:
    from w2w import open_mosaic, open_scene
    from w2w.core.classes import class_table
    from w2w.core.store import MosaicStore, SceneStore

    store = SceneStore.open(synthetic_scene)
    ds = open_scene(synthetic_scene)
    assert ds.rio.crs == store.grid.crs
    assert ds.rio.transform() == store.grid.transform
    assert ds["image"].dims == ("band", "y", "x")
    assert list(ds["band"].values) == list(store.info.band_names)
    window = store.grid.blocks(64).window(1, 2)
    np.testing.assert_array_equal(
        ds["image"].isel(y=window.slices[0], x=window.slices[1]).values,
        store.read_image(window),
    )
    mosaic = MosaicStore.create(
        str(tmp_path / "m.zarr"), store.grid, block=128, classes=class_table([1, 2])
    )
    mosaic.mark_complete()
    m = open_mosaic(mosaic.url)
    assert m.rio.crs == store.grid.crs and m["class"].shape == store.grid.shape


def test_stage_commands_show_every_setting_with_its_default() -> None:
    from w2w.cli.options import stage_params
    from w2w.stages import STAGES, stage_named

    for stage in STAGES:
        for p in stage_params(stage):
            assert _field(stage.config, p.target).description, f"{stage.name}: {p.target}"
        result = runner.invoke(app, [stage.name, "--help"], terminal_width=200)
        assert result.exit_code == 0, result.output
        assert "--config" in result.output and "[default:" in result.output
    infos = {
        p.name: p.parameter.annotation.__metadata__[0] for p in stage_params(stage_named("train"))
    }
    # In Annotated form, typer keeps an option's first name in ``default``.
    decls = {name: (info.default, *(info.param_decls or ())) for name, info in infos.items()}
    assert decls["reproducible"] == ("--reproducible/--no-reproducible",)
    assert decls["chips_size"] == ("--chips-size",) and decls["bundle"] == ("--bundle", "-m")
    for name in ("train", "predict", "evaluate"):
        out = runner.invoke(app, [name, "--help"], terminal_width=200).output
        assert "--bundle" in out and "-m" in out, name


@pytest.mark.parametrize("flag", ["--help", "--help-all"])
def test_every_stage_help_is_readable_at_80_columns(flag: str) -> None:
    """Every option name whole (in the short help, the sections' names are listed), lines
    within 80 columns, one default format, no value placeholder on a flag."""
    import re

    from w2w.cli.options import stage_params
    from w2w.stages import STAGES

    for stage in STAGES:
        result = runner.invoke(app, [stage.name, flag], terminal_width=80, env={"COLUMNS": "80"})
        out = result.output
        assert result.exit_code == 0, out
        assert max(len(line) for line in out.splitlines()) <= 80, (stage.name, out)
        assert "…" not in out and "[default: (" not in out, (stage.name, out)
        for p in stage_params(stage):
            if p.name in stage.arguments:
                assert re.search(rf"^  {p.name}(\.\.\.)? ", out, re.M), (stage.name, p.name)
                continue
            name = "--" + p.name.replace("_", "-")
            assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", out), (stage.name, name)
            assert not re.search(rf"{re.escape(name)}/--no-\S+ <", out), (stage.name, name)
    short = runner.invoke(app, ["train", "--help"], terminal_width=80).output
    assert len(short.splitlines()) < 80  # sections are named, --help-all describes them
    every = runner.invoke(app, ["train", "--help-all"], terminal_width=80).output
    assert "Chips options:" in every and "chip edge in pixels" in every


def _field(cls, path: str):
    from w2w.cli.options import _field_at

    return _field_at(cls, path)


def test_nested_options_and_shortcuts_set_the_config(tmp_path: Path) -> None:
    from w2w.cli.options import build_config, given_values, stage_params
    from w2w.stages import stage_named

    stage = stage_named("train")
    params = stage_params(stage)
    values = {"scene": "s.zarr", "chip_size": 64, "optim_lr": 0.01, "gpu": True}
    values["model_options"] = "{encoder_depth: 3}"
    config = tmp_path / "t.yaml"
    config.write_text("train:\n  epochs: 3\n  chips: {stride: 32, size: 128}\n")
    cfg = build_config(stage, config, given_values(params, values))
    assert cfg.chips.size == 64 and cfg.chips.stride == 32 and cfg.epochs == 3
    assert (
        cfg.optim.lr == 0.01 and cfg.workers.use_gpu and cfg.model.options == {"encoder_depth": 3}
    )
    assert cfg.scene == str(Path("s.zarr").absolute())  # paths are canonical once


# -- smells, each fixed with a test ----------------------------------------------------------


def test_coverage_of_a_mosaic_that_records_no_counts_is_not_reported_whole(
    tmp_path: Path,
) -> None:
    import zarr

    from w2w.core.classes import class_table
    from w2w.core.coverage import verify_coverage
    from w2w.core.store import MosaicStore
    from w2w.ingest.synth import SynthConfig

    grid = SynthConfig(output="u", height=64, width=64).grid
    m = MosaicStore.create(str(tmp_path / "m.zarr"), grid, block=32, classes=class_table([1]))
    for w in m.blocks():
        m.mark_block_done(w)
    del zarr.open_group(str(tmp_path / "m.zarr"), mode="r+")["_w2w/block_valid_pixels"]
    report = verify_coverage(m.url, engine="local")
    assert not report.ok and report.checked_pixels == 0
    assert "cannot be checked" in report.describe()


def test_weights_that_fit_only_part_of_the_model_are_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from w2w.model.models import ModelSpec, build_model, load_weights

    spec = ModelSpec(TINY_MODEL["arch"], TINY_MODEL["encoder"], 3, 2, TINY_MODEL["options"])
    state = {k: v.clone() for k, v in build_model(spec).state_dict().items()}
    full = tmp_path / "full.safetensors"
    save_file(state, str(full))
    load_weights(build_model(spec), str(full))  # a whole match loads
    part = tmp_path / "part.safetensors"
    save_file({k: v for k, v in state.items() if k.startswith("encoder.")}, str(part))
    with pytest.raises(InputError, match="lack .* tensors"):
        load_weights(build_model(spec), str(part))


@pytest.mark.parametrize(
    ("crs", "units", "standard_name"),
    [
        ("EPSG:4326", "degrees_east", "longitude"),
        ("EPSG:32613", "metre", "projection_x_coordinate"),
    ],
)
def test_store_coordinates_take_their_units_from_the_crs(
    tmp_path: Path, crs: str, units: str, standard_name: str
) -> None:
    import xarray as xr

    from w2w.core.store import SceneStore

    res = 0.001 if crs == "EPSG:4326" else 10.0
    grid = Grid(CRS.from_user_input(crs).to_wkt(), Affine(res, 0, 10, 0, -res, 20), 8, 9)
    store = SceneStore.create(
        str(tmp_path / "s.zarr"), grid, band_names=["a"], dtype="uint8", nodata=0
    )
    store.mark_complete()
    ds = xr.open_zarr(store.url)
    assert ds["x"].attrs["units"] == units and ds["x"].attrs["standard_name"] == standard_name


def test_spectral_model_returns_its_auxiliary_logits_instead_of_keeping_them() -> None:
    from w2w.model.models import ModelSpec, build_model, has_aux_logits

    options = {**TINY_MODEL["options"], "spectral_branch": 8}
    model = build_model(ModelSpec(TINY_MODEL["arch"], TINY_MODEL["encoder"], 4, 3, options))
    assert has_aux_logits(model)
    model.train()
    x = torch.randn(2, 4, 64, 64)
    logits, aux = model(x, return_aux=True)
    assert logits.shape == aux.shape == (2, 3, 64, 64)
    torch.testing.assert_close(aux, model.spectral(x))
    assert isinstance(model(x), torch.Tensor)
    assert not any(isinstance(v, torch.Tensor) for v in vars(model).values())


def test_duplicate_class_names_are_refused() -> None:
    from w2w.ingest.config import IngestConfig

    with pytest.raises(ConfigError, match="'forest' is given to several ids"):
        IngestConfig.from_dict(
            {"images": ["a.tif"], "output": "o.zarr", "classes": "1=forest,2=forest"}
        )
