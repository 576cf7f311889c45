"""Shared fixtures: a real local Ray, a real S3-compatible server on loopback, test rasters."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

# -- slow registry matrices: a share of their cases per run ---------------------------------


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With ``W2W_SLOW_PICK=k/n``, keep a rotating share of the slow tests that take minutes
    each: of every registry matrix (the slow tests parametrized by stage: kill, stall, full
    disk, Ctrl-C for every stage) every ``n``-th case, starting at its ``k``-th (in the
    registry's order), and likewise of the whole-program fault tests marked ``rotate`` (taken
    as one matrix, in the order they are collected). CI runs such a share (``.ci/run`` picks
    ``k`` by the day, so ``n`` days run every case); the same ``k/n`` picks the same cases
    again. Unset, every case runs; other tests always run."""
    pick = os.environ.get("W2W_SLOW_PICK")
    if not pick:
        return
    k, n = (int(v) for v in pick.split("/"))
    keep, drop = [], []
    seen: dict[str, int] = {}
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if item.get_closest_marker("slow") and "stage" in params:
            matrix = item.nodeid.split("[")[0]
        elif item.get_closest_marker("slow") and item.get_closest_marker("rotate"):
            matrix = "rotate"
        else:
            keep.append(item)
            continue
        index = seen[matrix] = seen.get(matrix, -1) + 1
        (keep if index % n == k else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


# -- object storage: a moto server on loopback ---------------------------------------------
# The endpoint and dummy credentials are set before Ray starts so that Ray's worker
# processes inherit them; the server itself starts only when a test asks for it.


def _free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports on loopback (all held open while drawn: a port closed and
    drawn again can come back, and Ray refuses two components on one port)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(n):
            s = stack.enter_context(socket.socket())
            s.bind(("127.0.0.1", 0))
            ports.append(int(s.getsockname()[1]))
        return ports


S3_PORT = _free_port()
S3_ENDPOINT = f"http://127.0.0.1:{S3_PORT}"
os.environ.update(
    {
        "AWS_ENDPOINT_URL": S3_ENDPOINT,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
)
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_TRACKING", "0")

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
CHIAPAS = REAL_DATA / "chiapas_landsat7"
ABER = REAL_DATA / "aberystwyth_sentinel2"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real S3-compatible server (moto, server mode) on 127.0.0.1; yields its endpoint."""
    from benchmarks.whole_state import RequestLog

    server = RequestLog(tmp_path_factory.mktemp("s3-server"), port=S3_PORT)
    yield server.endpoint
    server.close()


@pytest.fixture
def s3_bucket(s3_server: str) -> str:
    """A fresh, empty bucket on the loopback S3 server; yields ``s3://name``."""
    import boto3

    name = f"w2w-test-{time.time_ns()}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return f"s3://{name}"


_W2W_LOGGER = logging.getLogger("w2w")
#: The 'w2w' logger as the session found it, before any command ran in-process.
_W2W_LOGGER_STATE = (list(_W2W_LOGGER.handlers), _W2W_LOGGER.level, _W2W_LOGGER.propagate)


@pytest.fixture(autouse=True)
def _w2w_logger_as_it_was() -> Iterator[None]:
    """Give each test the 'w2w' logger as the session found it: a command run in-process
    (CliRunner) routes it to the console and stops it propagating -- in a fixture of a wider
    scope too, which a per-test snapshot would keep -- and that would hide its records from
    later tests' ``caplog``."""
    handlers, level, propagate = _W2W_LOGGER_STATE

    def restore() -> None:
        _W2W_LOGGER.handlers[:] = handlers
        _W2W_LOGGER.setLevel(level)
        _W2W_LOGGER.propagate = propagate
        _W2W_LOGGER.disabled = False

    restore()
    yield
    restore()


@contextlib.contextmanager
def stalled_endpoint_at() -> Iterator[str]:
    """An 'S3 endpoint' on loopback that accepts every connection and never answers."""
    import threading

    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(256)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        server.close()


class StallingProxy:
    """A TCP proxy on loopback in front of an S3 endpoint: it forwards every request until one
    matches ``when(method, path)``; from then on it forwards nothing more and answers
    nothing, on that connection and on every later one -- an endpoint that stalls part-way
    through a command. :meth:`release` lets later connections through again."""

    _REQUEST = re.compile(rb"^(GET|PUT|POST|DELETE|HEAD) (\S+) HTTP/1\.[01]\r\n")

    def __init__(self, upstream: str, when: Callable[[str, str], bool]) -> None:
        import threading

        self.upstream = upstream.split("://", 1)[1].split(":")
        self.when = when
        self.stalled = threading.Event()
        self.requests: list[tuple[str, str]] = []
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(256)
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self._held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def release(self) -> None:
        """Stop stalling: later connections are forwarded (held ones stay silent)."""
        self.when = lambda method, path: False
        self.stalled.clear()

    def close(self) -> None:
        self.server.close()
        for s in self._held:
            with contextlib.suppress(OSError):
                s.close()

    def _accept(self) -> None:
        import threading

        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            self._held.append(client)
            if self.stalled.is_set():
                continue  # accepted, never answered
            upstream = socket.create_connection((self.upstream[0], int(self.upstream[1])))
            self._held.append(upstream)
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, requests: bool) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                return
            if not data:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
                return
            if requests:
                m = self._REQUEST.match(data)
                if m:
                    method, path = m.group(1).decode(), m.group(2).decode()
                    self.requests.append((method, path))
                    if self.when(method, path):
                        self.stalled.set()
            if self.stalled.is_set():
                return  # hold both sockets open, silent
            try:
                dst.sendall(data)
            except OSError:
                return


@contextlib.contextmanager
def stalling_proxy(upstream: str, when: Callable[[str, str], bool]) -> Iterator[StallingProxy]:
    """A :class:`StallingProxy` in front of ``upstream`` for the length of the block."""
    proxy = StallingProxy(upstream, when)
    try:
        yield proxy
    finally:
        proxy.close()


# -- Ray -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One real local Ray for the whole test session (2 CPUs, no dashboard)."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=300 * 1024 * 1024,
            log_to_driver=False,
        )
    yield
    ray.shutdown()


