"""One rule for every output: built beside the old one, swapped in only when complete.

A store is built under a hidden name beside its final path; only when it is complete does it
replace the old one, which is removed after the swap. A failure at any point leaves the old
output as it was. Object storage has no atomic rename: there the new store is copied over
the old prefix once it is complete (the old one is removed only then), and a failure during
that copy leaves the complete new store under its hidden name, which a re-run publishes.
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


def beside(output: str, tag: str) -> str:
    """A hidden location beside ``output`` for building its replacement; the same ``tag``
    (e.g. the new content's identity) gives the same location, so a re-run resumes there."""
    if storage.is_remote(output):
        parent, _, name = output.rpartition("/")
        return f"{parent}/.{name}.w2w-new-{tag}"
    return str(Path(output).with_name(f".{Path(output).name}.w2w-new-{tag}"))


def publish_store(work: str, output: str) -> None:
    """Put the finished store at ``work`` in place of ``output`` (see the module notes)."""
    if not storage.is_remote(output):
        move_into_place(work, output)
        return
    fs = storage.filesystem(output)
    if storage.exists(output):
        storage.remove_tree(output)
    fs.copy(work, output, recursive=True)
    storage.remove_tree(work)


def set_aside(output: str) -> str:
    """Move an existing output to a hidden name beside it (not deleted); returns where."""
    name = output.rstrip("/").rsplit("/", 1)[-1]
    aside = beside(output, f"old-{uuid.uuid4().hex[:8]}").replace(
        f".{name}.w2w-new-", f".{name}.w2w-"
    )
    if storage.is_remote(output):
        storage.filesystem(output).mv(output, aside, recursive=True)
    else:
        os.replace(output, aside)
    return aside


def restore(aside: str, output: str) -> None:
    """Put an output set aside back, replacing what was made in its place since."""
    if storage.exists(output):
        storage.remove_tree(output)
    if storage.is_remote(output):
        storage.filesystem(output).mv(aside, output, recursive=True)
    else:
        os.replace(aside, output)


def publish_files(files: list[tuple[str, Path]]) -> None:
    """Publish a set of finished local files (``(destination, file)``, in order; put the file
    that describes the others, e.g. a STAC Item, last) as one set.

    Locally the set is all-or-nothing: every file is first copied beside its destination
    under a staged name, and a journal lists them; then old files are moved aside, the staged
    ones moved into place, and the old ones deleted. A failure before the journal is complete
    changes nothing; after it, :func:`recover_files` (run by the next publish to the same
    place) finishes the publish, so a reader finds the old set or the new one. On object
    storage every file is one atomic PUT, in order, the last one last: a failure in between
    leaves the new files that were already put beside the old last one; a re-run replaces all.
    """
    if not files:
        return
    if any(storage.is_remote(dest) for dest, _ in files):
        for dest, path in files:
            storage.atomic_put_file(path, dest)
        return
    journal = _journal(files[0][0])
    recover_files(files[0][0])
    token = uuid.uuid4().hex[:8]
    entries = []
    try:
        for dest, path in files:
            storage.ensure_writable_dir(Path(dest).parent)
            staged = f"{dest}.w2w-staged-{token}"
            if Path(path).parent == Path(dest).parent:
                os.replace(path, staged)  # already beside its destination: move it
            else:
                shutil.copyfile(path, staged)
            entries.append({"dest": dest, "staged": staged, "old": f"{dest}.w2w-old-{token}"})
        _write_journal(journal, entries)
    except BaseException:
        for e in entries:
            with contextlib.suppress(FileNotFoundError):
                os.remove(e["staged"])
        raise
    recover_files(files[0][0])


def recover_files(first_destination: str) -> None:
    """Finish a publish that was interrupted after its journal was written (see
    :func:`publish_files`); does nothing when there is no journal."""
    journal = _journal(first_destination)
    if not os.path.exists(journal):
        return
    import json

    entries = json.loads(Path(journal).read_text())
    for e in entries:  # old files aside (kept until every new one is in place)
        if os.path.exists(e["staged"]) and os.path.exists(e["dest"]):
            os.replace(e["dest"], e["old"])
    for e in entries:
        if os.path.exists(e["staged"]):
            os.replace(e["staged"], e["dest"])
    for e in entries:
        with contextlib.suppress(FileNotFoundError):
            os.remove(e["old"])
    os.remove(journal)


def _journal(first_destination: str) -> str:
    p = Path(first_destination)
    return str(p.with_name(f".{p.name}.w2w-publish.json"))


def _write_journal(journal: str, entries: list[dict[str, str]]) -> None:
    import json

    tmp = f"{journal}.part"
    Path(tmp).write_text(json.dumps(entries))
    os.replace(tmp, journal)
