"""Paths that are local files or ``s3://`` URLs, handled through one code path.

Everything w2w writes besides Zarr stores (bundles, COGs, reports, JSON) goes through
:func:`atomic_write_bytes` or :func:`atomic_put_file`: the file appears under its final name
only when it is complete, so a crash never leaves a truncated file there and an existing good
file is never replaced by a broken one. S3 PUTs are atomic by nature; local files are written
to a temporary name in the same folder and moved into place with :func:`os.replace`.

Credentials and endpoints for ``s3://`` come from the environment (``AWS_*`` variables,
``AWS_ENDPOINT_URL`` for S3-compatible servers) or the instance role, never from files.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec

from w2w.core.errors import DiskFullError, InputError, OutputError, StorageError, W2WError

REMOTE_SCHEMES = ("s3://", "gs://", "az://", "abfs://", "memory://")


def is_remote(url: str | Path) -> bool:
    """Whether ``url`` names an object store rather than a local path."""
    return str(url).startswith(REMOTE_SCHEMES)


def normalize(url: str | Path) -> str:
    """A canonical spelling: absolute local paths, URLs without trailing slashes."""
    text = str(url)
    if is_remote(text):
        return text.rstrip("/")
    return str(Path(text).expanduser().absolute())


def join(url: str | Path, *parts: str) -> str:
    """Join path parts onto a local path or URL."""
    base = normalize(url)
    if is_remote(base):
        return "/".join([base, *(p.strip("/") for p in parts)])
    return str(Path(base).joinpath(*parts))


#: Seconds an object-storage request may wait to connect or for data, and how many times a
#: failed request is tried again (with backoff); from ``W2W_IO_TIMEOUT`` / ``W2W_IO_RETRIES``
#: (``w2w --io-timeout``), read where each request is made, Ray workers included.
DEFAULT_IO_TIMEOUT = 60.0
DEFAULT_IO_RETRIES = 3


def io_timeout() -> float:
    """Seconds an object-storage request may wait (connect, or between bytes of data)."""
    return float(os.environ.get("W2W_IO_TIMEOUT", DEFAULT_IO_TIMEOUT))


def io_retries() -> int:
    """How many times a failed object-storage request is tried again."""
    return int(os.environ.get("W2W_IO_RETRIES", DEFAULT_IO_RETRIES))


def s3_endpoint() -> str | None:
    """The S3-compatible endpoint from ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def gdal_options(url: str) -> dict[str, Any]:
    """GDAL's configuration options for reading ``url``: the same endpoint, timeouts and
    retries as every other object-storage call (credentials: GDAL reads the ``AWS_*``
    variables itself). For rasterio's GDAL (``rasterio.Env``) and pyogrio's alike."""
    timeout = max(1, round(io_timeout()))
    options: dict[str, Any] = {
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        "GDAL_HTTP_CONNECTTIMEOUT": timeout,
        "GDAL_HTTP_TIMEOUT": timeout,
        "GDAL_HTTP_MAX_RETRY": io_retries(),
        "GDAL_HTTP_RETRY_DELAY": 1,
    }
    endpoint = s3_endpoint()
    if str(url).startswith("s3://") and endpoint:
        options.update(
            AWS_S3_ENDPOINT=endpoint.split("://", 1)[-1],
            AWS_HTTPS="YES" if endpoint.startswith("https") else "NO",
            AWS_VIRTUAL_HOSTING="FALSE",
        )
    return options


def gdal_path(url: str) -> str:
    """A URL as GDAL names it (``/vsis3/`` for ``s3://``); local paths pass through."""
    text = str(url)
    if text.startswith("s3://"):
        return "/vsis3/" + text[len("s3://") :]
    return text


def storage_options(url: str) -> dict[str, Any]:
    """Fsspec options for ``url``: endpoint, timeouts and retries for ``s3://``."""
    if not str(url).startswith("s3://"):
        return {}
    timeout = io_timeout()
    options: dict[str, Any] = {
        "config_kwargs": {
            "connect_timeout": timeout,
            "read_timeout": timeout,
            # botocore retries each request (timeouts included), with backoff; s3fs's own
            # retry loop is turned off (with_retries), else the two would multiply.
            "retries": {"max_attempts": io_retries() + 1, "mode": "standard"},
        },
    }
    endpoint = s3_endpoint()
    if endpoint:
        options["endpoint_url"] = endpoint
    return options


