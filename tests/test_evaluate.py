"""Evaluate: block sums equal a whole-raster computation; splits, areas, reports, errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS

from w2w.core import metrics, storage
from w2w.core.classes import ClassInfo
from w2w.core.errors import ConfigError, GridMismatchError, InputError, OutputError
from w2w.core.grid import Grid
from w2w.core.split import SplitConfig, SplitPlan, make_split
from w2w.core.store import MosaicStore, SceneStore
from w2w.evaluate import EvaluateConfig, evaluate
from w2w.ingest.synth import BAND_NAMES, SynthConfig, synthesize
from w2w.model.bundle import Bundle, save_bundle
from w2w.model.models import ModelSpec
from w2w.model.normalization import Normalizer


def make_scene(path: Path, h: int, w: int, seed: int = 3) -> SceneStore:
    cfg = SynthConfig(
        output=str(path), format="store", height=h, width=w, seed=seed, engine="local", chunk=32
    )
    synthesize(cfg, progress=False)
    return SceneStore.open(str(path))


def noisy_map(labels: np.ndarray, rng: np.random.Generator, flip: float = 0.25) -> np.ndarray:
    """A map that agrees with the labels except at random pixels; 255 outside the state and
    in a patch of 'invalid input' that covers labelled pixels too."""
    out = labels.copy()
    wrong = rng.random(labels.shape) < flip
    out[wrong] = rng.integers(1, 7, size=int(wrong.sum()))
    out[labels == 0] = 255
    out[40:46, 50:70] = 255
    return out.astype("uint8")


def make_mosaic(
    url: str, grid: Grid, classes: np.ndarray, table: tuple[ClassInfo, ...], block: int = 32
) -> MosaicStore:
    store = MosaicStore.create(url, grid, block=block, classes=list(table), with_confidence=False)
    for w in grid.blocks(block).windows():
        store.write("class", w, classes[w.slices])
        store.mark_block_done(w)
    store.mark_complete()
    return store


def make_bundle(url: str, table: tuple[ClassInfo, ...], plan: SplitPlan | None) -> str:
    import torch

    n = len(BAND_NAMES)
    bundle = Bundle(
        spec=ModelSpec("Unet", "resnet18", n, len(table)),
        bands=BAND_NAMES,
        normalizer=Normalizer("percentile", (0.0,) * n, (1.0,) * n, (0.0,) * n, (1.0,) * n),
        chip_size=16,
        classes=table,
        split=plan,
    )
    save_bundle(url, bundle, {"w": torch.zeros(1)})
    return url


def evaluate_with_split(
    tmp_path: Path, scene: SceneStore, mapped: np.ndarray, plan: SplitPlan
) -> tuple[EvaluateConfig, Any]:
    """Evaluate the map ``mapped`` of ``scene`` with a bundle that holds ``plan``: the config
    (local engine) and the result."""
    table = scene.info.classes
    mosaic_url = str(tmp_path / "m.zarr")
    make_mosaic(mosaic_url, scene.grid, mapped, table, block=64)
    bundle = make_bundle(str(tmp_path / "model.safetensors"), table, plan)
    cfg = EvaluateConfig(
        mosaic=mosaic_url,
        scene=scene.url,
        bundle=bundle,
        output=str(tmp_path / "r"),
        engine="local",
    )
    return cfg, evaluate(cfg, progress=False)


@pytest.fixture
def case(tmp_path: Path, rng: np.random.Generator):
    """A 97 x 130 labelled scene and a noisy map of it, on blocks of 32 (not the scene's)."""
    scene = make_scene(tmp_path / "scene.zarr", 97, 130)
    table = scene.info.classes
    labels = scene.read_label(scene.grid.full_window)
    mapped = noisy_map(labels, rng)
    mosaic_url = str(tmp_path / "mosaic.zarr")
    make_mosaic(mosaic_url, scene.grid, mapped, table, block=32)
    return scene, mosaic_url, labels, mapped, table


def expected_counts(labels, mapped, table, mask=None):
    """The whole-raster computation the block sums must equal."""
    lut = np.full(256, -1)
    for i, c in enumerate(table):
        lut[c.id] = i
    reference = (labels != 0) & (lut[labels] >= 0)
    if mask is not None:
        reference &= mask
    valid_map = lut[mapped] >= 0
    matrix = metrics.confusion(lut[labels], lut[mapped], len(table), mask=reference & valid_map)
    strata = np.array([(mapped == c.id).sum() for c in table])
    return matrix, strata, int((reference & (mapped == 255)).sum())


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_block_sums_equal_the_whole_raster(case, tmp_path: Path, engine: str, request) -> None:
    if engine == "ray":
        request.getfixturevalue("ray_session")
    scene, mosaic_url, labels, mapped, table = case
    result = evaluate(
        EvaluateConfig(
            mosaic=mosaic_url, scene=scene.url, output=str(tmp_path / "report"), engine=engine
        ),
        progress=False,
    )
    matrix, strata, map_nodata = expected_counts(labels, mapped, table)
    np.testing.assert_array_equal(result.matrix, matrix)
    assert map_nodata > 0 and result.excluded["map_nodata"] == map_nodata
    expected = metrics.summary(matrix, [c.name for c in table])
    assert result.split == "all"
    assert result.reference_pixels == int(matrix.sum())
    assert result.overall_accuracy == pytest.approx(expected["overall_accuracy"])
    assert result.kappa == pytest.approx(expected["kappa"])
    assert result.mean_iou == pytest.approx(expected["mean_iou"])
    for name, scores in expected["per_class"].items():
        assert result.per_class[name] == pytest.approx(scores, nan_ok=True)
    assert [a.mapped_pixels for a in result.areas] == strata.tolist()

    report = json.loads(Path(result.json).read_text())
    assert report["accuracy"]["confusion_matrix"] == matrix.tolist()
    assert report["excluded"]["map_nodata"] == map_nodata
    assert any("nodata in the map" in w for w in report["warnings"])
    md = Path(result.markdown).read_text()
    for heading in ("## Headline", "## Per class", "## Confusion matrix", "## Area by class"):
        assert heading in md
    assert "Olofsson" in md and "stratified by map class" in md
    assert Path(result.figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_areas_sum_to_the_mapped_area(case, tmp_path: Path) -> None:
    scene, mosaic_url, labels, mapped, table = case
    result = evaluate(
        EvaluateConfig(
            mosaic=mosaic_url, scene=scene.url, output=str(tmp_path / "r"), engine="local"
        ),
        progress=False,
    )
    matrix, strata, _ = expected_counts(labels, mapped, table)
    assert result.area_unit == "ha"
    ha_per_pixel = 10 * 10 / 10_000
    mapped_ha = strata.sum() * ha_per_pixel
    assert sum(a.mapped_area for a in result.areas) == pytest.approx(mapped_ha)
    assert sum(a.estimated_area for a in result.areas) == pytest.approx(mapped_ha)
    expected, oa = metrics.stratified_area(matrix, strata, ha_per_pixel)
    for got, want in zip(result.areas, expected, strict=True):
        assert got.estimated_area == pytest.approx(want.estimated_area)
        assert got.ci95 == pytest.approx(want.ci95) and got.ci95 > 0
    assert result.estimated_overall_accuracy == pytest.approx(oa)
    report = json.loads(Path(result.json).read_text())
    forest = report["area"]["classes"]["forest"]
    assert forest["estimated_km2"] == pytest.approx(forest["estimated"] / 100)
    assert "stratified by map class" in report["area"]["assumption"]


def test_only_pixels_of_the_split_are_counted(tmp_path: Path, rng: np.random.Generator) -> None:
    """Outside the test split the map is wrong everywhere; inside it, right everywhere: a
    perfect score shows that no pixel outside the split was counted."""
    scene = make_scene(tmp_path / "scene.zarr", 130, 150, seed=5)
    table = scene.info.classes
    labels = scene.read_label(scene.grid.full_window)
    plan = make_split(
        scene.grid, 16, 8, SplitConfig(block_chips=2, val_fraction=0.2, test_fraction=0.25)
    )
    test_mask = plan.pixel_mask(scene.grid.full_window, "test")
    assert test_mask.any() and (~test_mask & (labels != 0)).any()
    mapped = np.where(labels == 6, 1, labels + 1).astype("uint8")  # wrong class everywhere
    mapped[test_mask] = labels[test_mask]
    mapped[labels == 0] = 255
    cfg, result = evaluate_with_split(tmp_path, scene, mapped, plan)
    assert result.split == "test"  # the default with a bundle
    matrix, _, _ = expected_counts(labels, mapped, table, mask=test_mask)
    np.testing.assert_array_equal(result.matrix, matrix)
    assert result.reference_pixels == int((test_mask & (labels != 0)).sum()) > 0
    assert result.overall_accuracy == 1.0

    val = evaluate(cfg.replace(split="val", output=str(tmp_path / "v")), progress=False)
    val_mask = plan.pixel_mask(scene.grid.full_window, "val")
    np.testing.assert_array_equal(
        val.matrix, expected_counts(labels, mapped, table, mask=val_mask)[0]
    )
    assert val.overall_accuracy < 0.05
    every = evaluate(cfg.replace(split="all", output=str(tmp_path / "a")), progress=False)
    assert every.reference_pixels == int((labels != 0).sum())
    assert any("optimistic" in w for w in every.warnings)


def test_reports_to_s3_and_refuses_to_overwrite(case, tmp_path: Path, s3_bucket: str) -> None:
    scene, mosaic_url, _, _, _ = case
    cfg = EvaluateConfig(
        mosaic=mosaic_url, scene=scene.url, output=f"{s3_bucket}/eval", engine="local"
    )
    result = evaluate(cfg, progress=False)
    assert result.json == f"{s3_bucket}/eval/evaluation.json"
    report = json.loads(storage.read_bytes(result.json))
    assert report["reference_pixels"] == result.reference_pixels
    assert storage.read_bytes(result.figure)[:4] == b"\x89PNG"
    assert b"# Accuracy assessment" in storage.read_bytes(result.markdown)
    with pytest.raises(OutputError, match="exists already; pass --overwrite"):
        evaluate(cfg, progress=False)
    evaluate(cfg.replace(overwrite=True), progress=False)


def test_non_metric_crs_reports_pixels(tmp_path: Path) -> None:
    grid = Grid(CRS.from_epsg(4326).to_wkt(), Affine(0.001, 0, -106, 0, -0.001, 29), 40, 50)
    table = (ClassInfo(1, "forest", (0, 100, 0)), ClassInfo(2, "water", (0, 0, 200)))
    scene = SceneStore.create(
        str(tmp_path / "s.zarr"),
        grid,
        band_names=["b"],
        dtype="uint8",
        nodata=None,
        chunk=16,
        with_label=True,
        unlabelled=0,
        classes=list(table),
    )
    labels = np.ones((40, 50), "uint8")
    labels[:, 25:] = 2
    for w in grid.blocks(16).windows():
        scene.write("label", w, labels[w.slices])
    scene.mark_complete()
    mapped = labels.copy()
    mapped[:5, :5] = 2
    make_mosaic(str(tmp_path / "m.zarr"), grid, mapped, table, block=16)
    result = evaluate(
        EvaluateConfig(
            mosaic=str(tmp_path / "m.zarr"),
            scene=str(tmp_path / "s.zarr"),
            output=str(tmp_path / "r"),
            engine="local",
        ),
        progress=False,
    )
    assert result.area_unit == "pixels"
    assert [a.mapped_area for a in result.areas] == [1000 - 25, 1000 + 25]
    assert sum(a.estimated_area for a in result.areas) == pytest.approx(2000)
    assert "not in metres" in Path(result.markdown).read_text()


def test_clear_errors(case, tmp_path: Path) -> None:
    scene, mosaic_url, _, mapped, table = case
    out = str(tmp_path / "r")

    def run(**kw):
        args = {"mosaic": mosaic_url, "scene": scene.url, "output": out, "engine": "local"}
        return evaluate(EvaluateConfig(**{**args, **kw}), progress=False)

    # a scene without labels
    unlabelled = SceneStore.create(
        str(tmp_path / "nolabel.zarr"), scene.grid, band_names=["b"], dtype="uint8", nodata=0
    )
    unlabelled.mark_complete()
    with pytest.raises(InputError, match="has no labels to evaluate against"):
        run(scene=unlabelled.url)

    # mosaic and scene on different grids: both grids named
    shifted = Grid(scene.grid.crs_wkt, scene.grid.transform @ Affine.translation(3, 0), 97, 130)
    other = str(tmp_path / "shifted.zarr")
    make_mosaic(other, shifted, mapped, table)
    with pytest.raises(GridMismatchError) as err:
        run(mosaic=other)
    assert scene.grid.describe() in str(err.value) and shifted.describe() in str(err.value)

    # a split without a bundle
    with pytest.raises(ConfigError, match="needs the model bundle"):
        run(split="test")

    # a bundle without a split
    no_split = make_bundle(str(tmp_path / "nosplit.safetensors"), table, None)
    with pytest.raises(InputError, match="records no spatial split"):
        run(bundle=no_split, split="test")
    result = run(bundle=no_split)  # default: every labelled pixel, with a warning
    assert result.split == "all" and any("no spatial split" in w for w in result.warnings)

    # class tables that differ
    renamed = tuple(ClassInfo(c.id, c.name.upper(), c.color) for c in table)
    other_bundle = make_bundle(str(tmp_path / "other.safetensors"), renamed, None)
    with pytest.raises(InputError, match="class tables differ") as err:
        run(bundle=other_bundle, overwrite=True)
    assert "1=forest" in str(err.value) and "1=FOREST" in str(err.value)

    # a split made for another scene size
    small = make_split(
        Grid(scene.grid.crs_wkt, scene.grid.transform, 64, 64), 16, 16, SplitConfig()
    )
    wrong = make_bundle(str(tmp_path / "wrong.safetensors"), table, small)
    with pytest.raises(InputError, match="was made for a 64 x 64 px scene"):
        run(bundle=wrong, overwrite=True)


def test_cli_evaluate(case, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from w2w.cli import app

    scene, mosaic_url, _, _, _ = case
    runner = CliRunner()
    args = ["--quiet", "evaluate", mosaic_url, "--scene", scene.url, "-o", str(tmp_path / "r")]
    result = runner.invoke(app, [*args, "--engine", "local"])
    assert result.exit_code == 0, result.stderr
    assert "overall accuracy:" in result.stdout and "kappa:" in result.stdout
    assert "forest: mapped" in result.stdout and "(95% CI)" in result.stdout
    assert (tmp_path / "r" / "evaluation.md").exists()
    bad = runner.invoke(app, [*args, "--split", "test", "--overwrite", "--engine", "local"])
    assert bad.exit_code == 2 and "needs the model bundle" in bad.stderr


# -- the per-pixel baseline beside the evaluation ----------------------------------------------


def test_spectral_indices_come_from_band_names() -> None:
    from w2w.evaluate.baseline import features, index_bands

    # Sentinel-2 ids (the synthetic state's) and STAC common names give the same indices.
    s2 = index_bands(list(BAND_NAMES))  # B02 B03 B04 B08 B11 B12
    assert s2 == {"ndvi": (3, 2), "ndwi": (1, 3), "mndwi": (1, 4), "nbr": (3, 5), "ndbi": (4, 3)}
    assert index_bands(["Blue", "green", "RED", "nir08", "swir16", "swir22"]) == s2
    # Landsat's bare band numbers are read by no index (B4 is red on one sensor, NIR on another).
    assert index_bands(["B1", "B2", "B3", "B4", "B5", "B7"]) == {}
    values = np.array([[100.0, 300.0], [200.0, 100.0], [0.0, 0.0], [0.0, 0.0]])
    got = features(values, {"nd": (1, 0)})
    np.testing.assert_allclose(got[:, :4], values.T)
    np.testing.assert_allclose(got[:, 4], [(200 - 100) / 300, (100 - 300) / 400])


@pytest.mark.parametrize(("b", "c"), [(0, 0), (7, 2), (12, 12), (40, 10), (10, 60)])
def test_mcnemar_matches_the_textbook_formulas(b: int, c: int) -> None:
    import math

    from w2w.evaluate.baseline import mcnemar

    got = mcnemar(b, c)
    n = b + c
    if n == 0:
        p = 1.0
    elif n < 25:  # exact: twice the smaller tail of Binomial(n, 1/2), at most 1
        tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n
        p = min(1.0, 2 * tail)
    else:  # chi-square, 1 degree of freedom, continuity-corrected
        p = math.erfc(math.sqrt((abs(b - c) - 1) ** 2 / n / 2))
    assert got["p_value"] == pytest.approx(p, rel=1e-9)
    assert got["better"] == ("neither" if p >= 0.05 else ("network" if b > c else "baseline"))


def test_every_evaluation_with_a_split_has_the_baseline_on_the_same_pixels(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """The baseline is scored on exactly the map's pixels (its matrix has the same total;
    the discordant pairs account for the difference in correct pixels), and it is a real
    model: on the synthetic state, whose classes differ in their spectra, it comes within a
    few points of a gradient-boosted model fitted here on the whole training split."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    from w2w.evaluate.baseline import features, index_bands

    scene = make_scene(tmp_path / "scene.zarr", 160, 160, seed=5)
    table = scene.info.classes
    full = scene.grid.full_window
    labels = scene.read_label(full)
    plan = make_split(
        scene.grid, 16, 16, SplitConfig(block_chips=2, val_fraction=0.0, test_fraction=0.4)
    )
    mapped = noisy_map(labels, rng, flip=0.3)
    cfg, result = evaluate_with_split(tmp_path, scene, mapped, plan)
    base = result.baseline
    b_matrix = np.asarray(base["accuracy"]["confusion_matrix"])
    assert b_matrix.sum() == result.matrix.sum() > 0
    pairs = base["mcnemar"]
    assert pairs["network_only_correct"] - pairs["baseline_only_correct"] == np.trace(
        result.matrix
    ) - np.trace(b_matrix)
    assert base["training_pixels"] == base["sampled_pixels"]  # under the cap: every pixel
    report = json.loads(Path(result.json).read_text())
    assert report["baseline"]["mcnemar"] == pairs
    assert "Against a per-pixel baseline" in Path(result.markdown).read_text()

    # The same model fitted here, from the whole scene in memory.
    image = scene.read_image(full)
    lut = np.full(256, -1)
    for i, c in enumerate(table):
        lut[c.id] = i
    valid = scene.valid_mask(image)
    train = (labels != 0) & valid & plan.pixel_mask(full, "train")
    test = (labels != 0) & plan.pixel_mask(full, "test") & (lut[mapped] >= 0)
    x = features(image.reshape(image.shape[0], -1), index_bands(list(BAND_NAMES)))
    model = HistGradientBoostingClassifier(max_iter=300, early_stopping=True, random_state=0)
    model.fit(x[train.ravel()], lut[labels][train])
    reference_oa = float((model.predict(x[test.ravel()]) == lut[labels][test]).mean())
    assert base["accuracy"]["overall_accuracy"] == pytest.approx(reference_oa, abs=0.03)
    assert reference_oa > 0.6

    off = evaluate(cfg.replace(baseline=False, output=str(tmp_path / "o")), progress=False)
    assert "off" in off.baseline["skipped"]
    np.testing.assert_array_equal(off.matrix, result.matrix)
    every = evaluate(cfg.replace(split="all", output=str(tmp_path / "a")), progress=False)
    assert "split" in every.baseline["skipped"]


def test_the_baseline_fits_sparse_labels_with_a_class_of_one_pixel() -> None:
    """Field labels can hold a class with one training pixel: early stopping's held-out split
    (by class) cannot be made then, and evaluate failed with an internal error; the baseline
    now boosts a fixed number of rounds when a class is that rare."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    from w2w.evaluate.baseline import boosting_settings

    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(3000, dtype=int), np.ones(3000, dtype=int), [2]]
    x = rng.normal(size=(len(y), 4)) + y[:, None]
    with pytest.raises(ValueError, match="least populated class"):
        HistGradientBoostingClassifier(early_stopping=True, random_state=0).fit(x, y)
    settings = boosting_settings(y)
    assert settings["early_stopping"] is False
    model = HistGradientBoostingClassifier(random_state=0, **settings).fit(x, y)
    assert (model.predict(x[:6000]) == y[:6000]).mean() > 0.8
    assert boosting_settings(np.repeat([0, 1, 2], 500))["early_stopping"] is True
