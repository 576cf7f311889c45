"""One publish protocol for every output: built beside the old one, swapped in only when
complete, the old one removed last; a half-done publish found later is finished or rolled back.

* A **store** is built under a hidden staging name beside its final path
  (:func:`replace_store`) and swapped in when complete (:func:`move_into_place`: the old one
  moved aside, the new one moved in, the old one deleted).
* A **file set** (a COG, its sidecars and STAC Item) is staged beside its destinations with a
  journal and then moved in (:func:`publish_files`).
* A **training run** is built in place of the old one, which waits aside with a journal
  (:func:`set_aside`) until the new run finished (:func:`discard_aside`, which marks the
  journal done before it deletes the old one), or comes back (:func:`restore`).

A command killed at any point leaves either the old output or the new one, plus leftovers that
:func:`recover` (run by the output guard before every stage, on all of its outputs) settles:
a file-set journal is finished; an output set aside under a journal is put back (the new one
never finished), or deleted when the journal says the new one had finished; an old output
moved aside by a swap is deleted when the new one is in place, put back when it is not;
staging leftovers of processes that are gone are removed (a staging name carries its maker's
host and process id, so a live command's work is never touched).

Object storage has no atomic rename: there too a new store is built under its staging prefix,
and only once it is complete is the old prefix removed and the new one copied over it. A
failure while building leaves the old store as it was (the staging prefix is removed); a
failure during that copy leaves the complete new store under its staging prefix (for
``predict --overwrite`` a re-run publishes it; other stages build again). Files are single
PUTs, the describing one (the STAC Item) last: a failure in between leaves new data files
beside the previous Item until the command is run again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import socket
import uuid
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from w2w.core import crashpoints, pins, storage
from w2w.core.errors import OutputError

log = logging.getLogger("w2w")

#: The record a training run keeps in its folder (what defines it, for resuming).
RUN_FILE = "w2w-run.json"
#: The record in a folder of files that w2w writes whole (synthetic tiles): what it holds.
FILESET_FILE = "w2w-files.json"

_HOST = f"{zlib.crc32(socket.gethostname().encode()):08x}"


def cleanup(what: str, fn: Callable[..., object], *args: object, **kwargs: object) -> None:
    """Run a clean-up step after a failure; its own failure is logged, never raised, so it
    cannot hide the error that caused the clean-up (the next run's guard finishes it)."""
    try:
        fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - reported, the cause goes on
        log.warning(
            "%s failed too (%s: %s); the next run cleans it up", what, type(exc).__name__, exc
        )


def staging_tag() -> str:
    """A unique tag for a staging name that says which host and process made it."""
    return f"h{_HOST}p{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _maker_gone(name: str) -> bool:
    """Whether the process named in a staging name (see :func:`staging_tag`) is gone; names
    without one (older w2w) and other hosts' are taken as live, and left alone."""
    m = re.search(r"h([0-9a-f]{8})p(\d+)-", name)
    if not m or m.group(1) != _HOST:
        return False
    try:
        os.kill(int(m.group(2)), 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, as another user's
        pass
    return False


@contextlib.contextmanager
def replace_store(output: str, *, overwrite: bool) -> Iterator[str]:
    """Yield a location to build a new store for ``output``, moved into place on success.

    The store is built under a hidden staging name beside ``output`` and put in place only
    when complete (:func:`publish_store`), so a failure never damages an existing store; a
    failed build's staging store is removed.
    """
    if storage.exists(output) and not overwrite:
        raise OutputError(f"output store {output} exists already; pass --overwrite to replace it")
    if not storage.is_remote(output):
        storage.ensure_writable_dir(Path(output).parent)
    work = hidden_beside(output, f"tmp-{staging_tag()}")
    try:
        yield work
    except BaseException:
        cleanup(f"removing the unfinished {work}", _remove_until_gone, work)
        raise
    publish_store(work, output)


def move_into_place(work_url: str, output: str) -> None:
    """Replace ``output`` by the finished store at ``work_url`` (local paths only); the old
    output is moved aside first and deleted only once the new one is in place."""
    pins.check()
    crashpoints.reached("before-swap", output)
    backup = None
    if os.path.exists(output):
        backup = hidden_beside(output, f"swap-{staging_tag()}")
        os.replace(output, backup)
        crashpoints.reached("mid-swap", output)
    os.replace(work_url, output)
    if backup:
        crashpoints.reached("after-swap", output)
        shutil.rmtree(backup, ignore_errors=True)


def beside(output: str, tag: str) -> str:
    """A hidden location beside ``output`` for building its replacement; the same ``tag``
    (e.g. the new content's identity) gives the same location, so a re-run resumes there."""
    return hidden_beside(output, f"new-{tag}")


def discard_replacements(output: str) -> list[str]:
    """Remove what :func:`beside` holds for ``output`` once a replacement of it has been
    published: a killed ``--overwrite`` run with other settings left one, which a re-run
    with those settings would have resumed, and nothing else would ever remove. Returns what
    was removed."""
    url = storage.normalize(output)
    prefix = hidden_beside(url, "new-").rsplit("/", 1)[-1]
    removed = [where for name, where in _beside_entries(url) if name.startswith(prefix)]
    for where in removed:
        if storage.is_remote(where):
            storage.remove_tree(where)
        else:
            remove_path(Path(where))
    return removed


def _beside_entries(output: str) -> list[tuple[str, str]]:
    """(name, location) of everything in the folder (or under the prefix) of ``output``."""
    parent = output.rstrip("/").rpartition("/")[0]
    if storage.is_remote(output):
        scheme = output.split("://", 1)[0]
        try:
            entries = storage.remote(parent, "ls", parent, detail=False, refresh=True)
        except FileNotFoundError:
            return []
        found = [str(e).rstrip("/") for e in entries]
        return [(e.rsplit("/", 1)[-1], f"{scheme}://{e}") for e in found]
    folder = Path(parent or ".")
    return [(q.name, str(q)) for q in folder.iterdir()] if folder.is_dir() else []


def publish_store(work: str, output: str) -> None:
    """Put the finished store at ``work`` in place of ``output`` (see the module notes)."""
    if not storage.is_remote(output):
        move_into_place(work, output)
        return
    pins.check()
    crashpoints.reached("before-swap", output)
    if storage.exists(output):
        storage.remove_tree(output)
        crashpoints.reached("mid-swap", output)
    storage.remote(output, "copy", work, output, recursive=True)
    crashpoints.reached("after-swap", output)
    storage.remove_tree(work)


def set_aside(output: str) -> str:
    """Move an existing output to a hidden name beside it (not deleted) while its replacement
    is built in its place; returns where. A journal beside it says so until
    :func:`discard_aside` or :func:`restore` settles it, so that :func:`recover` puts the old
    output back if this process is killed first."""
    aside = _aside_name(output)
    storage.atomic_write_bytes(_aside_journal(output), json.dumps({"aside": aside}).encode())
    crashpoints.reached("before-swap", output)
    _move(output, aside)
    crashpoints.reached("mid-swap", output)
    return aside


def discard_aside(aside: str, output: str) -> None:
    """The replacement of ``output`` is complete: say so in the journal (from then on
    :func:`recover` finishes the discard instead of putting the old one back), delete the old
    one set aside, then the journal."""
    journal = _aside_journal(output)
    storage.atomic_write_bytes(journal, json.dumps({"aside": aside, "done": True}).encode())
    crashpoints.reached("after-swap", output)
    _finish_discard(aside, output)


def _finish_discard(aside: str, output: str) -> None:
    storage.remove_tree(aside)
    _remove(_aside_journal(output))


def restore(aside: str, output: str) -> None:
    """Put an output set aside back, replacing what was made in its place since."""
    if storage.exists(aside):
        if storage.exists(output):
            storage.remove_tree(output)
        _move(aside, output)
    _remove(_aside_journal(output))


def _move(src: str, dst: str) -> None:
    """Rename a folder or prefix (object storage: copied and deleted, not atomic)."""
    if storage.is_remote(src):
        # Object by object (files only: a folder-marker key has nothing to copy), then the
        # source; a failure part-way leaves the source whole.
        files = storage.remote(src, "find", src)
        scheme = src.split("://", 1)[0]
        for f in files:
            key = f"{scheme}://{f}"
            storage.remote(src, "copy", key, dst + key[len(src) :])
        storage.remove_tree(src)
    else:
        os.replace(src, dst)


def recover(*outputs: str) -> None:
    """Settle what a killed publish left at ``outputs`` (see the module notes); does nothing
    where nothing was left. Runs before a stage writes them, on all of a stage's outputs at
    once: every journal is settled first -- a file set's journal lies beside its first file
    and lists staged files beside the others -- and only then are leftovers removed."""
    urls = [storage.normalize(o) for o in outputs]
    for output in urls:
        _settle_journals(output)
    for output in urls:
        if storage.is_remote(output):
            _remove_remote_leftovers(output)
        else:
            _remove_leftovers(Path(output))


def _remove_remote_leftovers(output: str) -> None:
    """On object storage: remove the staging prefixes (``.NAME.w2w-tmp-*``) of processes of
    this host that are gone -- a build that failed where even its clean-up could not reach
    the endpoint leaves one."""
    name = output.rstrip("/").rpartition("/")[2]
    for leaf, where in _beside_entries(output):
        if leaf.startswith(f".{name}.w2w-tmp-") and _maker_gone(leaf):
            storage.remove_tree(where)


def _settle_journals(output: str) -> None:
    journal = _aside_journal(output)
    if storage.exists(journal):  # a replacement was being built in place
        record = json.loads(storage.read_bytes(journal))
        aside = record["aside"]
        if record.get("done"):  # it had finished: the old one goes
            _finish_discard(aside, output)
        elif not _maker_gone(aside.rsplit("/", 1)[-1]):
            raise OutputError(
                f"{output} is being replaced by another w2w command (see {journal}); wait for "
                "it to finish, or if none runs any more, remove that file and run again"
            )
        else:
            restore(aside, output)
    if not storage.is_remote(output):
        recover_files(output)


def _remove_leftovers(p: Path) -> None:
    """Settle a swap killed between its renames; remove staging left by dead processes."""
    if not p.parent.is_dir():
        return
    prefix = f".{p.name}.w2w-"
    for q in p.parent.iterdir():
        name = q.name
        if name.startswith(prefix + "swap-") and _maker_gone(name):
            if p.exists():
                remove_path(q)  # the swap finished: the old output goes last
            else:
                os.replace(q, p)  # killed between the two renames: the old one comes back
        elif _maker_gone(name) and (
            name.startswith((prefix + "tmp-", f"{p.name}.w2w-staged-"))
            # a record of the protocol's own (a journal) written atomically beside it
            or (name.startswith(f".{prefix}") and ".w2w-tmp-" in name)
        ):
            remove_path(q)


def _remove_until_gone(url: str) -> None:
    """Remove a staging tree a failure left; a write still in flight in another thread (a
    store's I/O pool) can recreate a file just after, so look again a few times."""
    import time

    for _ in range(20):
        storage.remove_tree(url)
        if storage.is_remote(url) or not os.path.exists(url):
            time.sleep(0.05)
            if storage.is_remote(url) or not os.path.exists(url):
                return
        time.sleep(0.1)
    raise OSError(f"{url} could not be removed")


def hidden_beside(output: str, suffix: str) -> str:
    """``.NAME.w2w-SUFFIX`` in the folder (or prefix) of ``output``: where w2w keeps what it
    stages or sets aside for that output."""
    parent, _, name = output.rstrip("/").rpartition("/")
    return f"{parent}/.{name}.w2w-{suffix}"


def _aside_name(output: str) -> str:
    return hidden_beside(output, f"old-{staging_tag()}")


def _aside_journal(output: str) -> str:
    return hidden_beside(output, "aside.json")


def _remove(url: str) -> None:
    if storage.is_remote(url):
        with contextlib.suppress(FileNotFoundError):
            storage.remote(url, "rm", url)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(url)


def remove_path(p: Path) -> None:
    """Remove a local file or folder, if present."""
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def publish_files(files: list[tuple[str, Path]]) -> None:
    """Publish a set of finished local files (``(destination, file)``, in order; put the file
    that describes the others, e.g. a STAC Item, last) as one set. An entry may be a folder,
    replaced whole (local destinations only).

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
    pins.check()
    if any(storage.is_remote(dest) for dest, _ in files):
        for dest, path in files:
            storage.atomic_put_file(path, dest)
        return
    journal = _journal(files[0][0])
    recover_files(files[0][0])
    token = staging_tag()
    entries = []
    try:
        for dest, path in files:
            storage.ensure_writable_dir(Path(dest).parent)
            staged = f"{dest}.w2w-staged-{token}"
            # Listed first, so that a copy cut short (a full disk) is cleaned up too.
            entries.append({"dest": dest, "staged": staged, "old": f"{dest}.w2w-old-{token}"})
            if Path(path).parent == Path(dest).parent:
                os.replace(path, staged)  # already beside its destination: move it
            elif Path(path).is_dir():
                shutil.copytree(path, staged)
            else:
                shutil.copyfile(path, staged)
        crashpoints.reached("before-swap", *(dest for dest, _ in files))
        _write_journal(journal, entries)
    except BaseException:
        for e in entries:
            cleanup(f"removing {e['staged']}", remove_path, Path(e["staged"]))
        raise
    recover_files(files[0][0])


def recover_files(first_destination: str) -> None:
    """Finish a publish that was interrupted after its journal was written (see
    :func:`publish_files`); does nothing when there is no journal."""
    journal = _journal(first_destination)
    if not os.path.exists(journal):
        return
    entries = json.loads(Path(journal).read_text())
    for e in entries:  # old files aside (kept until every new one is in place)
        if os.path.exists(e["staged"]) and os.path.exists(e["dest"]):
            os.replace(e["dest"], e["old"])
    crashpoints.reached("mid-swap", *(e["dest"] for e in entries))
    for e in entries:
        if os.path.exists(e["staged"]):
            os.replace(e["staged"], e["dest"])
    crashpoints.reached("after-swap", *(e["dest"] for e in entries))
    for e in entries:
        remove_path(Path(e["old"]))
    os.remove(journal)


def _journal(first_destination: str) -> str:
    p = Path(first_destination)
    return str(p.with_name(f".{p.name}.w2w-publish.json"))


def _write_journal(journal: str, entries: list[dict[str, str]]) -> None:
    tmp = f"{journal}.part"
    try:
        Path(tmp).write_text(json.dumps(entries))
        os.replace(tmp, journal)
    except BaseException:
        cleanup(f"removing {tmp}", _remove, tmp)
        raise
