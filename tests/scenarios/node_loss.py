"""Run ingest, training and prediction on a Ray cluster of several raylets on this machine,
each once undisturbed and once with a worker node killed in the middle of it; print what each
run produced, as JSON, for tests/test_multinode.py.

    python -m tests.scenarios.node_loss WORKDIR

A head with no CPUs and two worker nodes with two CPUs each (one node alone can still feed
a training worker), so that all the work runs on
worker nodes. A kill removes (SIGKILL, not graceful) the node that runs the stage's busiest
process once the stage has made progress; a fresh node then takes its place for the next run.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil

MB = 1024 * 1024


def start_cluster() -> tuple[Any, list[Any]]:
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "object_store_memory": 150 * MB},
    )
    workers = [cluster.add_node(num_cpus=2, object_store_memory=150 * MB) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    return cluster, workers


def node_of(pid: int, nodes: list[Any]) -> Any | None:
    """The cluster node whose raylet is an ancestor of process ``pid``."""
    raylets = {n.all_processes["raylet"][0].process.pid: n for n in nodes}
    try:
        proc: psutil.Process | None = psutil.Process(pid)
    except psutil.Error:
        return None
    while proc is not None:
        if proc.pid in raylets:
            return raylets[proc.pid]
        proc = proc.parent()
    return None


def processes(marker: str) -> list[int]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if marker in " ".join(p.info["cmdline"] or []):
                found.append(p.pid)
        except psutil.Error:
            continue
    return found


def killer(
    cluster: Any, nodes: list[Any], ready: Callable[[], bool], marker: str, box: dict[str, Any]
) -> threading.Thread:
    """A thread that, once ``ready()``, removes the node running a ``marker`` process (or
    the first worker node when none is found)."""

    def run() -> None:
        deadline = time.time() + 600
        while time.time() < deadline and not ready():
            time.sleep(0.2)
        target = None
        for pid in processes(marker):
            target = node_of(pid, nodes)
            if target is not None:
                break
        target = target or nodes[0]
        cluster.remove_node(target, allow_graceful=False)
        box["killed"] = nodes.index(target)
        box["killed_at"] = time.time()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def chunks_written(folder: Path, pattern: str) -> int:
    return sum(1 for _ in folder.glob(pattern))


def run_stage(
    stage: str, workdir: Path, cluster: Any, nodes: list[Any], *, kill: bool
) -> dict[str, Any]:
    """Run ``stage`` (on the prepared inputs in ``workdir``), killing a node if ``kill``."""
    import hashlib

    from w2w.core.store import MosaicStore, SceneStore
    from w2w.ingest import IngestConfig, ingest

    box: dict[str, Any] = {}
    source, scene, name = workdir / "source", workdir / "scene.zarr", "killed" if kill else "clean"
    if stage == "ingest":
        out = workdir / f"{name}.zarr"
        if kill:
            pattern = f".{name}.zarr*/image/c/*/*/*"
            killer(
                cluster, nodes, lambda: chunks_written(workdir, pattern) >= 4, "ray::_apply", box
            )
        ingest(
            IngestConfig(
                images=[str(source / "image.tif")],
                label=str(source / "labels.tif"),
                output=str(out),
                chunk=64,
                block=64,
            ),
            progress=False,
        )
        box["identity"] = SceneStore.open(str(out)).identity
    elif stage == "train":
        from tests.conftest import TINY_MODEL
        from w2w.model.bundle import load_bundle
        from w2w.train import TrainConfig, train

        cfg = TrainConfig.from_dict(
            {
                "scene": str(scene),
                "run_name": name,
                "storage_path": str(workdir / "runs"),
                "bundle": str(workdir / f"{name}.safetensors"),
                "model": TINY_MODEL,
                "chips": {"size": 64, "stride": 64},
                "split": {"block_chips": 2, "seed": 1},
                "epochs": 4,
                "batch_size": 4,
                "workers": {"num_workers": 1},
                "patience": None,
                "max_failures": 3,
                "cache_chips": "no",
            }
        )
        if kill:
            snapshot = workdir / "runs" / name / "checkpoint_manager_snapshot.json"
            killer(cluster, nodes, snapshot.exists, "RayTrainWorker", box)
        report = train(cfg, progress=False)
        state = load_bundle(report.bundle).state
        box["weights_sha"] = hashlib.sha256(
            b"".join(np.ascontiguousarray(state[k].numpy()).tobytes() for k in sorted(state))
        ).hexdigest()
        box["losses"] = [h["train_loss"] for h in report.history]
        box["starts"] = report.starts
    elif stage == "predict":
        from w2w.predict import PredictConfig, predict

        out = workdir / f"{name}-m.zarr"
        if kill:
            done = lambda: chunks_written(out, "_w2w/blocks_done/c/*/*") >= 4  # noqa: E731
            killer(cluster, nodes, done, "MapBatches(Predictor)", box)
        bundle = str(workdir / "clean.safetensors")
        report = predict(
            PredictConfig(scene=str(scene), bundle=bundle, output=str(out), block=64, batch_size=4),
            progress=False,
        )
        m = MosaicStore.open(str(out))
        box["classes_sha"] = hashlib.sha256(
            m.read("class", m.grid.full_window, 255).tobytes()
        ).hexdigest()
        box["blocks_written"] = report.blocks_written
    return box


def main() -> None:
    workdir = Path(sys.argv[1])
    from w2w.ingest import IngestConfig, SynthConfig, ingest, synthesize

    source, scene = workdir / "source", workdir / "scene.zarr"
    synthesize(
        SynthConfig(output=str(source), height=640, width=640, seed=5, engine="local"),
        progress=False,
    )
    ingest(
        IngestConfig(
            images=[str(source / "image.tif")],
            label=str(source / "labels.tif"),
            output=str(scene),
            chunk=64,
            block=128,
            engine="local",
        ),
        progress=False,
    )
    cluster, nodes = start_cluster()
    results: dict[str, Any] = {}
    for stage in ("ingest", "train", "predict"):
        results[f"{stage} clean"] = run_stage(stage, workdir, cluster, nodes, kill=False)
        results[f"{stage} killed"] = run_stage(stage, workdir, cluster, nodes, kill=True)
        nodes.pop(results[f"{stage} killed"]["killed"])
        nodes.append(cluster.add_node(num_cpus=2, object_store_memory=150 * MB))
        cluster.wait_for_nodes()
    print("RESULT " + json.dumps(results), flush=True)
    import ray

    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main()