def with_retries(fs: fsspec.AbstractFileSystem) -> fsspec.AbstractFileSystem:
    """``fs`` with one retry loop only: s3fs keeps its own count on the filesystem (not among
    its options), on top of botocore's, which :func:`storage_options` configures."""
    if hasattr(fs, "retries"):
        fs.retries = 1
    return fs


def filesystem(url: str, *, asynchronous: bool = False) -> fsspec.AbstractFileSystem:
    """The fsspec filesystem serving ``url`` (with timeouts and retries for object storage)."""
    if is_remote(url):
        protocol = str(url).split("://", 1)[0]
        options = storage_options(url)
        if asynchronous:
            options["asynchronous"] = True
            if protocol == "s3":
                # The asynchronous filesystem serves zarr, which reads whole chunks, many at
                # once. With max_concurrency above 1, s3fs sends a HEAD before each whole-object
                # GET (to split a large object into ranged GETs): one extra request per chunk.
                options["max_concurrency"] = 1
        try:
            return with_retries(fsspec.filesystem(protocol, **options))
        except ImportError as exc:
            raise InputError(
                f"{url}: support for {protocol}:// is not installed ({exc}); install the "
                f"matching fsspec backend (s3fs for s3://)"
            ) from None
    return fsspec.filesystem("file")


def exists(url: str | Path) -> bool:
    """Whether a file, folder or prefix exists at ``url``."""
    u = normalize(url)
    if not is_remote(u):
        return os.path.exists(u)
    try:
        return bool(filesystem(u).exists(u))
    except Exception as exc:  # noqa: BLE001 - credential and network problems
        raise remote_error(u, exc) from None


_URL = re.compile(r"[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)


def deadline(nbytes: int) -> float:
    """Seconds a transfer of ``nbytes`` may take in all: every 8 MiB may take the whole
    timeout, every try (a deadline, not a speed limit)."""
    return io_timeout() * (io_retries() + 1) * (2 + nbytes / (8 << 20))


def remote(url: str, method: str, *args: Any, nbytes: int | None = None, **kwargs: Any) -> Any:
    """Call ``method`` of the filesystem serving ``url``, its failures as one clear
    :class:`StorageError` (a missing file stays :class:`FileNotFoundError`). A transfer --
    a write (``put_file``) or a read of ``nbytes`` -- has an overall :func:`deadline` as well
    as the per-request timeouts: a request whose reply never comes (an endpoint that stalls
    while it takes the body) or that trickles in a byte at a time ends too."""
    fs = filesystem(url)
    if method == "put_file":
        nbytes = os.path.getsize(args[0])
    if nbytes is not None:
        kwargs["timeout"] = deadline(nbytes)
    try:
        return getattr(fs, method)(*args, **kwargs)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - object-store errors
        raise remote_error(url, exc) from None


def remote_error(url: str, exc: BaseException) -> StorageError:
    """A clear error for a failed object-store access, naming the likely fix."""
    text = f"{type(exc).__name__}: {exc}"
    # Classify on the message without its URLs: an endpoint's port or a key may hold "403".
    lowered = _URL.sub("<url>", text).lower()
    if "credential" in lowered or "nocredentials" in lowered or "unable to locate" in lowered:
        return StorageError(
            f"{url}: no credentials for object storage ({text}); set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or run on an instance with an IAM role"
        )
    if "accessdenied" in lowered or "forbidden" in lowered or re.search(r"\b403\b", lowered):
        return StorageError(f"{url}: access denied ({text}); check the bucket policy / IAM role")
    if "timeout" in lowered or "timed out" in lowered or isinstance(exc, TimeoutError):
        return StorageError(
            f"{url}: object storage did not answer within {io_timeout():g} s, "
            f"{io_retries() + 1} tries ({text}); check the endpoint and network, or allow "
            "more time with --io-timeout / W2W_IO_TIMEOUT"
        )
    return StorageError(f"{url}: object storage request failed ({text})")


def glob(pattern: str) -> list[str]:
    """The paths or URLs matching a glob pattern, sorted (object-storage errors as one line)."""
    import glob as globlib

    if not is_remote(pattern):
        return sorted(normalize(p) for p in globlib.glob(pattern))
    protocol = pattern.split("://", 1)[0]
    try:
        return sorted(f"{protocol}://{p}" for p in filesystem(pattern).glob(pattern))
    except Exception as exc:  # noqa: BLE001 - object-store errors
        raise remote_error(pattern, exc) from None


def read_bytes(url: str | Path) -> bytes:
    """The content of a local file or object, with a clear error when it is missing."""
    u = normalize(url)
    if not is_remote(u):
        try:
            return Path(u).read_bytes()
        except FileNotFoundError:
            raise InputError(f"file not found: {url}; check the path") from None
        except OSError as exc:
            raise InputError(f"cannot read {url}: {exc.strerror}") from None
    try:
        size = int(remote(u, "size", u))
        return bytes(remote(u, "cat_file", u, nbytes=size))
    except FileNotFoundError:
        raise InputError(f"object not found: {url}; check the URL") from None


def atomic_write_bytes(url: str | Path, data: bytes) -> str:
    """Write ``data`` to ``url`` so that the final name only ever holds a complete file."""
    with tempfile.NamedTemporaryFile(delete=False, suffix=".part") as tmp:
        tmp.write(data)
        tmp_path = tmp.name
    try:
        return atomic_put_file(tmp_path, url)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp_path)


