"""Object storage that stalls: every command fails within its timeout and retries, with one
line saying so, instead of hanging."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import stalled_endpoint_at

REPO = Path(__file__).resolve().parents[1]
TIMEOUT, RETRIES = 2, 1


@pytest.fixture
def stalled_endpoint() -> Iterator[str]:
    """An 'S3 endpoint' on loopback that accepts every connection and never answers."""
    with stalled_endpoint_at() as url:
        yield url


def test_every_command_fails_within_its_timeout_on_a_stalled_endpoint(
    stalled_endpoint: str, tmp_path: Path
) -> None:
    s3 = "s3://bucket"
    commands = {
        "info": ["info", f"{s3}/scene.zarr"],
        "verify": ["verify", f"{s3}/mosaic.zarr"],
        "ingest": [
            "ingest",
            f"{s3}/image.tif",
            "-o",
            str(tmp_path / "s.zarr"),
            "--engine",
            "local",
        ],
        "ingest to s3": [
            "ingest",
            str(tmp_path / "none.tif"),
            "-o",
            f"{s3}/s.zarr",
            "--engine",
            "local",
        ],
        "train": ["train", f"{s3}/scene.zarr", "--storage-path", str(tmp_path / "runs")],
        "predict": [
            "predict",
            f"{s3}/scene.zarr",
            "-m",
            f"{s3}/m.safetensors",
            "-o",
            str(tmp_path / "m.zarr"),
        ],
        "sieve": [
            "sieve",
            f"{s3}/mosaic.zarr",
            "-o",
            str(tmp_path / "m2.zarr"),
            "--min-pixels",
            "3",
        ],
        "export": ["export", f"{s3}/mosaic.zarr", "-o", str(tmp_path / "map.tif")],
        "evaluate": [
            "evaluate",
            f"{s3}/mosaic.zarr",
            "--scene",
            f"{s3}/scene.zarr",
            "-o",
            str(tmp_path / "ev"),
        ],
        "bundle-info": ["bundle-info", f"{s3}/m.safetensors"],
    }
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "AWS_ENDPOINT_URL": stalled_endpoint,
        "W2W_IO_TIMEOUT": str(TIMEOUT),
        "W2W_IO_RETRIES": str(RETRIES),
    }
    (tmp_path / "none.tif").write_bytes(b"")  # ingest to s3 fails on the output first
    started = time.time()
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "w2w.cli", "--quiet", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, args in commands.items()
    }
    results = {}
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=600)
        results[name] = (proc.returncode, err, time.time() - started)
    for name, (code, err, seconds) in results.items():
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert code != 0, (name, err)
        assert len(lines) == 1 and lines[0].startswith("error:"), (name, err)
        # A request may wait TIMEOUT s, tried 1 + RETRIES times; a command makes a few
        # requests before it knows the store is unreachable (ten commands share 2 cores).
        assert seconds < 60, (name, seconds, err)
    stalled = [n for n, (_, err, _) in results.items() if "did not answer" in err]
    assert len(stalled) >= len(commands) - 1, {n: r[1] for n, r in results.items()}


@pytest.mark.parametrize(
    ("message", "says"),
    [
        ('Read timeout on endpoint URL: "http://127.0.0.1:40371/bucket/x.json"', "did not answer"),
        ('Connect timeout on endpoint URL: "http://s3.local:4403/b/k403"', "did not answer"),
        ("An error occurred (403) when calling the HeadObject operation: Forbidden", "denied"),
        ("An error occurred (AccessDenied) when calling the PutObject operation", "denied"),
        ("Unable to locate credentials", "no credentials"),
    ],
)
def test_storage_errors_are_told_apart_by_their_cause_not_by_digits_in_a_url(
    message: str, says: str
) -> None:
    from w2w.core.storage import remote_error

    assert says in str(remote_error("s3://bucket/x", OSError(message)))


def test_a_storage_failure_raised_inside_a_library_is_a_storage_error() -> None:
    """zarr, Ray or s3fs may raise a storage client's own error (not through the storage
    layer): the command line and the registry still say what it is, in one line."""
    from botocore.exceptions import ReadTimeoutError
    from fsspec.exceptions import FSTimeoutError

    from w2w.core.errors import StorageError, from_os_error

    inner = ReadTimeoutError(endpoint_url="http://127.0.0.1:40371/bucket?delete")
    try:
        try:
            raise inner
        except ReadTimeoutError as exc:
            raise RuntimeError("zarr failed") from exc
    except RuntimeError as outer:
        got = from_os_error(outer)
    assert isinstance(got, StorageError) and "did not answer" in str(got)
    assert "did not answer" in str(from_os_error(FSTimeoutError()))
    assert from_os_error(RuntimeError("a bug")) is None


@pytest.fixture
def trickling_endpoint() -> Iterator[str]:
    """An 'S3 endpoint' on loopback that answers at once but sends an object's bytes one at
    a time, a fifth of a second apart: no single read waits long enough to time out."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    size = 4096

    class Trickle(BaseHTTPRequestHandler):
        def _headers(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("ETag", '"0"')
            self.send_header("Last-Modified", "Mon, 07 Dec 2026 00:00:00 GMT")
            self.end_headers()

        def do_HEAD(self) -> None:
            self._headers()

        def do_GET(self) -> None:
            self._headers()
            try:
                for _ in range(size):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:
                return

        def log_message(self, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_read_that_trickles_ends_at_its_deadline(
    trickling_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each byte comes well within the per-request timeout, so only a deadline on the whole
    read (2 s timeout, one try: a few seconds for 4 KiB) ends it -- not the 14 minutes the
    object would take."""
    import s3fs

    from w2w.core import storage
    from w2w.core.errors import StorageError

    monkeypatch.setenv("AWS_ENDPOINT_URL", trickling_endpoint)
    monkeypatch.setenv("W2W_IO_TIMEOUT", str(TIMEOUT))
    monkeypatch.setenv("W2W_IO_RETRIES", "0")
    s3fs.S3FileSystem.clear_instance_cache()
    t0 = time.monotonic()
    with pytest.raises(StorageError, match="did not answer within"):
        storage.read_bytes("s3://bucket/model.safetensors")
    assert time.monotonic() - t0 < storage.deadline(4096) + 5
    s3fs.S3FileSystem.clear_instance_cache()
