"""Self-supervised pretraining: the views line up, the loss is VICReg's, a run lowers its own
loss and writes an encoder file that training loads, and a file that does not fit is refused
before any work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import TINY_MODEL, write_tif
from w2w.core.errors import BundleError, ConfigError
from w2w.model.encoder_file import EncoderFile, load_encoder, save_encoder
from w2w.model.models import build_model, load_weights
from w2w.model.normalization import Normalizer
from w2w.model.spec import ModelSpec
from w2w.train.pretrain.config import PretrainConfig, VICRegConfig, ViewsConfig
from w2w.train.pretrain.vicreg import local_pairs, vicreg_loss, vicreg_terms
from w2w.train.pretrain.views import make_view, symmetry, undo, undo_batch

BANDS = ("B02", "B03", "B04", "B08", "B11", "B12")


def test_every_symmetry_is_undone_and_lines_up_pooled_features() -> None:
    """A feature map of a turned view, turned back, equals the feature map of the chip: checked
    for all eight symmetries with a map that is exactly equivariant (average pooling)."""
    x = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).reshape(2, 3, 16, 16)
    seen = set()
    for k in range(4):
        for flip in (False, True):
            turned = symmetry(x, k, flip)
            seen.add(turned.numpy().tobytes())
            torch.testing.assert_close(undo(turned, k, flip), x, rtol=0, atol=0)
            pooled = torch.nn.functional.avg_pool2d(turned, 4)
            torch.testing.assert_close(
                undo_batch(pooled, [(k, flip)] * 2),
                torch.nn.functional.avg_pool2d(x, 4),
                rtol=0,
                atol=0,
            )
    assert len(seen) == 8


def test_a_view_keeps_band_ratios_and_invalid_pixels() -> None:
    """Gain shared by all bands keeps the ratios between bands (the spectral signal); invalid
    pixels (all bands 0) stay 0; the same generator seed gives the same view."""
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(4, 6, 32, 32) + 0.5
    x[:, :, :4, :] = 0.0
    cfg = ViewsConfig(band_jitter=0, offset=0, noise=0, blur=0, erase=0, rotate=False)
    view, moves = make_view(x, cfg, gen)
    assert moves == [(0, False)] * 4
    ratio = view[:, 0, 8:, :] / view[:, 3, 8:, :]
    torch.testing.assert_close(ratio, x[:, 0, 8:, :] / x[:, 3, 8:, :])
    assert float(view[:, :, :4, :].abs().max()) == 0.0
    assert not torch.allclose(view, x)  # the gain did change the view
    full = ViewsConfig()
    a, _ = make_view(x, full, torch.Generator().manual_seed(9))
    b, _ = make_view(x, full, torch.Generator().manual_seed(9))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def _vicreg_numpy(za: np.ndarray, zb: np.ndarray, eps: float = 1e-4) -> tuple[float, ...]:
    """VICReg's three terms written out from the paper's definitions, in numpy."""
    inv = float(((za - zb) ** 2).mean())
    var = cov = 0.0
    n, d = za.shape
    for z in (za, zb):
        zc = z - z.mean(axis=0)
        std = np.sqrt(zc.var(axis=0, ddof=1) + eps)
        var += float(np.maximum(0.0, 1 - std).mean()) / 2
        c = zc.T @ zc / (n - 1)
        cov += float((c**2).sum() - (np.diag(c) ** 2).sum()) / d / 2
    return inv, var, cov


def test_the_loss_terms_equal_vicregs_definitions() -> None:
    rng = np.random.default_rng(0)
    za = rng.normal(size=(64, 16)) * 0.7
    zb = za + rng.normal(size=(64, 16)) * 0.3
    got = vicreg_terms(torch.tensor(za), torch.tensor(zb))
    np.testing.assert_allclose([float(t) for t in got], _vicreg_numpy(za, zb), rtol=1e-6)
    loss, terms = vicreg_loss(torch.tensor(za), torch.tensor(zb), VICRegConfig())
    assert float(loss) == pytest.approx(
        25 * terms["invariance"] + 25 * terms["variance"] + terms["covariance"]
    )
    # A collapsed encoder (every embedding alike) agrees perfectly and is punished for it.
    same = torch.ones(64, 16)
    inv, var, _ = vicreg_terms(same, same)
    assert float(inv) == 0.0 and float(var) > 0.95


def test_local_pairs_keep_positions_over_valid_ground() -> None:
    la = torch.randn(2, 8, 4, 4)
    valid = torch.ones(2, 16, 16, dtype=torch.bool)
    valid[0, :, :8] = False  # the left half of the first chip is outside the state
    pa, pb = local_pairs(la, la + 1, valid, 10_000, torch.Generator().manual_seed(0))
    assert pa.shape == (16 + 8, 8)
    torch.testing.assert_close(pb - pa, torch.ones_like(pa))
    few, _ = local_pairs(la, la, valid, 5, torch.Generator().manual_seed(0))
    assert few.shape == (5, 8)


# -- the encoder file ------------------------------------------------------------------------


def _encoder_file(
    tmp_path: Path,
    *,
    bands: tuple[str, ...] = BANDS,
    encoder: str = TINY_MODEL["encoder"],
    **options: object,
) -> str:
    spec = ModelSpec("Unet", encoder, len(bands), 1, {**TINY_MODEL["options"], **options})
    norm = Normalizer(
        "percentile",
        (0.0,) * len(bands),
        (1.0,) * len(bands),
        (0.0,) * len(bands),
        (1.0,) * len(bands),
    )
    url = str(tmp_path / "encoder.safetensors")
    save_encoder(
        url,
        EncoderFile(spec, bands, norm, 64, {"name": "vicreg-dense"}),
        build_model(spec).encoder.state_dict(),
    )
    return url


@pytest.mark.parametrize("encoder", [TINY_MODEL["encoder"], "resnet18"])
def test_an_encoder_file_loads_into_the_model_train_builds(tmp_path: Path, encoder: str) -> None:
    """A timm encoder and one of smp's own (whose ``load_state_dict`` returns nothing)."""
    url = _encoder_file(tmp_path, encoder=encoder)
    enc = load_encoder(url, weights=True)
    assert enc.content_hash.startswith("sha256:") and enc.bands == BANDS
    model = build_model(ModelSpec("Unet", encoder, 6, 4, TINY_MODEL["options"]))
    load_weights(model, url, encoder_only=True)
    for name, value in model.encoder.state_dict().items():
        torch.testing.assert_close(value, enc.state[name], rtol=0, atol=0)
    raw = bytearray(Path(url).read_bytes())
    raw[-5] ^= 0xFF  # one weight changed
    Path(url).write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="content hash mismatch"):
        load_encoder(url)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"model": {"encoder": "resnet18"}},
            "are for encoder tu-resnet10t, but the model uses resnet18",
        ),
        (
            {"model": {"options": {"encoder_depth": 4, "decoder_channels": [32, 16, 8, 8]}}},
            "other encoder options",
        ),
        ({"normalization": "zscore"}, "train with --normalization percentile"),
        ({"bands": ("B02", "B03", "B04", "B08", "B12", "B11")}, "pretrained on bands"),
    ],
    ids=["encoder", "options", "normalization", "bands"],
)
def test_train_refuses_an_encoder_file_that_does_not_fit_before_any_work(
    synthetic_scene: str, tmp_path: Path, change: dict, message: str
) -> None:
    from w2w.train import TrainConfig, prepare

    url = _encoder_file(tmp_path, bands=change.pop("bands", BANDS))
    model = {**TINY_MODEL, **change.pop("model", {}), "encoder_weights": url}
    cfg = TrainConfig.from_dict(
        {
            "scene": synthetic_scene,
            "storage_path": str(tmp_path / "runs"),
            "model": model,
            "chips": {"size": 64},
            **change,
        }
    )
    with pytest.raises(ConfigError, match=message):
        prepare(cfg, progress=False)
    assert not (tmp_path / "runs").exists()


