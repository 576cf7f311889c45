"""Published encoder weights (smp's on the Hugging Face hub, torchgeo's through torch.hub) are
loaded by the libraries' own code from a cache the test fills with checkpoints it makes --
nothing is downloaded -- their first convolution takes the scene's bands by name, and a
checkpoint that does not fit or is not there is refused before any work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from w2w.core.errors import ConfigError, InputError
from w2w.model.published import initial_encoder, is_published_name

BANDS = ("B02", "B03", "B04", "B08", "B11", "B12")


def _smp_encoder(name: str) -> torch.nn.Module:
    from segmentation_models_pytorch.encoders import get_encoder

    torch.manual_seed(0)
    return get_encoder(name, in_channels=3, weights=None)


def _smp_cache(root: Path, encoder: str, state: dict[str, torch.Tensor]) -> Path:
    """An HF hub cache holding ``state`` where smp's ``imagenet`` weights of ``encoder`` go
    (``models--<org>--<repo>/snapshots/<pinned revision>/model.safetensors``)."""
    from safetensors.torch import save_file
    from segmentation_models_pytorch.encoders import encoders

    entry = encoders[encoder]["pretrained_settings"]["imagenet"]
    repo = "models--" + entry["repo_id"].replace("/", "--")
    snap = root / repo / "snapshots" / entry["revision"]
    snap.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, snap / "model.safetensors")
    (snap / "config.json").write_text("{}")
    return root


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Empty hub caches in ``tmp_path`` and no downloads."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path


def test_names_and_files_are_told_apart() -> None:
    assert is_published_name("imagenet") and is_published_name(
        "ResNet50_Weights.SENTINEL2_ALL_MOCO"
    )
    for path in ("encoder.safetensors", "runs/enc.pth", "s3://b/e.safetensors", None, ""):
        assert not is_published_name(path)


def test_smp_imagenet_weights_load_from_the_hub_cache_with_bands_matched_by_name(
    offline: Path,
) -> None:
    published = _smp_encoder("resnet18").state_dict()
    _smp_cache(offline / "hf", "resnet18", published)
    target = _smp_encoder("resnet18")
    target.set_in_channels(len(BANDS))

    state, record = initial_encoder("imagenet", "resnet18", target, BANDS)

    w = published["conv1.weight"].numpy()  # (64, 3: red, green, blue, 7, 7)
    conv = state["conv1.weight"]
    assert conv.shape == (64, 6, 7, 7)
    # B02 blue <- channel 2, B03 green <- 1, B04 red <- 0; NIR and SWIR bands start at zero.
    np.testing.assert_array_equal(conv[:, 0], w[:, 2])
    np.testing.assert_array_equal(conv[:, 1], w[:, 1])
    np.testing.assert_array_equal(conv[:, 2], w[:, 0])
    assert not conv[:, 3:].any()
    for key, value in published.items():
        if key != "conv1.weight":
            np.testing.assert_array_equal(state[key], value.numpy())
    assert record["first_conv"]["bands"] == {
        "B02": "blue",
        "B03": "green",
        "B04": "red",
        "B08": None,
        "B11": None,
        "B12": None,
    }
    target.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)


def test_torchgeo_sentinel2_weights_load_from_the_torch_hub_cache(offline: Path) -> None:
    pytest.importorskip("torchgeo")
    import timm
    from torchgeo.models import get_weight

    weights = get_weight("ResNet18_Weights.SENTINEL2_ALL_MOCO")
    torch.manual_seed(1)
    published = timm.create_model("resnet18", in_chans=13, num_classes=0).state_dict()
    cache = offline / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(published, cache / Path(weights.url).name)
    target = _smp_encoder("resnet18")
    target.set_in_channels(len(BANDS))

    state, record = initial_encoder(
        "ResNet18_Weights.SENTINEL2_ALL_MOCO", "resnet18", target, BANDS
    )

    w = published["conv1.weight"].numpy()  # 13 bands B1..B12 with B8a after B8
    expected = np.stack([w[:, 1], w[:, 2], w[:, 3], w[:, 7], w[:, 11], w[:, 12]], axis=1)
    np.testing.assert_allclose(state["conv1.weight"], expected * 13 / 6, rtol=1e-6)
    np.testing.assert_array_equal(state["layer4.1.bn2.weight"], published["layer4.1.bn2.weight"])
    assert record["source"] == "torchgeo" and record["first_conv"]["rule"] == "by band name"
    with pytest.raises(ConfigError, match="trained for the resnet18 encoder, not resnet34"):
        initial_encoder("ResNet18_Weights.SENTINEL2_ALL_MOCO", "resnet34", target, BANDS)


def test_a_mismatched_or_missing_checkpoint_is_refused(offline: Path) -> None:
    target = _smp_encoder("resnet18")
    target.set_in_channels(len(BANDS))
    with pytest.raises(InputError, match=r"not in the Hugging Face cache .*--encoder-weights-file"):
        initial_encoder("imagenet", "resnet18", target, BANDS)
    # resnet34's weights where resnet18's belong: same names, other depth.
    _smp_cache(offline / "hf", "resnet18", _smp_encoder("resnet34").state_dict())
    with pytest.raises(InputError, match=r"do not fit the resnet18 encoder .*layer1\.2\."):
        initial_encoder("imagenet", "resnet18", target, BANDS)
    # A tensor of another shape: a resnet18 whose stem has 32 filters.
    other = _smp_encoder("resnet18").state_dict()
    other["bn1.weight"] = torch.ones(32)
    (offline / "hf").rename(offline / "hf-34")
    _smp_cache(offline / "hf", "resnet18", other)
    with pytest.raises(InputError, match=r"bn1\.weight is \(32,\), the encoder's \(64,\)"):
        initial_encoder("imagenet", "resnet18", target, BANDS)
    with pytest.raises(ConfigError, match="smp publishes: imagenet, ssl, swsl"):
        initial_encoder("imagenett", "resnet18", target, BANDS)


def test_a_local_file_stands_in_for_the_cache(offline: Path) -> None:
    from safetensors.torch import save_file

    published = _smp_encoder("resnet18").state_dict()
    save_file(published, offline / "resnet18-imagenet.safetensors")
    target = _smp_encoder("resnet18")
    target.set_in_channels(4)
    bands = ("red", "green", "blue", "nir")
    state, _ = initial_encoder(
        "imagenet", "resnet18", target, bands, str(offline / "resnet18-imagenet.safetensors")
    )
    np.testing.assert_array_equal(state["conv1.weight"][:, :3], published["conv1.weight"].numpy())


def test_unmatched_band_names_cycle_the_filters() -> None:
    from w2w.model.published import RGB, adapt_first_conv

    w = np.arange(2 * 3 * 1 * 1, dtype=np.float32).reshape(2, 3, 1, 1)
    adapted, record = adapt_first_conv(w, RGB, ("1", "2", "3", "4"))
    np.testing.assert_allclose(adapted[:, 3], w[:, 0] * 3 / 4)
    assert record["rule"].startswith("cycled")


def test_training_starts_from_published_weights_and_records_them(
    ray_session: None, synthetic_scene: str, offline: Path
) -> None:
    from w2w.model.bundle import load_bundle
    from w2w.train import TrainConfig, prepare, train

    published = _smp_encoder("resnet18").state_dict()
    _smp_cache(offline / "hf", "resnet18", published)
    cfg = TrainConfig.from_dict(
        {
            "scene": synthetic_scene,
            "storage_path": str(offline / "runs"),
            "model": {
                "arch": "Unet",
                "encoder": "resnet18",
                "encoder_weights": "imagenet",
                "options": {"encoder_depth": 3, "decoder_channels": [32, 16, 8]},
            },
            "chips": {"size": 64, "stride": 64},
            "split": {"block_chips": 2},
            "epochs": 1,
            "batch_size": 8,
            "workers": {"num_workers": 1},
        }
    )
    plan = prepare(cfg, progress=False)
    assert plan.initial_encoder is not None
    np.testing.assert_array_equal(
        plan.initial_encoder["layer1.0.conv1.weight"], published["layer1.0.conv1.weight"].numpy()
    )
    report = train(cfg, progress=False)
    bundle = load_bundle(report.bundle)
    record = bundle.training["published_weights"]
    assert record["name"] == "imagenet" and record["source"] == "smp"
    json.dumps(record)  # plain JSON in the bundle


def test_timm_weights_of_a_tu_encoder_load_from_the_hub_cache(offline: Path) -> None:
    """``imagenet`` for a ``tu-`` encoder is timm's default tag of the architecture, fetched
    from the repository timm names (at its ``main``, as timm does) through the hub cache; a
    tag timm does not list is refused with the ones it does."""
    import timm
    from safetensors.torch import save_file
    from segmentation_models_pytorch.encoders import get_encoder
    from timm.models import get_pretrained_cfg

    torch.manual_seed(1)
    published = timm.create_model("resnet10t", pretrained=False).state_dict()
    repo = get_pretrained_cfg("resnet10t").hf_hub_id  # timm/resnet10t.c3_in1k
    folder = offline / "hf" / ("models--" + repo.replace("/", "--"))
    snap = folder / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("0" * 40)
    save_file({k: v.contiguous() for k, v in published.items()}, snap / "model.safetensors")
    target = get_encoder("tu-resnet10t", in_channels=len(BANDS), weights=None, depth=3)

    state, record = initial_encoder("imagenet", "tu-resnet10t", target, BANDS)

    assert record["source"] == "timm" and record["origin"] == f"{repo}@main"
    w = published["conv1.0.weight"].numpy()  # (24, 3: red, green, blue, 3, 3)
    conv = state["model.conv1.0.weight"]
    np.testing.assert_array_equal(conv[:, 0], w[:, 2])  # B02 blue
    np.testing.assert_array_equal(conv[:, 2], w[:, 0])  # B04 red
    assert not conv[:, 3:].any()
    np.testing.assert_array_equal(
        state["model.layer1.0.conv1.weight"], published["layer1.0.conv1.weight"].numpy()
    )
    assert not any(k.startswith(("model.fc", "model.layer4")) for k in state)
    target.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    with pytest.raises(ConfigError, match="c3_in1k"):
        initial_encoder("no_such_tag", "tu-resnet10t", target, BANDS)
