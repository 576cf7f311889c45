"""Reliability: lost workers and drivers survived, writes all-or-nothing, plans and coverage
checked, every bad input refused with one clear line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from tests.conftest import TINY_MODEL
from tests.test_published import _smp_cache, _smp_encoder
from w2w.core.classes import CLASS_NODATA
from w2w.core.coverage import verify_coverage
from w2w.core.errors import ConfigError, InputError
from w2w.core.grid import Window
from w2w.core.store import MosaicStore
from w2w.predict import PredictConfig, predict
from w2w.train import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]


def _classes(url: str | Path) -> np.ndarray:
    m = MosaicStore.open(str(url))
    return m.read("class", m.grid.full_window, CLASS_NODATA)


def _ray_processes(marker: str) -> list[psutil.Process]:
    """Live processes whose title names ``marker`` (Ray sets ``ray::<actor class>...``)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if marker in " ".join(p.info["cmdline"] or []):
                found.append(p)
        except psutil.Error:
            continue
    return found


def _in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised by the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


@pytest.fixture(scope="module")
def clean_mosaic(tiny_run, synthetic_scene: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """An uninterrupted prediction with small blocks (36 of them), the reference."""
    out = tmp_path_factory.mktemp("clean") / "m.zarr"
    predict(
        PredictConfig(scene=synthetic_scene, bundle=tiny_run[1].bundle, output=str(out), block=64),
        progress=False,
    )
    return str(out)


# -- worker and driver loss -----------------------------------------------------------------


def _blocks_done(url: Path) -> int:
    """Blocks a running prediction has finished so far (0 while its store is being made)."""
    try:
        return int(MosaicStore.open(str(url)).done_blocks().sum())
    except (InputError, ValueError):  # not there yet, or its metadata is half written
        return 0


def _settled_blocks(url: Path, quiet_for: float = 3.0) -> int:
    """Blocks done once the manifest stops changing: a killed driver's Ray workers may finish
    the write they were doing after the driver is gone."""
    last, since = _blocks_done(url), time.time()
    while time.time() - since < quiet_for:
        time.sleep(0.25)
        now = _blocks_done(url)
        if now != last:
            last, since = now, time.time()
    return last


def test_killed_inference_actor_gives_the_same_mosaic(
    tiny_run, synthetic_scene: str, clean_mosaic: str, tmp_path: Path
) -> None:
    out = tmp_path / "m.zarr"
    cfg = PredictConfig(
        scene=synthetic_scene, bundle=tiny_run[1].bundle, output=str(out), block=64, batch_size=2
    )
    before = {p.pid for p in _ray_processes("Predictor")}
    thread, box = _in_thread(lambda: predict(cfg, progress=False))
    killed = None
    deadline = time.time() + 300
    while killed is None and time.time() < deadline and thread.is_alive():
        actors = [p for p in _ray_processes("Predictor") if p.pid not in before]
        if actors and _blocks_done(out) >= 2:
            actors[0].send_signal(signal.SIGKILL)
            killed = actors[0].pid
        time.sleep(0.2)
    thread.join(timeout=600)
    assert killed is not None, "prediction ended before its actor could be killed"
    assert "error" not in box, box.get("error")
    report = box["result"]
    assert report.blocks_written >= 36 - 2  # the blocks after the kill were predicted too
    mosaic = MosaicStore.open(str(out))
    assert mosaic.done_blocks().all() and mosaic.meta["complete"]
    np.testing.assert_array_equal(_classes(out), _classes(clean_mosaic))
    assert verify_coverage(str(out), engine="local").ok


@pytest.mark.slow
@pytest.mark.rotate
def test_killed_prediction_job_resumes_from_its_manifest(
    tiny_run, synthetic_scene: str, clean_mosaic: str, tmp_path: Path
) -> None:
    out = tmp_path / "m.zarr"
    args = ["predict", synthetic_scene, "-m", tiny_run[1].bundle, "-o", str(out)]
    args += ["--block", "64", "--batch-size", "2"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "w2w.cli", "--quiet", *args],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    done = 0
    try:
        while time.time() < deadline and proc.poll() is None:
            done = _blocks_done(out)
            if done >= 4:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "prediction ended before it could be killed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    survived = _settled_blocks(out)
    assert 4 <= survived < 36

    rerun = subprocess.run(
        [sys.executable, "-m", "w2w.cli", "--quiet", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert rerun.returncode == 0, rerun.stderr
    assert f"{36 - survived} written, {survived} already done (skipped), 36 in all" in rerun.stdout
    assert f"resuming: {survived} of 36 blocks already done" in rerun.stderr
    np.testing.assert_array_equal(_classes(out), _classes(clean_mosaic))
    assert MosaicStore.open(str(out)).meta["complete"]


@pytest.mark.slow
@pytest.mark.rotate
def test_killed_training_worker_restarts_from_the_last_checkpoint(
    synthetic_scene: str, tmp_path: Path, ray_session: None
) -> None:
    cfg = TrainConfig.from_dict(
        {
            "scene": synthetic_scene,
            "run_name": "worker-loss",
            "storage_path": str(tmp_path / "runs"),
            "model": TINY_MODEL,
            "chips": {"size": 64, "stride": 64},
            "split": {"block_chips": 2, "seed": 1},
            "epochs": 4,
            "batch_size": 4,
            "workers": {"num_workers": 2},
            "patience": None,
            "max_failures": 2,
        }
    )
    snapshot = tmp_path / "runs" / "worker-loss" / "checkpoint_manager_snapshot.json"
    before = {p.pid for p in _ray_processes("RayTrainWorker")}
    thread, box = _in_thread(lambda: train(cfg, progress=False))
    killed = None
    deadline = time.time() + 300
    while killed is None and time.time() < deadline and thread.is_alive():
        workers = [p for p in _ray_processes("RayTrainWorker") if p.pid not in before]
        if snapshot.exists() and workers:
            workers[-1].send_signal(signal.SIGKILL)
            killed = workers[-1].pid
        time.sleep(0.2)
    thread.join(timeout=900)
    assert killed is not None, "training ended before a worker could be killed"
    assert "error" not in box, box.get("error")
    report = box["result"]
    assert [h["epoch"] for h in report.history] == [0, 1, 2, 3]
    assert len(report.starts) == 2 and report.starts[0] == 0 and report.starts[1] >= 1


# -- plans, coverage and all-or-nothing writes ------------------------------------------------


def test_chunk_ownership_check_on_a_sharded_mosaic(tmp_path: Path) -> None:
    from w2w.ingest.synth import SynthConfig

    grid = SynthConfig(output="u", height=300, width=260).grid
    m = MosaicStore.create(
        str(tmp_path / "s.zarr"), grid, block=128, chunk=32, shard=True, classes=[]
    )
    unit = m.chunk_shape("class")
    assert unit == (128, 128)  # the shard, not the inner chunk, is the write unit
    grid.blocks(128).check_one_writer(unit, what="the mosaic's")
    with pytest.raises(ConfigError, match="not aligned to the mosaic's 128 x 128 write units"):
        grid.blocks(32).check_one_writer(unit, what="the mosaic's")  # chunk-aligned, not shard


def test_coverage_check_finds_missing_blocks_and_holes_and_predict_repairs_them(
    tiny_run, synthetic_scene: str, clean_mosaic: str, tmp_path: Path
) -> None:
    import shutil

    url = tmp_path / "m.zarr"
    shutil.copytree(clean_mosaic, url)
    assert verify_coverage(str(url), engine="local").ok
    m = MosaicStore.open(str(url), mode="r+")
    # A lost write: one block's classes partly gone (as when two writers share a chunk).
    lost = Window(128, 192, 64, 64)
    data = m.read_class(lost)
    data[:20] = CLASS_NODATA
    m.write("class", lost, data)
    # A block that never finished.
    m.clear_block(Window(0, 0, 64, 64))
    report = verify_coverage(str(url), engine="local")
    assert not report.ok
    assert report.missing == (Window(0, 0, 64, 64),)
    assert [h.window for h in report.holes] == [lost]
    assert report.holes[0].expected - report.holes[0].found == int(
        (_classes(clean_mosaic)[128:148, 192:256] != CLASS_NODATA).sum()
    )
    assert "block(s) with holes: (row 128, col 192)" in report.describe()

    again = predict(
        PredictConfig(scene=synthetic_scene, bundle=tiny_run[1].bundle, output=str(url), block=64),
        progress=False,
    )
    assert again.blocks_written == 2  # the unfinished block, then the one with a hole
    np.testing.assert_array_equal(_classes(url), _classes(clean_mosaic))
    assert verify_coverage(str(url), engine="local").ok


def test_a_failed_bundle_write_leaves_the_good_bundle(
    tiny_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from w2w.model.bundle import load_bundle, save_bundle

    good = load_bundle(tiny_run[1].bundle)
    path = tmp_path / "model.safetensors"
    shutil.copyfile(tiny_run[1].bundle, path)
    original = path.read_bytes()

    def half_then_crash(src: str, dst: str, *a: Any, **k: Any) -> None:
        data = Path(src).read_bytes()
        Path(dst).write_bytes(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shutil, "copyfile", half_then_crash)
    with pytest.raises(OSError, match="No space left"):
        save_bundle(str(path), good, good.state)
    assert path.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]  # no .part left
    assert load_bundle(str(path)).content_hash == good.content_hash


def test_an_atomic_write_killed_midway_leaves_no_file(tmp_path: Path) -> None:
    """A process killed while writing never leaves a truncated file under the final name,
    and what it leaves is named so that the next run removes it."""
    target = tmp_path / "big.bin"
    script = (
        "import sys, time, shutil\n"
        "from w2w.core import storage\n"
        "def slow(src, dst, *a, **k):\n"
        "    with open(dst, 'wb') as f:\n"
        "        f.write(b'x' * 1000); f.flush(); print('writing', flush=True); time.sleep(60)\n"
        "shutil.copyfile = slow\n"
        f"storage.atomic_write_bytes({str(target)!r}, b'y' * 10_000_000)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
    proc.kill()
    proc.wait()
    assert not target.exists()
    assert [p.name.startswith(".big.bin.w2w-tmp-") for p in tmp_path.iterdir()] == [True]
    from w2w.core.outputs import recover

    recover(str(target))  # the next run's guard removes what the dead process left
    assert not list(tmp_path.iterdir())


def test_safe_model_loading_refuses_a_malicious_pickle(tmp_path: Path) -> None:
    """A pickled 'model' whose unpickling would run code is refused before it is interpreted."""
    import torch

    from w2w.core.errors import BundleError, InputError
    from w2w.model.bundle import load_bundle
    from w2w.model.models import ModelSpec, build_model, load_weights

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "model.safetensors"
    torch.save({"state_dict": Payload()}, evil)
    with pytest.raises(BundleError, match="pickled models are refused"):
        load_bundle(str(evil))
    evil_pt = tmp_path / "weights.pt"
    torch.save({"conv.weight": Payload()}, evil_pt)
    model = build_model(
        ModelSpec(TINY_MODEL["arch"], TINY_MODEL["encoder"], 3, 2, TINY_MODEL["options"])
    )
    with pytest.raises(InputError, match="cannot load weights"):
        load_weights(model, str(evil_pt))
    assert not marker.exists(), "the payload ran"


# -- bad inputs: the table in docs/errors.md ---------------------------------------------------


def _encoder_file(path: Path) -> None:
    """An encoder file as `w2w pretrain` writes it, for the tiny model's encoder."""
    from tests.conftest import TINY_MODEL
    from w2w.model.encoder_file import EncoderFile, save_encoder
    from w2w.model.models import build_model
    from w2w.model.normalization import Normalizer
    from w2w.model.spec import ModelSpec

    spec = ModelSpec("Unet", TINY_MODEL["encoder"], 6, 1, TINY_MODEL["options"])
    norm = Normalizer("percentile", (0.0,) * 6, (1.0,) * 6, (0.0,) * 6, (1.0,) * 6)
    bands = ("B02", "B03", "B04", "B08", "B11", "B12")
    encoder = EncoderFile(spec, bands, norm, 64, {"name": "vicreg-dense"})
    save_encoder(str(path), encoder, build_model(spec).encoder.state_dict())


def _bad_inputs(tmp: Path, scene: str, bundle: str) -> dict[str, tuple[list[str], str]]:
    """Each case of docs/errors.md: (w2w arguments, a part of the one-line error)."""
    import shutil

    import yaml

    from tests.conftest import write_tif

    rng = np.random.default_rng(0)
    good = write_tif(tmp / "image.tif", rng.integers(1, 3000, size=(2, 40, 40)).astype("uint16"))
    (tmp / "notes.tif").write_text("not a raster")
    (tmp / "empty.tif").write_bytes(b"")
    (tmp / "some-folder").mkdir()
    raw = good.read_bytes()
    (tmp / "cut.tif").write_bytes(raw[: len(raw) // 2])
    write_tif(tmp / "empty-scene.tif", np.zeros((2, 40, 40), dtype="uint16"), nodata=0)
    write_tif(tmp / "complex.tif", (rng.random((1, 40, 40)) + 1j).astype("complex64"))
    floats = rng.random((2, 40, 40)).astype("float32")
    floats[0, 3, 3] = np.inf
    write_tif(tmp / "float.tif", floats)
    labels = rng.integers(0, 3, size=(40, 40)).astype("uint8")
    write_tif(tmp / "shifted.tif", labels, transform=(10.0, 0.0, 300005.0, 0.0, -10.0, 3500000.0))
    (tmp / "a-file").write_text("x")
    shutil.copyfile(bundle, tmp / "model.safetensors")
    b = (tmp / "model.safetensors").read_bytes()
    (tmp / "cut.safetensors").write_bytes(b[:100])
    edited = bytearray(b)
    edited[-10] ^= 0xFF  # one weight changed
    (tmp / "edited.safetensors").write_bytes(bytes(edited))
    import torch

    torch.save({"weights": [1, 2, 3]}, tmp / "model.pt")
    _encoder_file(tmp / "encoder.safetensors")
    mismatch = tmp / "hf-published-weights-mismatch"
    _smp_cache(mismatch, "resnet18", _smp_encoder("resnet34").state_dict())  # wrong depth
    (tmp / "train.yaml").write_text(yaml.safe_dump({"scene": scene, "epochz": 3}))
    other = str(tmp / "other.zarr")
    w2w_cli(["ingest", str(good), "-o", other, "--engine", "local"])
    w2w_cli(["ingest", str(good), "-o", str(tmp / "existing.zarr"), "--engine", "local"])

    _bad_georeferencing(tmp, rng)
    broken = tmp / "broken.zarr"
    shutil.copytree(scene, broken)
    (broken / "image" / "c" / "0" / "1" / "1").unlink()  # an interrupted copy

    ingest = ["ingest", "--engine", "local", "-o"]
    train = ["train", scene, "--storage-path", str(tmp / "runs"), "--chip-size", "64"]
    return {
        "missing-file": (
            [*ingest, str(tmp / "o.zarr"), str(tmp / "nope.tif")],
            "image file not found",
        ),
        "folder-as-file": ([*ingest, str(tmp / "o.zarr"), str(tmp / "some-folder")], "is a folder"),
        "unreadable-file": (
            [*ingest, str(tmp / "o.zarr"), str(tmp / "notes.tif")],
            "as a raster (",
        ),
        "zero-size-file": (
            [*ingest, str(tmp / "o.zarr"), str(tmp / "empty.tif")],
            "is empty (0 bytes)",
        ),
        "truncated-tiff": (
            [*ingest, str(tmp / "o.zarr"), str(tmp / "cut.tif")],
            "is corrupt or truncated",
        ),
        "all-nodata": ([*ingest, str(tmp / "o.zarr"), str(tmp / "empty-scene.tif")], "is nodata"),
        "grid-mismatch": (
            [*ingest, str(tmp / "o.zarr"), str(good), "--label", str(tmp / "shifted.tif")],
            "is on another grid: image grid is [EPSG:32613, 40 x 40 px",
        ),
        "unsupported-dtype": (
            [*ingest, str(tmp / "o.zarr"), str(tmp / "complex.tif")],
            "unsupported pixel type complex64",
        ),
        "infinite-values": (
            [*ingest, str(tmp / "o.zarr"), str(tmp / "float.tif")],
            "1 infinite values",
        ),
        "wrong-bands": (
            ["predict", other, "-m", str(tmp / "model.safetensors"), "-o", str(tmp / "m.zarr")],
            "but the model was trained on [B02, B03, B04, B08, B11, B12] (6)",
        ),
        "corrupt-bundle": (
            ["predict", scene, "-m", str(tmp / "cut.safetensors"), "-o", str(tmp / "m.zarr")],
            "is not a w2w model bundle",
        ),
        "tampered-bundle": (
            ["bundle-info", str(tmp / "edited.safetensors")],
            "content hash mismatch",
        ),
        "pickled-model": (["bundle-info", str(tmp / "model.pt")], "pickled models are refused"),
        "encoder-mismatch": (
            [
                *train,
                "--encoder",
                "resnet18",
                "--encoder-weights",
                str(tmp / "encoder.safetensors"),
            ],
            "are for encoder tu-resnet10t, but the model uses resnet18; train with --encoder",
        ),
        "bundle-as-encoder": (
            [*train, "--encoder-weights", str(tmp / "model.safetensors")],
            "are a model bundle, not an encoder file; start from the whole model with",
        ),
        "published-weights-offline": (
            [*train, "--encoder", "resnet18", "--encoder-weights", "imagenet"],
            "are not in the Hugging Face cache (",
        ),
        "published-weights-mismatch": (
            [*train, "--encoder", "resnet18", "--encoder-weights", "imagenet"],
            "do not fit the resnet18 encoder (",
        ),
        "unknown-key": (
            ["train", "--config", str(tmp / "train.yaml")],
            "unknown key 'epochz'; did you mean 'epochs'?",
        ),
        "out-of-range": (
            [*ingest, str(tmp / "o.zarr"), str(good), "--chunk", "5"],
            "'chunk': Input should be greater than or equal to 16 (got 5)",
        ),
        "output-exists": (
            [*ingest, str(tmp / "existing.zarr"), str(good)],
            "exists already; pass --overwrite",
        ),
        "output-not-writable": (
            [*ingest, str(tmp / "a-file" / "s.zarr"), str(good)],
            "is a file, not a folder",
        ),
        "s3-no-credentials": (
            [*ingest, "s3://w2w-no-such-bucket/s.zarr", str(good)],
            "no credentials for object storage",
        ),
        "output-is-input": (
            ["predict", scene, "-m", str(tmp / "model.safetensors"), "-o", scene, "--overwrite"],
            "is the input scene store",
        ),
        "run-name-escapes": (
            ["train", scene, "--run-name", "..", "--overwrite"],
            "names a folder",
        ),
        "duplicate-class-names": (
            [*ingest, str(tmp / "o.zarr"), str(good), "--classes", "1=forest,2=forest"],
            "is given to several ids",
        ),
        "no-geotransform": (
            [*ingest, str(tmp / "o.zarr"), str(tmp / "no-transform.tif")],
            "has no geotransform",
        ),
        "gcps-only": (
            [*ingest, str(tmp / "o.zarr"), str(tmp / "gcps.tif")],
            "ground control points only",
        ),
        "rotated-grid": (
            [*ingest, str(tmp / "o.zarr"), str(tmp / "rotated.tif")],
            "has a rotated grid",
        ),
        "south-up": (
            [*ingest, str(tmp / "o.zarr"), str(tmp / "south-up.tif")],
            "is not north-up",
        ),
        "header-lies": (
            [*ingest, str(tmp / "o.zarr"), str(tmp / "huge-header.tif")],
            "its header claims 100000 x 100000 px",
        ),
        "missing-chunk": (
            [
                "predict",
                str(broken),
                "-m",
                str(tmp / "model.safetensors"),
                "-o",
                str(tmp / "m.zarr"),
            ],
            r"says it is complete but image chunk (1, 1) is missing",
        ),
    }


def _bad_georeferencing(tmp: Path, rng: np.random.Generator) -> None:
    """Rasters whose georeferencing is not what it seems."""
    import rasterio
    from rasterio.control import GroundControlPoint

    from tests.conftest import write_tif

    data = rng.integers(1, 3000, size=(1, 40, 40)).astype("uint16")
    write_tif(tmp / "rotated.tif", data, transform=(10.0, 2.0, 300000.0, 2.0, -10.0, 3500000.0))
    write_tif(tmp / "south-up.tif", data, transform=(10.0, 0.0, 300000.0, 0.0, 10.0, 3500000.0))
    profile = {"driver": "GTiff", "width": 40, "height": 40, "count": 1, "dtype": "uint16"}
    with rasterio.open(tmp / "no-transform.tif", "w", crs="EPSG:32613", **profile) as dst:
        dst.write(data)
    gcps = [
        GroundControlPoint(0, 0, 300000.0, 3500000.0),
        GroundControlPoint(40, 40, 300400.0, 3499600.0),
    ]
    with rasterio.open(tmp / "gcps.tif", "w", **profile) as dst:
        dst.write(data)
        dst.gcps = (gcps, rasterio.crs.CRS.from_epsg(32613))
    # An uncompressed GeoTIFF whose header claims 100000 x 100000 px but holds a few bytes.
    big = {**profile, "width": 100_000, "height": 100_000, "dtype": "uint8", "tiled": True}
    with rasterio.open(
        tmp / "huge-header.tif",
        "w",
        crs="EPSG:32613",
        transform=rasterio.Affine(10, 0, 0, 0, -10, 0),
        sparse_ok=True,
        **big,
    ):
        pass


def w2w_cli(args: list[str]) -> Any:
    from typer.testing import CliRunner

    from w2w.cli import app

    return CliRunner().invoke(app, ["--quiet", *args])


BAD_INPUTS = [
    "missing-file",
    "folder-as-file",
    "unreadable-file",
    "zero-size-file",
    "truncated-tiff",
    "all-nodata",
    "grid-mismatch",
    "unsupported-dtype",
    "infinite-values",
    "wrong-bands",
    "corrupt-bundle",
    "tampered-bundle",
    "pickled-model",
    "encoder-mismatch",
    "bundle-as-encoder",
    "published-weights-offline",
    "published-weights-mismatch",
    "unknown-key",
    "out-of-range",
    "output-exists",
    "output-not-writable",
    "s3-no-credentials",
    "output-is-input",
    "run-name-escapes",
    "duplicate-class-names",
    "no-geotransform",
    "gcps-only",
    "rotated-grid",
    "south-up",
    "header-lies",
    "missing-chunk",
]


@pytest.fixture(scope="module")
def bad_inputs(
    tiny_run, synthetic_scene: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, tuple[list[str], str]]]:
    tmp = tmp_path_factory.mktemp("bad")
    return tmp, _bad_inputs(tmp, synthetic_scene, tiny_run[1].bundle)


def test_the_errors_table_lists_every_case() -> None:
    table = (REPO / "docs" / "errors.md").read_text().split("## Statewide inputs", 1)[0]
    ids = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")]
    assert ids[1:] == BAD_INPUTS  # the header row first


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_gets_one_clear_line(
    case: str,
    bad_inputs: tuple[Path, dict[str, tuple[list[str], str]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tmp, cases = bad_inputs
    args, expected = cases[case]
    if case == "s3-no-credentials":
        import s3fs

        for key in (
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
        ):
            monkeypatch.delenv(key, raising=False)
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp / "no-credentials"))
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp / "no-config"))
        s3fs.S3FileSystem.clear_instance_cache()
    if case.startswith("published-weights"):  # no download; the cache the case made
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp / f"hf-{case}"))
    existing = tmp / "existing.zarr"
    before = sorted((p.relative_to(existing), p.stat().st_mtime_ns) for p in existing.rglob("*"))

    result = w2w_cli(args)

    if case == "s3-no-credentials":
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1, result.output
    assert expected in errors[0], errors[0]
    assert "Traceback" not in result.output
    # Nothing was written for a refused input, and the existing output is untouched.
    assert not (tmp / "o.zarr").exists() and not (tmp / "m.zarr").exists()
    after = sorted((p.relative_to(existing), p.stat().st_mtime_ns) for p in existing.rglob("*"))
    assert after == before


class _RaisesAUserError:
    """A Ray Data actor as predict's is: its set-up finds a user's error (a model bundle
    that changed since the driver checked it) and raises it from its first call."""

    def __init__(self) -> None:
        from w2w.core.errors import BundleError

        self.error = BundleError("m.safetensors: content hash mismatch; retrain or restore it")

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        raise self.error


def test_a_users_error_on_a_ray_worker_is_one_line_without_rays_traces(
    ray_session: None, capfd: pytest.CaptureFixture[str]
) -> None:
    """Ray Data logs a task that raised as an aborted dataset, with stack traces and advice on
    settings w2w does not offer; w2w's one ``error:`` line says it all, so Ray's lines about
    a user's error stay in its log files (:class:`w2w.core.runtime.RayConsoleFilter`)."""
    import ray

    from w2w.core.errors import BundleError
    from w2w.core.runtime import ensure_ray, quiet_ray_data, raise_from_worker

    ensure_ray()
    quiet_ray_data()
    capfd.readouterr()
    ds = ray.data.range(2).map_batches(
        _RaisesAUserError, compute=ray.data.ActorPoolStrategy(size=1), batch_size=1
    )

    def run() -> None:
        try:
            ds.take_all()
        except Exception as exc:  # noqa: BLE001 - as every stage does
            raise_from_worker(exc, "prediction")

    with pytest.raises(BundleError, match="content hash mismatch"):
        run()
    err = capfd.readouterr().err
    for noise in ("Traceback", "Exception occurred", "will now abort", "BundleError"):
        assert noise not in err, err


def test_predicts_actor_raises_a_bad_bundle_from_its_first_call(tmp_path: Path) -> None:
    """An actor whose set-up raises dies as a system failure (Ray prints retry notices and
    traces); predict's actor keeps a user's error for its first call instead."""
    from w2w.core.errors import BundleError
    from w2w.predict.actor import Predictor

    bad = tmp_path / "m.safetensors"
    bad.write_bytes(b"not a bundle")
    plan = {"height": 64, "width": 64, "block": 32, "chip": 16, "stride": 8}
    actor = Predictor(str(bad), plan, {"use_gpu": False, "batch_size": 2, "tta": False})
    with pytest.raises(BundleError):
        actor({})
