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


def test_the_same_work_naive_loop_runs_the_chips_w2w_forwards(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The naive baseline that skips empty chips runs exactly the chips holding a valid pixel
    (counted here from the raster itself) and maps those pixels as the loop over every chip
    does; the loop over every chip runs the whole grid."""
    import numpy as np
    import rasterio

    from benchmarks.throughput import FREE_MODEL, make_bundle, naive_baseline
    from tests.conftest import write_tif
    from w2w.api import ingest
    from w2w.ingest.config import IngestConfig

    data = np.random.default_rng(0).integers(1, 1000, (2, 128, 128)).astype("uint16")
    data[:, :, :70] = 0  # outside the state: chips of columns 0 and 32 hold no valid pixel
    image = write_tif(tmp_path / "image.tif", data, nodata=0)
    label = write_tif(tmp_path / "label.tif", (data[0] % 2 + 1).astype("uint8"))
    store = str(tmp_path / "scene.zarr")
    ingest(
        IngestConfig(images=[str(image)], label=str(label), output=store, engine="local"),
        progress=False,
    )
    bundle = make_bundle(store, FREE_MODEL, 32, tmp_path / "free.safetensors", 0)

    same = naive_baseline(str(image), bundle, tmp_path / "a", 1, 4, 32)
    same_map = rasterio.open(tmp_path / "a" / "naive.tif").read(1)
    every = naive_baseline(str(image), bundle, tmp_path / "b", 1, 4, 32, skip_empty=False)
    every_map = rasterio.open(tmp_path / "b" / "naive.tif").read(1)

    valid = (data != 0).all(axis=0)
    holding = sum(
        valid[r : r + 32, c : c + 32].any() for r in range(0, 128, 32) for c in range(0, 128, 32)
    )
    assert same["chips"] == holding == 8 and every["chips"] == 16
    np.testing.assert_array_equal(same_map[valid], every_map[valid])
    assert (same_map[:, :64] == 255).all()


def test_the_request_log_counts_what_the_s3_server_answered(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The whole-state benchmark's request counts come from the server's own log: every
    request a client sends is counted once, under its method and kind."""
    import boto3

    from benchmarks.whole_state import RequestLog

    server = RequestLog(tmp_path)
    try:
        client = boto3.client("s3", endpoint_url=server.endpoint)
        client.create_bucket(Bucket="bench")
        server.take()
        client.put_object(Bucket="bench", Key="s.zarr/image/c/0/0/0", Body=b"x")
        client.put_object(Bucket="bench", Key="s.zarr/image/c/0/0/1", Body=b"x")
        client.put_object(Bucket="bench", Key="m.zarr/_w2w/blocks_done/c/0/0", Body=b"x")
        client.put_object(Bucket="bench", Key="s.zarr/zarr.json", Body=b"{}")
        client.get_object(Bucket="bench", Key="m.zarr/_w2w/blocks_done/c/0/0")
        client.head_object(Bucket="bench", Key="s.zarr/zarr.json")
        client.list_objects_v2(Bucket="bench", Prefix="s.zarr/")
        counts = server.take()
    finally:
        server.close()
    assert counts == {
        "PUT": 4,
        "GET": 2,
        "HEAD": 1,
        "chunk": 2,
        "book": 2,
        "meta": 2,
        "other": 1,
        "total": 7,
    }


def test_export_phases_time_the_footprint_inside_staging(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # A mosaic whose valid area does not fill its blocks: the footprint is polygonized, and
    # its time is counted inside staging, beside the phases and GDAL's COG driver.
    import numpy as np

    from benchmarks.export_phases import export_phases
    from tests.test_export import make_mosaic

    rng = np.random.default_rng(0)
    classes = rng.integers(1, 4, (96, 80)).astype("uint8")
    classes[:40, :30] = 255  # outside the state
    make_mosaic(str(tmp_path / "m.zarr"), classes, block=32)
    got = export_phases(str(tmp_path / "m.zarr"), tmp_path / "out")
    assert got["within_write_stages"]["footprint"] > 0
    assert got["within_write_stages"]["footprint"] <= got["phases"]["write_stages"]
    assert got["phases"]["to_cog"] > 0 and got["gdal_cog_seconds"] > 0
    assert got["total_seconds"] > 0 and got["other_seconds"] < got["total_seconds"]
