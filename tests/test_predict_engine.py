"""The per-block prediction path on the model's device (w2w.predict.engine), checked against
a sliding-window prediction of the whole scene held in memory, written here from the
description of the method (global chip grid, Hann-window blend, argmax), not from w2w."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from w2w.core.windows import Window
from w2w.model.models import ModelSpec, build_model
from w2w.model.normalization import Normalizer
from w2w.predict.engine import BlockEngine, EngineSettings, resolve_precision
from w2w.predict.plan import BlockPlan

CHIP, STRIDE, BANDS, CLASSES = 32, 16, 3, 4
CLASS_IDS = (1, 2, 3, 5)
NODATA = 255


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    spec = ModelSpec(
        "Unet",
        "tu-resnet10t",
        BANDS,
        CLASSES,
        {"encoder_depth": 3, "decoder_channels": [16, 8, 8]},
    )
    return build_model(spec).eval()


@pytest.fixture(scope="module")
def scene() -> tuple[np.ndarray, np.ndarray, Normalizer]:
    """A 100 x 90 uint16 scene with a nodata corner and a nodata hole, and its normaliser."""
    rng = np.random.default_rng(3)
    smooth = rng.normal(size=(BANDS, 25, 23)).repeat(4, axis=1).repeat(4, axis=2)[:, :100, :90]
    image = (1000 + 400 * smooth + rng.normal(0, 30, (BANDS, 100, 90))).clip(1, 4000)
    image = image.astype(np.uint16)
    valid = np.ones((100, 90), dtype=bool)
    valid[:40, :35] = False  # outside the state: whole chips with no valid pixel
    valid[70:74, 60:63] = False
    image[:, ~valid] = 0
    lo = [float(np.percentile(b[valid], 2)) for b in image]
    hi = [float(np.percentile(b[valid], 98)) for b in image]
    scale = tuple(h - q for q, h in zip(lo, hi, strict=True))
    norm = Normalizer("percentile", tuple(lo), scale, tuple(lo), tuple(hi))
    return image, valid, norm


def reference(
    model: torch.nn.Module,
    image: np.ndarray,
    valid: np.ndarray,
    norm: Normalizer,
    stride: int = STRIDE,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Whole-scene sliding window: normalise, pad, every chip of the global grid one at a
    time, Hann-weighted sum, argmax. Returns (classes, confidence x 255, top-2 margin)."""
    probs = reference_probabilities(model, image, valid, norm, stride)
    ordered = np.sort(probs, axis=0)
    classes = np.where(valid, np.asarray(CLASS_IDS, np.uint8)[probs.argmax(0)], NODATA)
    conf = np.where(valid, np.rint(probs.max(0) * 255), 0).astype(np.uint8)
    return classes.astype(np.uint8), conf, ordered[-1] - ordered[-2]


def reference_probabilities(
    model: torch.nn.Module,
    image: np.ndarray,
    valid: np.ndarray,
    norm: Normalizer,
    stride: int = STRIDE,
) -> np.ndarray:
    """(classes, h, w) blended probabilities of the whole-scene sliding window."""
    h, w = valid.shape
    x = image.astype(np.float32)
    for b in range(BANDS):
        x[b] = (np.clip(x[b], norm.lo[b], norm.hi[b]) - norm.offset[b]) / norm.scale[b]
    x[:, ~valid] = 0
    rows = 1 if h <= CHIP else math.ceil((h - CHIP) / stride) + 1
    cols = 1 if w <= CHIP else math.ceil((w - CHIP) / stride) + 1
    ph, pw = (rows - 1) * stride + CHIP, (cols - 1) * stride + CHIP
    padded = np.zeros((BANDS, ph, pw), np.float32)
    padded[:, :h, :w] = x
    t = (np.arange(CHIP) + 0.5) / CHIP
    hann = np.maximum(np.sin(np.pi * t) ** 2, 1e-3)
    weight = np.outer(hann, hann).astype(np.float32)
    acc = np.zeros((CLASSES, ph, pw), np.float32)
    wsum = np.zeros((ph, pw), np.float32)
    with torch.inference_mode():
        for i in range(rows):
            for j in range(cols):
                r, c = i * stride, j * stride
                chip = torch.from_numpy(padded[None, :, r : r + CHIP, c : c + CHIP].copy())
                p = torch.softmax(model(chip).float(), dim=1)[0].numpy()
                acc[:, r : r + CHIP, c : c + CHIP] += p * weight
                wsum[r : r + CHIP, c : c + CHIP] += weight
    return acc[:, :h, :w] / wsum[:h, :w]