def atomic_put_file(local_path: str | Path, url: str | Path) -> str:
    """Copy a finished local file to ``url`` atomically; returns the normalised destination."""
    from w2w.core import crashpoints, pins  # nothing published from inputs changed meanwhile
    from w2w.core.outputs import staging_tag

    pins.check()
    dest = normalize(url)
    if is_remote(dest):
        remote(dest, "put_file", str(local_path), dest)
        return dest
    folder = Path(dest).parent
    ensure_writable_dir(folder)
    # Named as the publish protocol names staging (its maker's host and pid), so that what a
    # killed process leaves is removed by the next run's guard (outputs.recover).
    tmp = folder / f".{Path(dest).name}.w2w-tmp-{staging_tag()}"
    try:
        shutil.copyfile(local_path, tmp)
        crashpoints.reached("before-swap", dest)
        os.replace(tmp, dest)
        crashpoints.reached("after-swap", dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
    return dest


#: Free space under which a failed write is taken as a full disk: a GDAL write fails with
#: "Write error" and no errno, so the disk is looked at when the write fails.
FULL_BELOW_BYTES = 4 << 20


@contextlib.contextmanager
def writing_to(folder: str | Path) -> Iterator[None]:
    """Writes into local ``folder`` inside the block: a failure while the folder's file system
    has (almost) no space left is reported as the full disk it is, not as the writer's error."""
    try:
        yield
    except W2WError:
        raise
    except Exception as exc:
        if not is_remote(folder):
            try:
                st = os.statvfs(folder)
            except OSError:
                raise exc from None
            if st.f_bavail * st.f_frsize < FULL_BELOW_BYTES:
                raise DiskFullError(
                    f"no space left on the device of {folder}; free space there or choose an "
                    "output on a larger disk (what was written before is unchanged)"
                ) from exc
        raise


def ensure_writable_dir(folder: str | Path) -> None:
    """Create a local folder if needed and check that it can be written to."""
    p = Path(folder)
    blocker = next((q for q in (p, *p.parents) if q.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise OutputError(
            f"cannot create output folder {p}: {blocker} is a file, not a folder; choose "
            "another path"
        )
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"cannot create output folder {p}: {exc.strerror}; choose another path"
        ) from None
    if not os.access(p, os.W_OK | os.X_OK):
        raise OutputError(
            f"output folder {p} is not writable; choose another path or fix permissions"
        )


def remove_tree(url: str | Path) -> None:
    """Delete a folder or prefix, if present."""
    u = normalize(url)
    if is_remote(u):
        with contextlib.suppress(FileNotFoundError):
            remote(u, "rm", u, recursive=True)
    else:
        shutil.rmtree(u, ignore_errors=True)