def test_pretrain_refuses_what_it_cannot_pretrain(synthetic_scene: str, tmp_path: Path) -> None:
    from w2w.train.pretrain.plan import prepare

    with pytest.raises(ConfigError, match="has no encoder to pretrain"):
        prepare(PretrainConfig(scene=synthetic_scene, model={"arch": "PixelMLP"}), progress=False)
    with pytest.raises(ConfigError, match="pretrain starts from random weights"):
        PretrainConfig.from_dict({"scene": synthetic_scene, "model": {"encoder_weights": "e.st"}})
    with pytest.raises(ConfigError, match="not a multiple of"):
        prepare(
            PretrainConfig(scene=synthetic_scene, model=TINY_MODEL, chip_size=60), progress=False
        )


# -- a run -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pretrained(ray_session: None, synthetic_scene: str, tmp_path_factory: pytest.TempPathFactory):
    """Two DDP workers pretraining the tiny model's encoder on the synthetic scene."""
    from w2w.api import pretrain

    runs = tmp_path_factory.mktemp("pretrain")
    cfg = PretrainConfig.from_dict(
        {
            "scene": synthetic_scene,
            "storage_path": str(runs),
            "model": TINY_MODEL,
            "chip_size": 64,
            "stride": 32,
            "epochs": 4,
            "batch_size": 16,
            "optim": {"lr": 0.002, "warmup_epochs": 0},
            "workers": {"num_workers": 2},
        }
    )
    return cfg, pretrain(cfg, progress=False)


