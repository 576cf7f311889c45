"""One rule for every output: built beside the old one, swapped in only when complete.

A store is built under a hidden temporary name beside its final path; only when it is
complete does it replace the old one, which is removed after the swap. A failure at any
point leaves the old output as it was, and removes the half-built one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from w2w.core import storage
from w2w.core.errors import OutputError


@contextlib.contextmanager
def replace_store(output: str, *, overwrite: bool) -> Iterator[str]:
    """Yield a location to build a new store for ``output``, moved into place on success.

    Local stores are built under a hidden temporary name beside ``output`` and swapped in
    only when complete, so a failure never damages an existing store. On object storage
    (no atomic rename) the store is built in place after every input check has passed.
    """
    if storage.exists(output) and not overwrite:
        raise OutputError(f"output store {output} exists already; pass --overwrite to replace it")
    if storage.is_remote(output):
        yield output
        return
    storage.ensure_writable_dir(Path(output).parent)
    work = str(Path(output).with_name(f".{Path(output).name}.w2w-tmp-{uuid.uuid4().hex[:8]}"))
    try:
        yield work
    except BaseException:
        storage.remove_tree(work)
        raise
    move_into_place(work, output)


def move_into_place(work_url: str, output: str) -> None:
    """Replace ``output`` by the finished store at ``work_url`` (local paths only); the old
    output is moved aside first and deleted only once the new one is in place."""
    backup = None
    if os.path.exists(output):
        backup = f"{output}.w2w-old-{uuid.uuid4().hex[:8]}"
        os.replace(output, backup)
    os.replace(work_url, output)
    if backup:
        shutil.rmtree(backup, ignore_errors=True)
