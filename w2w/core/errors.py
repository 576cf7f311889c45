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