def test_pretraining_lowers_its_loss_and_writes_an_encoder_train_takes(
    pretrained, synthetic_scene: str, tmp_path: Path
) -> None:
    from w2w.train import TrainConfig, prepare

    cfg, report = pretrained
    losses = [h["loss"] for h in report.history]
    assert len(losses) == cfg.epochs and report.starts == [0]
    assert losses[-1] < 0.9 * losses[0], losses
    assert report.history[-1]["std"] > 0.3  # the embeddings did not collapse
    enc = load_encoder(report.output)
    assert enc.content_hash == report.content_hash and enc.bands == BANDS
    assert enc.pretraining["epochs_run"] == cfg.epochs
    history = json.loads((Path(report.run_dir) / "metrics.json").read_text())
    assert [h["epoch"] for h in history] == list(range(cfg.epochs))
    # Its weights are not the random ones the same seed builds.
    fresh = build_model(enc.spec).encoder.state_dict()
    loaded = load_encoder(report.output, weights=True).state
    assert any(not torch.equal(fresh[k], loaded[k]) for k in fresh if fresh[k].is_floating_point())
    plan = prepare(
        TrainConfig.from_dict(
            {
                "scene": synthetic_scene,
                "storage_path": str(tmp_path),
                "model": {**TINY_MODEL, "encoder_weights": report.output},
                "chips": {"size": 64},
                "split": {"block_chips": 2},
            }
        ),
        progress=False,
    )
    assert plan.normalizer == enc.normalizer


def test_a_pretraining_run_resumes_where_it_stopped(pretrained) -> None:
    from w2w.api import pretrain

    cfg, first = pretrained
    more = pretrain(cfg.replace(epochs=cfg.epochs + 1), progress=False)
    assert more.starts == [0, cfg.epochs]
    assert [h["epoch"] for h in more.history] == list(range(cfg.epochs + 1))
    assert more.history[: cfg.epochs] == first.history
    assert more.content_hash != first.content_hash


def test_a_pipeline_pretrains_the_encoder_it_trains(tmp_path: Path) -> None:
    from w2w.pipeline import PipelineConfig, stage_configs

    cfg = PipelineConfig.from_dict(
        {
            "workdir": str(tmp_path),
            "ingest": {"images": ["a.tif"]},
            "pretrain": {"epochs": 2},
            "train": {"model": TINY_MODEL},
        }
    )
    stages = stage_configs(cfg)
    assert list(stages) == ["ingest", "pretrain", "train"]
    pre, train = stages["pretrain"], stages["train"]
    assert pre.model.encoder == TINY_MODEL["encoder"] and pre.model.options == TINY_MODEL["options"]
    assert train.model.encoder_weights == pre.output_url == str(tmp_path / "encoder.safetensors")
    # A train section that names its own weights keeps them.
    cfg = PipelineConfig.from_dict(
        {"workdir": str(tmp_path), "pretrain": {}, "train": {"model": {"weights": "m.pt"}}}
    )
    assert stage_configs(cfg)["train"].model.encoder_weights is None


def test_a_pretrained_encoder_learns_at_a_tenth_of_the_rate_unless_told(tmp_path: Path) -> None:
    from w2w.train import TrainConfig
    from w2w.train.worker import param_groups

    model = build_model(ModelSpec("Unet", TINY_MODEL["encoder"], 6, 4, TINY_MODEL["options"]))
    encoder = {id(p) for p in model.encoder.parameters()}
    base = {"scene": str(tmp_path / "s.zarr"), "model": TINY_MODEL, "optim": {"lr": 0.01}}
    scratch = param_groups(model, TrainConfig.from_dict(base))
    assert len(scratch) == 1 and scratch[0]["lr"] == 0.01
    pre = {**base, "model": {**TINY_MODEL, "encoder_weights": str(tmp_path / "e.safetensors")}}
    enc, rest = param_groups(model, TrainConfig.from_dict(pre))
    assert enc["lr"] == pytest.approx(0.001) and rest["lr"] == 0.01
    assert {id(p) for p in enc["params"]} == encoder
    assert not encoder & {id(p) for p in rest["params"]}
    told = {**pre, "optim": {"lr": 0.01, "encoder_lr_ratio": 1.0}}
    assert len(param_groups(model, TrainConfig.from_dict(told))) == 1


