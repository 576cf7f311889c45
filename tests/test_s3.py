"""Every path on ``s3://`` (a real S3-compatible server on loopback): the same outputs as local
paths, from ingest through training, prediction and export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate

from tests.conftest import TINY_MODEL, local_copy
from w2w.core import storage
from w2w.core.classes import CLASS_NODATA
from w2w.core.store import MosaicStore, SceneStore
from w2w.export import ExportConfig, export
from w2w.ingest import IngestConfig, ingest
from w2w.ingest.synth import SynthConfig, class_names, synthesize
from w2w.model.bundle import load_bundle
from w2w.predict import PredictConfig, predict
from w2w.train import TrainConfig, train


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic state as GeoTIFFs on local disk."""
    folder = tmp_path_factory.mktemp("s3src")
    synthesize(
        SynthConfig(output=str(folder), height=160, width=192, seed=3, engine="local"),
        progress=False,
    )
    return folder


def _pipeline(images: str, label: str, bundle: str, root: str) -> tuple[str, str]:
    """Ingest -> predict -> export with every output under ``root``; (mosaic, COG) URLs."""
    scene = storage.join(root, "scene.zarr")
    ingest(
        IngestConfig(
            images=[images], label=label, output=scene, classes=class_names(), chunk=64, block=128
        ),
        progress=False,
    )
    mosaic = storage.join(root, "mosaic.zarr")
    predict(PredictConfig(scene=scene, bundle=bundle, output=mosaic, block=64), progress=False)
    cog = storage.join(root, "map", "landcover.tif")
    export(ExportConfig(input=mosaic, output=cog, blocksize=64), progress=False)
    return mosaic, cog


def test_ingest_predict_export_on_s3_equal_the_local_run(
    sources: Path, tiny_run, tmp_path: Path, s3_bucket: str, ray_session: None
) -> None:
    fs = storage.filesystem(s3_bucket)
    for name in ("image.tif", "labels.tif"):
        fs.put_file(str(sources / name), f"{s3_bucket}/in/{name}")
    bundle_s3 = f"{s3_bucket}/models/model.safetensors"
    fs.put_file(tiny_run[1].bundle, bundle_s3)

    local = _pipeline(
        str(sources / "image.tif"), str(sources / "labels.tif"), tiny_run[1].bundle, str(tmp_path)
    )
    remote = _pipeline(
        f"{s3_bucket}/in/image.tif", f"{s3_bucket}/in/labels.tif", bundle_s3, f"{s3_bucket}/out"
    )

    a, b = MosaicStore.open(local[0]), MosaicStore.open(remote[0])
    assert a.grid == b.grid and b.done_blocks().all()
    for name, fill in (("class", CLASS_NODATA), ("confidence", 0)):
        np.testing.assert_array_equal(
            a.read(name, a.grid.full_window, fill), b.read(name, b.grid.full_window, fill)
        )
    scene = SceneStore.open(f"{s3_bucket}/out/scene.zarr")
    assert scene.info.stats == SceneStore.open(str(tmp_path / "scene.zarr")).info.stats
    with local_copy(remote[1], suffix=".tif") as path:
        assert cog_validate(path)[0]
        with rasterio.open(path) as r, rasterio.open(local[1]) as loc:
            np.testing.assert_array_equal(r.read(), loc.read())
            assert r.crs == loc.crs and r.transform == loc.transform
            assert r.colormap(1) == loc.colormap(1)
    for suffix in ("_confidence.tif", ".json", "_quicklook.png"):
        assert storage.exists(remote[1].removesuffix(".tif") + suffix)


def test_training_with_storage_and_bundle_on_s3(
    sources: Path, tmp_path: Path, s3_bucket: str, ray_session: None
) -> None:
    scene = f"{s3_bucket}/scene.zarr"
    ingest(
        IngestConfig(
            images=[str(sources / "image.tif")],
            label=str(sources / "labels.tif"),
            output=scene,
            classes=class_names(),
            chunk=64,
            block=128,
        ),
        progress=False,
    )
    cfg = TrainConfig.from_dict(
        {
            "scene": scene,
            "run_name": "s3-run",
            "storage_path": f"{s3_bucket}/runs",
            "bundle": f"{s3_bucket}/models/m.safetensors",
            "model": TINY_MODEL,
            "chips": {"size": 32, "stride": 32},
            "split": {"block_chips": 2, "seed": 0},
            "epochs": 1,
            "batch_size": 8,
            "workers": {"num_workers": 1},
            "patience": None,
        }
    )
    report = train(cfg, progress=False)
    assert report.epochs_run == 1
    assert report.bundle == f"{s3_bucket}/models/m.safetensors"
    assert load_bundle(report.bundle).content_hash == report.metrics["content_hash"]
    fs = storage.filesystem(s3_bucket)
    run_files = [p.rsplit("/", 1)[-1] for p in fs.ls(f"{s3_bucket}/runs/s3-run")]
    assert {"metrics.json", "metrics.csv", "learning_curves.png", "w2w-run.json"} <= set(run_files)
    assert any(name.startswith("checkpoint_") for name in run_files), run_files
    # Re-running the same run name with one more epoch resumes from its checkpoint on S3.
    again = train(cfg.replace(epochs=2), progress=False)
    assert again.starts == [0, 1] and again.epochs_run == 2


def test_a_store_on_s3_reads_a_chunk_with_one_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A zarr store on object storage sends one GET per chunk it reads, no HEAD before it
    (s3fs sends one to size a whole-object read unless told not to split reads): the server's
    own request log counts them."""
    import boto3
    import zarr

    from benchmarks.whole_state import RequestLog
    from w2w.core.store.base import _open_zarr_store

    server = RequestLog(tmp_path)
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint)
        boto3.client("s3", endpoint_url=server.endpoint).create_bucket(Bucket="chunks")
        store = _open_zarr_store("s3://chunks/a.zarr", read_only=False)
        zarr.create_array(store, shape=(1024, 1024), chunks=(512, 512), dtype="u1")[:] = 7
        array = zarr.open_array(_open_zarr_store("s3://chunks/a.zarr", read_only=True))
        server.take()
        assert int(array[0:512, 0:1024].sum()) == 7 * 512 * 1024
        counts = server.take()
    finally:
        server.close()
    assert counts.get("GET") == 2 and "HEAD" not in counts, counts
