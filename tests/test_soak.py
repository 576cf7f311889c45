"""Load (slow): prediction over a larger synthetic state on a Ray with a small object store.

Ray Data's backpressure (and spilling, if it comes to that) must keep the job alive and its
memory bounded: the state's imagery as float32 is far larger than the object store, and the
process tree's peak memory during prediction must stay well below it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SOAK = r"""
import json, sys, time
from pathlib import Path
import ray, torch
from benchmarks.common import PeakMemory
from w2w.model.bundle import Bundle, save_bundle
from w2w.model.models import ModelSpec, build_model
from w2w.model.normalization import Normalizer
from w2w.core.coverage import verify_coverage
from w2w.predict import PredictConfig, predict
from w2w.core.store import SceneStore
from w2w.ingest.synth import SynthConfig, synthesize

work, store_mb = Path(sys.argv[1]), int(sys.argv[2])
sizes = [int(v) for v in sys.argv[3:]]
ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
         object_store_memory=store_mb * 2**20)
results = []
for size in sizes:
    scene = str(work / f"scene-{size}.zarr")
    synthesize(SynthConfig(output=scene, format="store", height=size, width=size, chunk=512,
                           block=2048), progress=False)
    info = SceneStore.open(scene).info
    classes = tuple(c for c in info.classes if c.id != info.unlabelled)
    spec = ModelSpec("Unet", "tu-resnet10t", info.n_bands, len(classes),
                     {"encoder_depth": 3, "decoder_channels": [16, 8, 8]})
    torch.manual_seed(0)
    bundle = str(work / "model.safetensors")
    save_bundle(bundle, Bundle(spec, tuple(info.band_names),
                Normalizer.from_stats(info.stats, list(info.band_names), "percentile"), 128,
                classes, nodata=info.nodata), build_model(spec).state_dict())
    cfg = PredictConfig(scene=scene, bundle=bundle, output=str(work / f"mosaic-{size}.zarr"),
                        block=1024, batch_size=32, actors=1, threads=2)
    with PeakMemory(interval=0.2) as mem:
        t0 = time.time()
        report = predict(cfg, progress=False)
        seconds = time.time() - t0
    summary = ray._private.internal_api.memory_summary(stats_only=True)
    results.append({
        "size": size, "seconds": round(seconds, 1), "start_mib": round(mem.start / 2**20),
        "peak_mib": round(mem.peak / 2**20), "blocks": report.blocks_written,
        "coverage": verify_coverage(cfg.output).ok,
        "object_store": [ln.strip() for ln in summary.splitlines() if "pill" in ln],
    })
print(json.dumps(results))
"""


@pytest.mark.slow
def test_prediction_soak_with_a_small_object_store(tmp_path: Path) -> None:
    """4096^2 then 8192^2 px (4x the area) through a 100 MiB object store: both finish
    with every pixel mapped, and the larger run's peak memory is within 20% of the smaller's
    (the state's float32 imagery alone is 1.5 GiB at 8192^2 px, its class probabilities as
    much again)."""
    store_mb, sizes = 100, (4096, 8192)
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_DATA_LOG_LEVEL": "WARNING"}
    done = subprocess.run(
        [sys.executable, "-c", SOAK, str(tmp_path), str(store_mb), *map(str, sizes)],
        env=env,
        capture_output=True,
        text=True,
        timeout=3000,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    small, large = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"soak: {small}\nsoak: {large}")
    for run in (small, large):
        assert run["blocks"] == (run["size"] // 1024) ** 2 and run["coverage"], run
    assert large["peak_mib"] < 1.2 * small["peak_mib"], (small, large)
    float_image_mib = 6 * 8192 * 8192 * 4 / 2**20
    assert large["peak_mib"] - large["start_mib"] < float_image_mib, large