def _lit_scene(root: Path, seed: int) -> tuple[str, np.ndarray, int]:
    """A scene of 32 px squares of two classes that differ only in the ratios between bands,
    each square lit by its own gain (0.4 to 2.5: haze, slope, season), which dwarfs the
    difference: (scene store, class of each square, square size)."""
    from w2w.api import ingest
    from w2w.ingest.config import IngestConfig

    rng = np.random.default_rng(seed)
    size, n = 32, 8
    classes = rng.integers(0, 2, (n, n))
    gain = np.exp(rng.uniform(np.log(0.4), np.log(2.5), (n, n)))
    spectra = np.array([[1.0, 0.6, 0.8, 0.3], [0.6, 1.0, 0.8, 0.3]], dtype=np.float32)
    image = np.zeros((4, n * size, n * size), np.float32)
    for i in range(n):
        for j in range(n):
            texture = 1 + 0.1 * rng.standard_normal((size, size))
            square = spectra[classes[i, j]][:, None, None] * gain[i, j] * texture[None]
            image[:, i * size : (i + 1) * size, j * size : (j + 1) * size] = square
    tif = write_tif(root / "lit.tif", (image * 1000).astype(np.uint16))
    scene = str(root / "lit.zarr")
    cfg = IngestConfig(
        images=[str(tif)], band_names=["B02", "B03", "B04", "B08"], output=scene, engine="local"
    )
    ingest(cfg, progress=False)
    return scene, classes.ravel(), size


def _centroid_accuracy(features: np.ndarray, y: np.ndarray, k: int, trials: int = 200) -> float:
    """Mean accuracy of a nearest-centroid classifier from ``k`` labelled squares per class,
    over ``trials`` draws of the labelled squares (the few-label probe of an encoder)."""
    rng = np.random.default_rng(1)
    scores = []
    for _ in range(trials):
        picks = [rng.choice(np.flatnonzero(y == c), k, replace=False) for c in (0, 1)]
        centroids = np.stack([features[p].mean(0) for p in picks])
        nearest = ((features[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
        scores.append(float((nearest == y).mean()))
    return float(np.mean(scores))


def test_a_pretrained_encoder_separates_what_random_weights_bury_in_lighting(
    ray_session: None, tmp_path: Path
) -> None:
    """Where the pretext is informative -- the views differ in lighting, so pretraining learns
    to see through it -- the pretrained encoder's features tell the two classes apart from
    three labelled squares each far better than the same encoder with random weights, whose
    features follow the lighting."""
    from w2w.api import pretrain
    from w2w.core.store import SceneStore

    scene, y, size = _lit_scene(tmp_path, seed=0)
    cfg = PretrainConfig.from_dict(
        {
            "scene": scene,
            "storage_path": str(tmp_path / "runs"),
            "model": TINY_MODEL,
            "chip_size": 32,
            "stride": 16,
            "epochs": 8,
            "batch_size": 32,
            "views": {"brightness": 0.6},
            "optim": {"lr": 0.003, "warmup_epochs": 0},
            "workers": {"num_workers": 1},
            "normalization": "zscore",
        }
    )
    enc = load_encoder(pretrain(cfg, progress=False).output, weights=True)
    store = SceneStore.open(scene)
    x = enc.normalizer(store.read_image(store.grid.full_window).astype(np.float32))
    n = x.shape[1] // size
    squares = [
        x[:, i * size : (i + 1) * size, j * size : (j + 1) * size]
        for i in range(n)
        for j in range(n)
    ]
    chips = torch.from_numpy(np.stack(squares)).float()

    def features(encoder: torch.nn.Module) -> np.ndarray:
        encoder.eval()
        with torch.no_grad():
            return encoder(chips)[-1].mean((2, 3)).numpy()

    torch.manual_seed(0)
    random_init = build_model(enc.spec).encoder
    pretrained = build_model(enc.spec).encoder
    pretrained.load_state_dict(enc.state)
    scratch = _centroid_accuracy(features(random_init), y, k=3)
    learnt = _centroid_accuracy(features(pretrained), y, k=3)
    assert learnt >= 0.8 and learnt >= scratch + 0.15, (scratch, learnt)
