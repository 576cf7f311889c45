"""Kill every command that writes (SIGKILL, at three points of its run) while it replaces an
earlier output: the earlier output is intact, or the new one is complete -- never a mix, never
half of one. Slow (each command runs four times in a fresh process): ``pytest -m slow``."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import TINY_MODEL

pytestmark = [pytest.mark.slow, pytest.mark.rotate]
REPO = Path(__file__).resolve().parents[1]
FRACTIONS = (0.2, 0.5, 0.8)


def w2w(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "w2w.cli", "--quiet", *args],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    if check:
        assert done.returncode == 0, done.stderr
    return done


def kill_during(args: list[str], seconds: float, check: Callable[[], Any]) -> list[Any]:
    """Start ``w2w ARGS`` three times, SIGKILL it after 20%, 50% and 80% of ``seconds``, and
    call ``check`` after each; returns what ``check`` returned."""
    seen = []
    for fraction in FRACTIONS:
        proc = subprocess.Popen(
            [sys.executable, "-m", "w2w.cli", "--quiet", *args],
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        time.sleep(seconds * fraction)
        with contextlib.suppress(ProcessLookupError):  # it may have finished already
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        time.sleep(1.0)  # let a killed run's Ray workers go
        seen.append(check())
    return seen


def timed(*args: str) -> float:
    t0 = time.time()
    w2w(*args)
    return time.time() - t0


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("kill")
    for seed in (1, 2):
        w2w(
            "synth",
            str(root / f"syn{seed}"),
            "--size",
            "512",
            "--seed",
            str(seed),
            "--engine",
            "local",
        )
    return {"root": root, "a": root / "syn1", "b": root / "syn2"}


def _scene_identity(path: Path) -> str | None:
    from w2w.core.store import SceneStore

    return SceneStore.open(str(path)).identity


def _mosaic_identity(path: Path) -> str | None:
    from w2w.core.store import MosaicStore

    m = MosaicStore.open(str(path))
    assert m.meta["complete"]
    return m.identity


def test_killed_synth_and_ingest_leave_the_old_output_or_the_new_one(
    sources: dict[str, Path],
) -> None:
    root = sources["root"]
    # synth: a folder of GeoTIFFs, replaced as one set.
    folder = root / "synth-out"
    w2w("synth", str(folder), "--size", "512", "--seed", "1", "--engine", "local")
    old = (sha(folder / "image.tif"), sha(folder / "labels.tif"))
    new = (sha(sources["b"] / "image.tif"), sha(sources["b"] / "labels.tif"))
    args = [
        "synth",
        str(folder),
        "--size",
        "512",
        "--seed",
        "2",
        "--engine",
        "local",
        "--overwrite",
    ]
    states = kill_during(
        args,
        timed(*args[:-1][:1], str(root / "timing"), *args[2:-1]),
        lambda: (sha(folder / "image.tif"), sha(folder / "labels.tif")),
    )
    assert all(s in (old, new) for s in states), states
    # ingest: a scene store, built beside and swapped in.
    out = root / "scene.zarr"
    common = ["--chunk", "64", "--block", "128", "--engine", "local"]
    w2w(
        "ingest",
        str(sources["a"] / "image.tif"),
        "--label",
        str(sources["a"] / "labels.tif"),
        "-o",
        str(out),
        *common,
    )
    ref = root / "scene-b.zarr"
    seconds = timed(
        "ingest",
        str(sources["b"] / "image.tif"),
        "--label",
        str(sources["b"] / "labels.tif"),
        "-o",
        str(ref),
        *common,
    )
    old_id, new_id = _scene_identity(out), _scene_identity(ref)
    args = [
        "ingest",
        str(sources["b"] / "image.tif"),
        "--label",
        str(sources["b"] / "labels.tif"),
        "-o",
        str(out),
        *common,
        "--overwrite",
    ]
    states = kill_during(args, seconds, lambda: _scene_identity(out))
    assert all(s in (old_id, new_id) for s in states), states


@pytest.fixture(scope="module")
def trained(sources: dict[str, Path]) -> dict[str, Path]:
    root = sources["root"]
    scene = root / "scene-train.zarr"
    w2w(
        "ingest",
        str(sources["a"] / "image.tif"),
        "--label",
        str(sources["a"] / "labels.tif"),
        "-o",
        str(scene),
        "--chunk",
        "64",
        "--block",
        "128",
        "--engine",
        "local",
    )
    config = root / "train.yaml"
    config.write_text(
        json.dumps(
            {
                "train": {
                    "scene": str(scene),
                    "storage_path": str(root / "runs"),
                    "run_name": "r",
                    "bundle": str(root / "model.safetensors"),
                    "model": TINY_MODEL,
                    "chips": {"size": 64, "stride": 64},
                    "split": {"block_chips": 2},
                    "epochs": 2,
                    "batch_size": 4,
                    "workers": {"num_workers": 1},
                    "patience": None,
                }
            }
        )
    )
    w2w("train", "--config", str(config))
    return {"scene": scene, "bundle": root / "model.safetensors", "config": config, "root": root}


def test_killed_train_leaves_a_whole_bundle_and_the_old_run(trained: dict[str, Path]) -> None:
    from w2w.model.bundle import load_bundle

    root = trained["root"]
    args = ["train", "--config", str(trained["config"]), "--seed", "1", "--overwrite"]
    seconds = timed(
        "train",
        "--config",
        str(trained["config"]),
        "--run-name",
        "timing",
        "--bundle",
        str(root / "t.safetensors"),
    )

    def check() -> int:
        bundle = load_bundle(str(trained["bundle"]))  # whole: its content hash verifies
        seed = int(bundle.training["config"]["seed"])
        if seed == 0:  # the old bundle: its run is in place, or set aside beside it
            runs = [
                p
                for p in (root / "runs").iterdir()
                if p.name == "r" or p.name.startswith(".r.w2w-old-")
            ]
            assert any((p / "w2w-run.json").exists() for p in runs), runs
        return seed

    states = kill_during(args, seconds, check)
    assert set(states) <= {0, 1}, states


def test_killed_predict_sieve_export_evaluate_leave_the_old_output_or_the_new_one(
    trained: dict[str, Path],
) -> None:
    root, scene, bundle = trained["root"], str(trained["scene"]), str(trained["bundle"])
    mosaic = root / "m.zarr"
    w2w("predict", scene, "-m", bundle, "-o", str(mosaic), "--block", "128", "--stride", "32")
    ref = root / "m-ref.zarr"
    seconds = timed(
        "predict", scene, "-m", bundle, "-o", str(ref), "--block", "128", "--stride", "16"
    )
    old_id, new_id = _mosaic_identity(mosaic), _mosaic_identity(ref)
    args = [
        "predict",
        scene,
        "-m",
        bundle,
        "-o",
        str(mosaic),
        "--block",
        "128",
        "--stride",
        "16",
        "--overwrite",
    ]
    states = kill_during(args, seconds, lambda: _mosaic_identity(mosaic))
    assert all(s in (old_id, new_id) for s in states), states

    sieved = root / "s.zarr"
    w2w("sieve", str(ref), "-o", str(sieved), "--min-pixels", "3", "--engine", "local")
    ref_s = root / "s-ref.zarr"
    seconds = timed("sieve", str(ref), "-o", str(ref_s), "--min-pixels", "20", "--engine", "local")
    old_id, new_id = _mosaic_identity(sieved), _mosaic_identity(ref_s)
    args = [
        "sieve",
        str(ref),
        "-o",
        str(sieved),
        "--min-pixels",
        "20",
        "--engine",
        "local",
        "--overwrite",
    ]
    states = kill_during(args, seconds, lambda: _mosaic_identity(sieved))
    assert all(s in (old_id, new_id) for s in states), states

    cog = root / "map.tif"
    w2w("export", str(sieved), "-o", str(cog))
    seconds = timed("export", str(ref_s), "-o", str(root / "map-ref.tif"))

    def export_state() -> str:
        item = json.loads((root / "map.json").read_text())
        checksum = item["assets"]["classes"]["file:checksum"]
        assert checksum == "1220" + sha(cog), "the COG is not the one its Item describes"
        return str(item["properties"]["w2w:mosaic_identity"])

    old_item = export_state()
    args = ["export", str(ref_s), "-o", str(cog), "--overwrite"]
    states = kill_during(args, seconds, export_state)
    assert all(s in (old_item, new_id) for s in states), states

    report = root / "evaluation"
    w2w(
        "evaluate",
        str(ref),
        "--scene",
        scene,
        "-m",
        bundle,
        "-o",
        str(report),
        "--split",
        "all",
        "--engine",
        "local",
    )
    seconds = timed(
        "evaluate",
        str(ref),
        "--scene",
        scene,
        "-m",
        bundle,
        "-o",
        str(root / "ev-ref"),
        "--engine",
        "local",
    )

    def evaluate_state() -> str:
        data = json.loads((report / "evaluation.json").read_text())
        assert f"**{data['split']}** split" in (report / "evaluation.md").read_text()
        return str(data["split"])

    args = [
        "evaluate",
        str(ref),
        "--scene",
        scene,
        "-m",
        bundle,
        "-o",
        str(report),
        "--engine",
        "local",
        "--overwrite",
    ]
    states = kill_during(args, seconds, evaluate_state)
    assert set(states) <= {"all", "test"}, states
    assert np.isfinite(seconds)