def read_windows(
    plan: BlockPlan, image: np.ndarray, valid: np.ndarray
) -> Iterator[tuple[Window, np.ndarray, np.ndarray]]:
    """Each block of the scene with its read window cut here (zero-padded past the edges):
    (block, image, valid), as the read task hands them to an actor."""
    h, w = valid.shape
    for r in range(0, h, plan.block):
        for c in range(0, w, plan.block):
            b = Window(r, c, min(plan.block, h - r), min(plan.block, w - c))
            win = plan.window(b)
            img = np.zeros((BANDS, win.height, win.width), image.dtype)
            ok = np.zeros((win.height, win.width), bool)
            inside = win.intersect(Window(0, 0, h, w))
            assert inside is not None
            rel = inside.relative_to(win)
            img[(slice(None), *rel.slices)] = image[(slice(None), *inside.slices)]
            ok[rel.slices] = valid[inside.slices]
            yield b, img, ok


def engine_mosaic(
    model: torch.nn.Module,
    image: np.ndarray,
    valid: np.ndarray,
    norm: Normalizer,
    block: int,
    settings: EngineSettings,
    device: str = "cpu",
    stride: int = STRIDE,
) -> tuple[np.ndarray, np.ndarray, BlockEngine, int]:
    """The mosaic assembled from the engine's blocks."""
    h, w = valid.shape
    plan = BlockPlan(h, w, block, CHIP, stride)
    engine = BlockEngine(model, norm, CLASS_IDS, plan, device, settings)
    classes = np.zeros((h, w), np.uint8)
    conf = np.zeros((h, w), np.uint8)
    skipped = 0
    for b, img, ok in read_windows(plan, image, valid):
        staged = engine.stage(b, img, ok)
        skipped += staged.skipped
        cls, cf = engine.predict(b, staged)
        classes[b.slices] = cls[: b.height, : b.width]
        conf[b.slices] = cf[: b.height, : b.width]
    return classes, conf, engine, skipped


@pytest.mark.parametrize("block", [32, 48, 96])
def test_engine_equals_an_in_memory_sliding_window(model, scene, block: int) -> None:  # type: ignore[no-untyped-def]
    image, valid, norm = scene
    ref_cls, ref_conf, margin = reference(model, image, valid, norm)
    cls, conf, _, skipped = engine_mosaic(
        model, image, valid, norm, block, EngineSettings(batch_size=5)
    )
    assert skipped > 0  # the nodata corner holds whole chips no forward pass sees
    # Forward passes in other batch sizes may differ in the last bits of a float; only a
    # pixel whose two best classes are that close may differ.
    clear = margin > 1e-5
    assert clear[valid].mean() > 0.99
    np.testing.assert_array_equal(cls[clear | ~valid], ref_cls[clear | ~valid])
    assert np.abs(conf.astype(int) - ref_conf.astype(int)).max() <= 1
    assert (cls[~valid] == NODATA).all() and (conf[~valid] == 0).all()
    assert (cls[valid] != NODATA).all()


@pytest.mark.parametrize("block", [32, 64])
def test_chips_that_tile_the_scene_equal_the_reference(model, scene, block: int) -> None:  # type: ignore[no-untyped-def]
    """stride = chip: one prediction a pixel, copied rather than blended."""
    image, valid, norm = scene
    ref_cls, ref_conf, margin = reference(model, image, valid, norm, stride=CHIP)
    cls, conf, _, _ = engine_mosaic(
        model, image, valid, norm, block, EngineSettings(batch_size=3), stride=CHIP
    )
    clear = margin > 1e-5
    assert clear[valid].mean() > 0.99
    np.testing.assert_array_equal(cls[clear | ~valid], ref_cls[clear | ~valid])
    assert np.abs(conf.astype(int) - ref_conf.astype(int)).max() <= 1
    assert (cls[~valid] == NODATA).all() and (cls[valid] != NODATA).all()


