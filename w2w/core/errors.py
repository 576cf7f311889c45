"""The errors w2w raises for problems a user can fix.

Every error here carries a message that says what is wrong *and* how to fix it. The CLI
prints the message on one line and exits with ``exit_code``; a traceback is shown only
with ``--debug``. Anything that is not a :class:`W2WError` is a bug in w2w.
"""

from __future__ import annotations


class W2WError(Exception):
    """Base of all user-facing w2w errors."""

    exit_code: int = 2


class ConfigError(W2WError):
    """A configuration file or option is malformed, unknown or out of range."""


class InputError(W2WError):
    """An input (raster, store, bundle) is missing, unreadable or unusable."""


class GridMismatchError(InputError):
    """Two rasters that must share a pixel grid do not."""


class StorageError(InputError):
    """Object storage failed: no answer in time, no credentials, access denied."""


class OutputError(W2WError):
    """An output cannot be written: it exists already, or its location is not writable."""


class BundleError(InputError):
    """A model bundle is corrupt, tampered with, or does not fit the scene."""


class StageFailedError(W2WError):
    """A distributed stage failed on a worker; the message carries the worker's cause."""

    exit_code = 1


class DiskFullError(OutputError):
    """A local file system ran out of space (or quota) while w2w wrote to it."""


#: errno values of a file system that cannot take more data.
_FULL = {28, 122}  # ENOSPC, EDQUOT
_FULL_TEXTS = ("No space left on device", "Disk quota exceeded", "Free disk space available")


def _object_storage_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is an object-storage client's failure (botocore, aiohttp, s3fs, a
    filesystem call past its deadline)."""
    module = type(exc).__module__ or ""
    return module.startswith(("botocore", "aiobotocore", "aiohttp", "s3fs")) or (
        type(exc).__name__ == "FSTimeoutError"
    )


def from_os_error(exc: BaseException) -> W2WError | None:
    """The w2w error for an operating-system error a user can fix (a full disk, a read-only
    file system, object storage that fails or does not answer), found in ``exc`` or its
    causes; None for anything else."""
    import errno

    seen = 0
    cur: BaseException | None = exc
    while cur is not None and seen < 10:
        if _object_storage_failure(cur):  # raised inside a library (zarr, Ray) that called it
            from w2w.core.storage import remote_error, s3_endpoint

            return remote_error(s3_endpoint() or "object storage", cur)
        if any(text in str(cur) for text in _FULL_TEXTS):  # GDAL's, which carry no errno
            return DiskFullError(
                "no space left on the device being written; free space there or choose an "
                "output on a larger disk (what was written before is unchanged)"
            )
        if isinstance(cur, OSError) and cur.errno is not None:
            where = f" writing {cur.filename}" if cur.filename else ""
            if cur.errno in _FULL:
                return DiskFullError(
                    f"no space left on the device{where}; free space there or choose an output "
                    "on a larger disk (what was written before is unchanged)"
                )
            if cur.errno == errno.EROFS:
                return OutputError(f"read-only file system{where}; choose another output path")
        cur = cur.__cause__ or cur.__context__
        seen += 1
    return None
