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