# -- rasters ---------------------------------------------------------------------------------


def write_tif(
    path: Path,
    data: np.ndarray,
    *,
    crs: str = "EPSG:32613",
    transform: tuple[float, ...] = (10.0, 0.0, 300000.0, 0.0, -10.0, 3500000.0),
    nodata: float | None = None,
    tiled: bool = True,
) -> Path:
    """Write a (band, h, w) or (h, w) array as a GeoTIFF with a real CRS and transform."""
    import rasterio
    from affine import Affine

    arr = data if data.ndim == 3 else data[None]
    profile = {
        "driver": "GTiff",
        "width": arr.shape[2],
        "height": arr.shape[1],
        "count": arr.shape[0],
        "dtype": str(arr.dtype),
        "crs": crs,
        "transform": Affine(*transform),
        "nodata": nodata,
    }
    if tiled and arr.shape[1] >= 16 and arr.shape[2] >= 16:
        profile.update(tiled=True, blockxsize=16, blockysize=16)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(arr)
    return path


@contextlib.contextmanager
def local_copy(url: str, suffix: str = "") -> Iterator[str]:
    """A local file holding the content of an object-store ``url``, for tests that open
    remote outputs with tools that need a local path."""
    import tempfile

    from w2w.core import storage

    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "download" + suffix)
        storage.filesystem(url).get_file(url, local)
        yield local


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded random generator."""
    return np.random.default_rng(12345)


# -- a small trained model, shared by the training, prediction and evaluation tests ---------

#: A small, fast model for tests: a 3-stage ResNet-10 encoder under a light U-Net decoder.
TINY_MODEL = {
    "arch": "Unet",
    "encoder": "tu-resnet10t",
    "options": {"encoder_depth": 3, "decoder_channels": [32, 16, 8]},
}


@pytest.fixture(scope="session")
def synthetic_scene(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 384 x 384 synthetic state with labels, as a scene store."""
    from w2w.ingest.synth import SynthConfig, synthesize

    out = tmp_path_factory.mktemp("scene") / "scene.zarr"
    synthesize(
        SynthConfig(
            output=str(out),
            format="store",
            height=384,
            width=384,
            chunk=128,
            block=128,
            engine="local",
        ),
        progress=False,
    )
    return str(out)


@pytest.fixture(scope="session")
def tiny_run(ray_session: None, synthetic_scene: str, tmp_path_factory: pytest.TempPathFactory):
    """A model trained with 2 DDP workers on the synthetic scene: (config, report)."""
    from w2w.train import TrainConfig, train

    runs = tmp_path_factory.mktemp("runs")
    cfg = TrainConfig.from_dict(
        {
            "scene": synthetic_scene,
            "run_name": "tiny",
            "storage_path": str(runs),
            "model": TINY_MODEL,
            "chips": {"size": 64, "stride": 64},
            "split": {"block_chips": 2, "seed": 1},
            "epochs": 12,
            "batch_size": 4,
            "optim": {"lr": 0.003},
            "workers": {"num_workers": 2},
            "patience": None,
        }
    )
    return cfg, train(cfg, progress=False)
