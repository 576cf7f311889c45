"""The benchmark harness's own arithmetic and helpers (the benchmarks themselves are run by
hand: `python -m benchmarks run`; they never assert a speed)."""

from __future__ import annotations

import math

import pytest

from benchmarks.common import PeakMemory, timed
from benchmarks.gpu import GPU_SPECS, model_sweep, project, spec_of
from benchmarks.throughput import chip_forwards, km2_per_hour


def test_chip_forwards_count_the_halo_recomputation() -> None:
    # stride = chip: blocks that are multiples of the chip recompute nothing.
    assert chip_forwards(2048, 2048, 1024, 256, 256) == (64, 64)
    # stride = chip / 2: 15 chip origins a side (the last at 1792 reaches the edge); each
    # 1024 px block needs the 8 of them that touch it, one recomputed across the seam.
    forwards, unique = chip_forwards(2048, 2048, 1024, 256, 128)
    assert unique == 15 * 15
    assert forwards == 4 * 8 * 8


def test_area_rate() -> None:
    # 1 Mpx/s of 10 m pixels is 100 km² per second.
    assert km2_per_hour(1.0, 10.0) == pytest.approx(360_000)


def test_projection_formula() -> None:
    a10g = GPU_SPECS["A10G"]
    rows = project(2.47e9, 256, 128, 1.0, 100.0, measured_on=a10g, gpus=(1, 4))
    one = 2.47e9 / 128**2 / 100.0 / 3600
    assert rows[0].hours_low == pytest.approx(one) and rows[0].hours_high == pytest.approx(one)
    assert rows[1].hours_low == pytest.approx(one / (4 * 0.95))
    # Measured on a faster GPU: the A10G takes longer, bounded by compute and bandwidth ratios.
    h200 = project(2.47e9, 256, 128, 1.0, 100.0, measured_on=GPU_SPECS["H200"], gpus=(1,))[0]
    by_compute = one * GPU_SPECS["H200"][0] / a10g[0]
    by_bandwidth = one * GPU_SPECS["H200"][1] / a10g[1]
    assert h200.hours_low == pytest.approx(min(by_compute, by_bandwidth))
    assert h200.hours_high == pytest.approx(max(by_compute, by_bandwidth))
    assert spec_of("NVIDIA H200")[0] == "H200" and spec_of("NVIDIA A10G")[0] == "A10G"
    assert spec_of("Radeon") is None


def test_model_sweep_runs_on_the_cpu() -> None:
    rows = model_sweep("cpu", (64,), (2,), seconds=0.1, precision="fp32")
    assert rows[0]["chips_per_s"] > 0 and rows[0]["precision"] == "fp32"


def test_the_gpu_benchmark_runs_with_torch_side_packages_only(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``python -m benchmarks gpu`` must run on a bare machine with PyTorch: the whole run
    (here on the CPU, small sizes) imports no Ray, GDAL, zarr or pydantic."""
    import json
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from benchmarks.gpu import main\n"
        f"rc = main(['--device', 'cpu', '--quick', '--batches', '2', '--out', {str(tmp_path)!r}])\n"
        "heavy = {'ray', 'rasterio', 'osgeo', 'zarr', 'pydantic', 'fsspec', 'pyarrow', 'psutil'}\n"
        "print('HEAVY', sorted(heavy & {m.split('.')[0] for m in sys.modules}), rc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY [] 0" in out.stdout
    res = json.loads((tmp_path / "gpu.json").read_text())
    assert [r["precision"] for r in res["block_path"]] == ["bf16", "fp32"]
    assert all(r["chips_per_s"] > 0 and r["ratio_to_model_only"] > 0 for r in res["block_path"])
    assert 0 <= res["agreement"] <= 1


def test_peak_memory_sees_an_allocation() -> None:
    """The sampler catches memory held between samples and released before the end."""
    import time

    import numpy as np

    with PeakMemory(interval=0.05) as mem:
        a = np.ones(200 * 2**20 // 8)
        time.sleep(0.3)  # several sampling intervals
        del a
    assert (mem.peak - mem.start) / 2**20 > 150

    t = timed(lambda: 1)
    assert t.result == 1 and t.seconds >= 0 and not math.isnan(t.grown_mib)
