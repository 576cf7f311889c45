"""Training: DDP over two CPU workers, metrics summed across workers, resume, sparse labels."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.conftest import CHIAPAS, TINY_MODEL
from w2w.core.errors import BundleError, ConfigError, InputError
from w2w.core.split import SplitConfig, make_split
from w2w.ingest.synth import SynthConfig
from w2w.model.bundle import load_bundle
from w2w.train import TrainConfig, prepare, train, validate
from w2w.train.chips import IGNORE, ChipConfig, ChipIndex, select_chips
from w2w.train.losses import LossConfig, SegmentationLoss


def test_ddp_training_learns(tiny_run) -> None:
    cfg, report = tiny_run
    losses = [h["train_loss"] for h in report.history]
    assert len(losses) == cfg.epochs
    assert losses[-1] < 0.8 * losses[0], losses
    best = report.metrics
    # Six classes: guessing scores a mean IoU under 0.1 and the largest class is ~35%.
    assert best["val_miou"] > 0.2, [h["val_miou"] for h in report.history]
    assert best["val_oa"] > 0.5
    run = Path(report.run_dir)
    for name in ("metrics.json", "metrics.csv", "learning_curves.png", "confusion_matrix.png"):
        assert (run / name).stat().st_size > 0
    assert json.loads((run / "metrics.json").read_text())[-1]["epoch"] == cfg.epochs - 1


def test_validation_summed_over_workers_equals_one_process(tiny_run) -> None:
    """The per-epoch metric reported by 2 workers equals one pass over all val chips."""
    cfg, report = tiny_run
    bundle = load_bundle(report.bundle)
    plan = prepare(cfg, progress=False)
    windows = list(plan.val_windows)
    assert len(windows) >= 2  # both workers had validation chips to sum
    torch.set_num_threads(1)  # as in each Ray worker, so floating point matches exactly
    cm = validate(
        bundle.model(), plan.reader, windows, len(bundle.classes), torch.device("cpu"), 16, False
    )
    np.testing.assert_array_equal(cm, np.asarray(bundle.metrics["val_confusion"]))
    assert int(cm.sum()) == bundle.metrics["val_pixels"]


def test_bundle_describes_the_model(tiny_run) -> None:
    _cfg, report = tiny_run
    b = load_bundle(report.bundle)
    assert b.bands == ("B02", "B03", "B04", "B08", "B11", "B12")
    assert [c.name for c in b.classes] == [
        "forest",
        "grassland",
        "shrubland",
        "water",
        "urban",
        "bare",
    ]
    assert b.chip_size == 64 and b.spec.encoder == TINY_MODEL["encoder"]
    assert b.split is not None and b.split.summary()["test"] > 0
    assert b.content_hash.startswith("sha256:")
    assert b.metrics["epoch"] == report.best_epoch


def test_a_driver_reads_and_verifies_a_bundle_without_torch(tiny_run, tmp_path: Path) -> None:
    """``weights=False`` (what predict's, evaluate's and export's drivers use): the metadata,
    the parameter count from the header and a verified hash, with torch never imported; a
    changed weight is still refused."""
    bundle = tiny_run[1].bundle
    code = (
        "import sys\n"
        "from w2w.model.bundle import load_bundle\n"
        f"b = load_bundle({bundle!r}, weights=False)\n"
        "print(b.content_hash, b.parameters, len(b.state), 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    digest, parameters, tensors, torch_loaded = out.stdout.split()
    full = load_bundle(bundle)
    assert digest == full.content_hash
    assert int(parameters) == sum(t.numel() for t in full.state.values()) > 0
    assert (tensors, torch_loaded) == ("0", "False")
    with pytest.raises(BundleError, match="without its weights"):
        load_bundle(bundle, weights=False).model()
    # One weight changed in place (same size, same header): the hash no longer matches.
    raw = bytearray(Path(bundle).read_bytes())
    raw[-3] ^= 0xFF
    edited = tmp_path / "edited.safetensors"
    edited.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="content hash mismatch"):
        load_bundle(str(edited), weights=False)


def test_loss_ignores_unlabelled_pixels() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 8, 8, requires_grad=True)
    target = torch.randint(0, 4, (2, 8, 8))
    target[:, :4] = IGNORE
    for terms in (
        {"ce": 1},
        {"ce": 0, "dice": 1},
        {"ce": 0, "focal": 1},
        {"ce": 1, "dice": 0.5, "focal": 0.5},
    ):
        loss_fn = SegmentationLoss(
            LossConfig(**terms, label_smoothing=0.1), 4, [1.0, 2.0, 0.5, 1.0]
        )
        loss = loss_fn(logits, target)
        (grad,) = torch.autograd.grad(loss, logits)
        assert torch.all(grad[:, :, :4] == 0), terms  # no gradient from unlabelled pixels
        changed = logits.detach().clone()
        changed[:, :, :4] = torch.randn(2, 4, 4, 8) * 10
        assert float(loss_fn(changed, target)) == pytest.approx(float(loss.detach()), rel=1e-6)
    empty = torch.full((2, 8, 8), IGNORE)
    assert float(SegmentationLoss(LossConfig(), 4, None)(logits, empty).detach()) == 0.0


def test_chip_filters_and_class_balance() -> None:
    grid = SynthConfig(output="u", height=256, width=256).grid
    counts = np.zeros((4, 4, 3), dtype=np.int64)
    counts[..., 0] = 100  # common class everywhere
    counts[0, 0, 2] = 5  # a rare class in one chip
    valid = np.full((4, 4), 64 * 64)
    valid[3, 3] = 10  # almost all nodata
    counts[3, 2] = 0  # no labels
    index = ChipIndex(64, 64, (4, 4), valid, counts)
    plan = make_split(grid, 64, 64, SplitConfig(val_fraction=0, test_fraction=0))
    sel = select_chips(
        index, plan, "train", ChipConfig(size=64, min_valid_fraction=0.5), balance=True
    )
    kept = {(w.row, w.col) for w in sel.windows}
    assert (192, 192) not in kept and (192, 128) not in kept and len(kept) == 14
    repeats = dict(zip([(w.row, w.col) for w in sel.windows], sel.repeats, strict=True))
    assert repeats[(0, 0)] > 1 and all(r == 1 for k, r in repeats.items() if k != (0, 0))


def test_bad_training_settings(synthetic_scene: str, tmp_path: Path) -> None:
    base = {"scene": synthetic_scene, "storage_path": str(tmp_path), "chips": {"size": 64}}
    with pytest.raises(ConfigError, match="unknown model architecture 'Unnet'; choose one of"):
        prepare(TrainConfig.from_dict({**base, "model": {"arch": "Unnet"}}), progress=False)
    with pytest.raises(ConfigError, match="unknown encoder 'resnet1000'"):
        prepare(TrainConfig.from_dict({**base, "model": {"encoder": "resnet1000"}}), progress=False)
    # The model is left unset: on this small scene, the small-scene recipe's (stride 8).
    with pytest.raises(ConfigError, match="chip size 50 is not a multiple of 8.*use 56"):
        prepare(TrainConfig.from_dict({**base, "chips": {"size": 50}}), progress=False)
    with pytest.raises(ConfigError, match="unknown key 'model.archh'"):
        TrainConfig.from_dict({**base, "model": {"archh": "Unet"}})
    with pytest.raises(ConfigError, match="class_weights has 2 values but the scene has 6 classes"):
        prepare(TrainConfig.from_dict({**base, "loss": {"class_weights": [1, 2]}}), progress=False)


def test_scene_without_labels_is_refused(tmp_path: Path, rng: np.random.Generator) -> None:
    from tests.conftest import write_tif
    from w2w.ingest import IngestConfig, ingest

    img = write_tif(tmp_path / "i.tif", rng.integers(1, 100, (3, 64, 64)).astype("uint16"))
    ingest(
        IngestConfig(images=[str(img)], output=str(tmp_path / "s.zarr"), engine="local"),
        progress=False,
    )
    with pytest.raises(InputError, match="has no labels"):
        prepare(TrainConfig(scene=str(tmp_path / "s.zarr")), progress=False)


def _train_yaml(tmp_path: Path, scene: str, epochs: int) -> Path:
    cfg = {
        "train": {
            "scene": scene,
            "run_name": "resume",
            "storage_path": str(tmp_path / "runs"),
            "model": TINY_MODEL,
            "chips": {"size": 64},
            "split": {"block_chips": 2},
            "epochs": epochs,
            "batch_size": 8,
            "workers": {"num_workers": 1},
            "patience": None,
        }
    }
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
@pytest.mark.rotate
def test_killed_training_resumes_from_its_checkpoint(
    tmp_path: Path, synthetic_scene: str, ray_session: None
) -> None:
    """Kill the whole training job after its first checkpoint; re-running the same run name
    continues from that checkpoint instead of starting over."""
    config = _train_yaml(tmp_path, synthetic_scene, epochs=4)
    run_dir = tmp_path / "runs" / "resume"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "w2w.cli", "--quiet", "train", "--config", str(config)],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            # Ray Train resumes from the checkpoints its snapshot lists.
            if (run_dir / "checkpoint_manager_snapshot.json").exists():
                break
            time.sleep(0.5)
        assert proc.poll() is None, "training ended before it could be killed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    first = json.loads((run_dir / "metrics.json").read_text())
    assert 1 <= len(first) < 4

    report = train(TrainConfig.from_yaml(config, section="train"), progress=False)
    assert report.starts[0] == 0 and report.starts[-1] >= 1  # resumed, not from scratch
    assert [h["epoch"] for h in report.history] == [0, 1, 2, 3]
    assert report.history[0] == first[0]  # epoch 0 kept from the killed run, not redone


def test_resuming_with_other_model_settings_is_refused(
    tmp_path: Path, synthetic_scene: str
) -> None:
    from w2w.train import claim_run

    cfg = TrainConfig.from_yaml(_train_yaml(tmp_path, synthetic_scene, 1), section="train")
    plan = prepare(cfg, progress=False)
    claim_run(cfg, plan)
    other = cfg.replace(
        model={**TINY_MODEL, "options": {"encoder_depth": 3, "decoder_channels": [16, 8, 8]}}
    )
    with pytest.raises(ConfigError, match="started with other model settings"):
        claim_run(other, prepare(other, progress=False))
    claim_run(other.replace(overwrite=True), prepare(other, progress=False))  # starts afresh


@pytest.mark.skipif(not CHIAPAS.exists(), reason="real imagery (../shared/data/real) absent")
def test_sparse_labels_chiapas(tmp_path: Path, ray_session: None) -> None:
    """718 labelled pixels: unlabelled pixels never enter the loss or the metrics."""
    from w2w.core.store import SceneStore
    from w2w.ingest import IngestConfig, ingest

    scene = str(tmp_path / "chiapas.zarr")
    ingest(
        IngestConfig(
            images=[str(CHIAPAS / "LE70220491999322EDC01_stack.gtif")],
            label=str(CHIAPAS / "training_data.gtif"),
            output=scene,
            chunk=64,
            block=128,
            engine="local",
        ),
        progress=False,
    )
    cfg = TrainConfig.from_dict(
        {
            "scene": scene,
            "run_name": "chiapas",
            "storage_path": str(tmp_path / "runs"),
            "model": TINY_MODEL,
            "chips": {"size": 64, "stride": 64},
            "split": {"block_chips": 1, "val_fraction": 0.25, "test_fraction": 0.2, "seed": 3},
            "epochs": 3,
            "batch_size": 4,
            "workers": {"num_workers": 2},
            "patience": None,
        }
    )
    report = train(cfg, progress=False)
    plan = prepare(cfg, progress=False)
    store = SceneStore.open(scene)
    labelled_in_val = 0
    for win in plan.val_windows:
        image = store.read_image(win)
        lab = store.read_label(win)
        labelled_in_val += int(((lab != 0) & store.valid_mask(image, win)).sum())
    assert labelled_in_val > 0
    for h in report.history:
        assert h["val_pixels"] == labelled_in_val  # exactly the labelled pixels, nothing else
    assert report.chips["train"]["labelled_pixels"] + labelled_in_val <= 718
    assert np.isfinite([h["train_loss"] for h in report.history]).all()


def test_spectral_branch_and_context_bound() -> None:
    """The per-pixel branch adds its logits; with a bound, the network's share of a pixel's
    logits never exceeds it however large the network's own logits are."""
    from w2w.model.models import ModelSpec, SpectralContextModel, build_model

    options = {**TINY_MODEL.get("options", {}), "spectral_branch": 8, "context_bound": 2.0}
    spec = ModelSpec(TINY_MODEL["arch"], TINY_MODEL["encoder"], 4, 3, options)
    model = build_model(spec)
    assert isinstance(model, SpectralContextModel)
    with torch.no_grad():
        for p in model.network.parameters():
            p.mul_(50.0)  # a network with huge logits
    model.eval()
    x = torch.randn(2, 4, 64, 64)
    with torch.no_grad():
        share = model(x) - model.spectral(x)
        raw = model.network(x)
    assert raw.abs().max() > 2.0
    assert share.abs().max() <= 2.0 + 1e-5
    torch.testing.assert_close(share, 2.0 * torch.tanh(raw / 2.0))
    with pytest.raises(ConfigError, match="context_bound"):
        build_model(
            ModelSpec(TINY_MODEL["arch"], TINY_MODEL["encoder"], 4, 3, {"context_bound": 2})
        )


def test_pixel_mlp_sees_each_pixel_alone() -> None:
    """The per-pixel architecture: a pixel's logits depend on its own bands only; with no
    hidden layer it is a linear map of them (checked against the weights here)."""
    from w2w.model.models import ModelSpec, build_model

    model = build_model(ModelSpec("pixelmlp", "none", 4, 3, {"hidden": 8})).eval()
    x = torch.randn(1, 4, 16, 16)
    y = x.clone()
    y[0, :, 5, 7] += 3.0
    with torch.no_grad():
        changed = (model(x) - model(y)).abs().sum(dim=1)[0] > 0
    assert changed[5, 7] and changed.sum() == 1
    linear = build_model(ModelSpec("PixelMLP", "none", 4, 3, {"layers": 0})).eval()
    conv = linear.net[0]
    with torch.no_grad():
        expected = torch.einsum("kc,nchw->nkhw", conv.weight[:, :, 0, 0], x)
        expected += conv.bias[None, :, None, None]
        torch.testing.assert_close(linear(x), expected)
    with pytest.raises(ConfigError, match="PixelMLP needs"):
        build_model(ModelSpec("PixelMLP", "none", 4, 3, {"layers": 1, "hidden": 0}))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_in_bf16_on_a_gpu(tmp_path: Path, synthetic_scene: str, ray_session: None) -> None:
    """Three epochs of DDP training with one GPU worker in bf16: the loss falls and the bundle
    predicts on the CPU."""
    cfg = TrainConfig.from_dict(
        {
            "scene": synthetic_scene,
            "run_name": "gpu-bf16",
            "storage_path": str(tmp_path),
            "model": TINY_MODEL,
            "chips": {"size": 64, "stride": 64},
            "epochs": 3,
            "batch_size": 8,
            "precision": "bf16",
            "workers": {"num_workers": 1, "use_gpu": True},
            "patience": None,
        }
    )
    report = train(cfg, progress=False)
    losses = [h["train_loss"] for h in report.history]
    assert len(losses) == 3 and all(np.isfinite(losses)) and losses[-1] < losses[0]
    bundle = load_bundle(report.bundle)
    with torch.no_grad():
        out = bundle.model("cpu")(torch.zeros(1, len(bundle.bands), 64, 64))
    assert out.shape == (1, len(bundle.classes), 64, 64)


@pytest.mark.parametrize("fmt", ["torchscript", "pt2"])
def test_bundle_export_gives_the_bundles_logits(tiny_run, tmp_path: Path, fmt: str) -> None:  # type: ignore[no-untyped-def]
    """The exported model, loaded with plain torch, gives the bundle model's logits; its
    metadata file carries the bundle's bands, normalisation and classes."""
    from typer.testing import CliRunner

    from w2w.cli import app

    bundle = load_bundle(tiny_run[1].bundle)
    target = tmp_path / f"model.{fmt}"
    result = CliRunner().invoke(
        app, ["bundle-export", tiny_run[1].bundle, "-o", str(target), "--format", fmt]
    )
    assert result.exit_code == 0, result.output
    x = torch.randn(3, len(bundle.bands), bundle.chip_size, bundle.chip_size)
    with torch.no_grad():
        expected = bundle.model("cpu")(x)
        if fmt == "torchscript":
            got = torch.jit.load(str(target))(x)
        else:
            got = torch.export.load(str(target)).module()(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    meta = json.loads(Path(f"{target}.json").read_text())
    assert meta["bands"] == list(bundle.bands)
    assert meta["content_hash"] == bundle.content_hash
    assert [c["id"] for c in meta["classes"]] == [c.id for c in bundle.classes]
    again = CliRunner().invoke(
        app, ["bundle-export", tiny_run[1].bundle, "-o", str(target), "--format", fmt]
    )
    assert again.exit_code != 0 and "pass --overwrite" in again.output


def test_onnx_export_gives_the_bundles_logits(tiny_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The ONNX file, run by ONNX Runtime (not torch), gives the bundle model's logits
    within 1e-4, for another batch size than the one it was traced with."""
    from w2w.model.serving import export_bundle

    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    bundle = load_bundle(tiny_run[1].bundle)
    target = tmp_path / "model.onnx"
    export_bundle(tiny_run[1].bundle, str(target), "onnx")
    x = torch.randn(3, len(bundle.bands), bundle.chip_size, bundle.chip_size)
    with torch.no_grad():
        expected = bundle.model("cpu")(x).numpy()
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    (got,) = session.run(["logits"], {"image": x.numpy()})
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-4
    assert json.loads(Path(f"{target}.json").read_text())["content_hash"] == bundle.content_hash


def test_onnx_export_without_its_packages_says_what_to_install(
    tiny_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    from w2w.model.serving import export_bundle

    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed
    with pytest.raises(ConfigError, match="pip install onnx onnxscript"):
        export_bundle(tiny_run[1].bundle, str(tmp_path / "m.onnx"), "onnx")
    assert not list(tmp_path.iterdir())