def test_engine_mosaic_does_not_depend_on_block_size(model, scene) -> None:  # type: ignore[no-untyped-def]
    image, valid, norm = scene
    a = engine_mosaic(model, image, valid, norm, 32, EngineSettings(batch_size=4))
    b = engine_mosaic(model, image, valid, norm, 96, EngineSettings(batch_size=4))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_bf16_on_cpu_agrees_with_fp32(model, scene) -> None:  # type: ignore[no-untyped-def]
    image, valid, norm = scene
    fp32 = engine_mosaic(model, image, valid, norm, 48, EngineSettings(precision="fp32"))[0]
    bf16 = engine_mosaic(model, image, valid, norm, 48, EngineSettings(precision="bf16"))[0]
    assert (fp32[valid] == bf16[valid]).mean() > 0.9
    assert (bf16[~valid] == NODATA).all()


def test_engine_normalises_like_the_bundles_normaliser(scene) -> None:  # type: ignore[no-untyped-def]
    image, valid, norm = scene
    plan = BlockPlan(100, 90, 32, CHIP, STRIDE)
    model = torch.nn.Conv2d(BANDS, CLASSES, 1)
    engine = BlockEngine(model, norm, CLASS_IDS, plan, "cpu", EngineSettings())
    x = engine.normalise(torch.from_numpy(image), torch.from_numpy(valid)).numpy()
    np.testing.assert_array_equal(x, norm(image, valid))


def test_precision_setting() -> None:
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="precision must be"):
        resolve_precision("int8", "cpu")


def test_the_engine_imports_no_ray_gdal_zarr_or_pydantic() -> None:
    code = (
        "import sys, w2w.predict.engine\n"
        "heavy = {'ray', 'rasterio', 'osgeo', 'zarr', 'pydantic', 'fsspec', 'pyarrow'}\n"
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_gpu_engine_is_identical_run_to_run_and_agrees_with_cpu(model, scene, precision) -> None:  # type: ignore[no-untyped-def]
    image, valid, norm = scene
    gpu = EngineSettings(precision=precision)
    runs = [engine_mosaic(model, image, valid, norm, 48, gpu, "cuda")[:2] for _ in range(2)]
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    cpu = engine_mosaic(model.cpu(), image, valid, norm, 48, EngineSettings())[0]
    assert (runs[0][0][valid] == cpu[valid]).mean() > (0.99 if precision == "fp32" else 0.9)


def test_probabilities_equal_the_reference_blend(model, scene) -> None:  # type: ignore[no-untyped-def]
    """Per-class probabilities x 255 (``w2w predict --probabilities``): the reference's
    blended probabilities, rounded, within 1; 0 on invalid pixels; classes and confidence
    as :meth:`BlockEngine.predict` gives them."""
    image, valid, norm = scene
    ref = reference_probabilities(model, image, valid, norm)
    h, w = valid.shape
    block = 48
    plan = BlockPlan(h, w, block, CHIP, STRIDE)
    engine = BlockEngine(model, norm, CLASS_IDS, plan, "cpu", EngineSettings(batch_size=5))
    probs = np.zeros((CLASSES, h, w), np.uint8)
    for b, img, ok in read_windows(plan, image, valid):
        cls, conf, p = engine.predict_with_probabilities(b, engine.stage(b, img, ok))
        plain = engine.predict(b, engine.stage(b, img, ok))
        np.testing.assert_array_equal(cls, plain[0])
        np.testing.assert_array_equal(conf, plain[1])
        assert p.shape == (CLASSES, block, block)
        probs[(slice(None), *b.slices)] = p[:, : b.height, : b.width]
    expected = np.where(valid, np.rint(ref * 255), 0)
    assert np.abs(probs.astype(int) - expected).max() <= 1
    assert (probs[:, ~valid] == 0).all()
    sums = probs[:, valid].astype(int).sum(axis=0)
    assert np.abs(sums - 255).max() <= CLASSES  # rounding of each class
