"""The one output guard every stage passes through, applied by the stage registry.

Before a stage runs (:func:`check`), with nothing written yet:

1. every input and every output is resolved once to its real location: local paths with
   ``..`` and symlinks resolved (:func:`os.path.realpath`), URLs with ``.``, ``..`` and
   repeated slashes collapsed. A stage names its inputs (globs, list files and STAC hrefs
   expanded) and its outputs through its config (:meth:`StageConfig.input_locations`,
   :meth:`StageConfig.output_targets`), so a new stage or a new output option is guarded
   without code of its own;
2. an output that is an input, lies inside one or holds one is refused;
3. a half-done publish left at an output by a killed run is finished or rolled back, and
   staging leftovers of dead processes are removed (:func:`w2w.core.outputs.recover`);
4. an existing output needs ``overwrite``, and ``overwrite`` replaces only what w2w made: a
   store must be a w2w store, a run folder a w2w run, a folder w2w writes whole its record
   of what it holds (``w2w-files.json``), a file a file (never a folder).
   Outputs a stage resumes (a training run, an unfinished mosaic) may exist without it: the
   stage compares their recorded content identity with its inputs'.
"""

from __future__ import annotations

import json
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from w2w.core import storage
from w2w.core.errors import InputError, OutputError, StorageError

if TYPE_CHECKING:
    from w2w.core.config import StageConfig

#: What an output is: a Zarr store, one file, a training run's folder, a folder w2w writes
#: whole (``fileset``: synthetic tiles), or a folder that only holds the stage's files (never
#: replaced whole, so only checked for overlap).
OutputKind = Literal["store", "file", "run", "fileset", "folder"]


@dataclass(frozen=True)
class Target:
    """One output of a stage: what it is (for messages), where, and of which kind."""

    what: str
    url: str
    kind: OutputKind
    #: The stage picks up an existing one where it left off (after checking it is its own).
    resumable: bool = False


def real_location(url: str) -> str:
    """Where ``url`` really is: a local path with ``~``, ``..`` and symlinks resolved (of the
    part that exists), or a URL with ``.``, ``..`` and repeated slashes collapsed."""
    text = str(url)
    if storage.is_remote(text):
        scheme, _, rest = text.partition("://")
        bucket, _, key = rest.partition("/")
        key = posixpath.normpath("/" + key).lstrip("/") if key else ""
        return f"{scheme.lower()}://{bucket}" + (f"/{key}" if key and key != "." else "")
    return os.path.realpath(os.path.expanduser(text))


def relation(output: str, path: str) -> str | None:
    """How an output's real location relates to an input's: 'is', 'lies inside', 'holds'."""
    if output == path:
        return "is"
    if output.startswith(path.rstrip("/") + "/"):
        return "lies inside"
    if path.startswith(output.rstrip("/") + "/"):
        return "holds"
    return None


def overlap_problem(cfg: StageConfig, *, expand: bool) -> str | None:
    """The first output that is, lies inside or holds an input of ``cfg``, described; or None.

    ``expand`` also looks through globs, list files and STAC documents (it reads them)."""
    inputs = [(what, real_location(u)) for what, u in cfg.input_locations(expand=expand)]
    for target in cfg.output_targets():
        out = real_location(target.url)
        for what, path in inputs:
            rel = relation(out, path)
            if rel:
                return (
                    f"{target.what} {target.url} {rel} the input {what}"
                    + (f" ({path})" if path != out else "")
                    + "; the stage would destroy what it reads: give another output path"
                )
    return None


def check(cfg: StageConfig) -> None:
    """The guard (see the module notes); raises :class:`OutputError` naming the output."""
    for what, url in cfg.input_locations(expand=False):
        _require_utf8(what, url, InputError)
    for target in cfg.output_targets():
        _require_utf8(target.what, target.url, OutputError)
    problem = overlap_problem(cfg, expand=True)
    if problem:
        raise OutputError(problem)
    check_outputs(cfg, settle=True)


def check_outputs(cfg: StageConfig, *, settle: bool) -> None:
    """The guard's rules for existing outputs (see the module notes); with ``settle``, what a
    killed run left at each output is settled first. ``w2w pipeline`` runs this for every
    stage before the first one starts (without ``settle``), so that a later stage's output is
    refused before hours of earlier work."""
    from w2w.core.outputs import recover

    overwrite = bool(getattr(cfg, "overwrite", False))
    targets = cfg.output_targets()
    for target in targets:
        if target.kind == "folder":
            _check_folder_slot(target)
    if settle:  # all at once: a file set's journal before the staged files it lists
        recover(*(t.url for t in targets if t.kind != "folder"))
    for target in targets:
        _require_no_broken_link(target)
        _require_writable_place(target)
        if target.kind == "folder":
            continue
        if not storage.exists(target.url):
            continue
        made_by_w2w(target)  # a folder of user files is never replaced nor resumed
        if not overwrite and not target.resumable:
            raise OutputError(
                f"{target.what} {target.url} exists already; pass --overwrite to replace it or "
                "choose another path"
            )


def _require_utf8(what: str, url: str, error: type[Exception]) -> None:
    """A path w2w records (in metadata, STAC and logs) must be text: one whose name holds
    bytes that are not UTF-8 is refused before any work."""
    try:
        str(url).encode("utf-8")
    except UnicodeEncodeError:
        shown = str(url).encode("utf-8", "backslashreplace").decode()
        raise error(
            f"{what} {shown}: the path holds bytes that are not UTF-8 text; rename it"
        ) from None


def _require_writable_place(target: Target) -> None:
    """The folder an output goes in (its nearest existing one: the rest is made) must be a
    folder w2w may write in -- the replacement is built beside the output -- or the stage
    would fail only after its work."""
    url = target.url
    if storage.is_remote(url):
        return
    here = Path(os.path.abspath(os.path.expanduser(url))).parent
    while not here.exists() and here != here.parent:
        here = here.parent
    if not here.is_dir():
        raise OutputError(
            f"{target.what} {url}: {here} is a file, not a folder; choose another path"
        )
    if not os.access(here, os.W_OK | os.X_OK):
        raise OutputError(
            f"{target.what} {url}: cannot write in {here} (a read-only file system, or no "
            "permission); choose another path"
        )


def _require_no_broken_link(target: Target) -> None:
    """A symbolic link at an output that leads nowhere (a loop, or a missing target) is not
    an output w2w can write through nor one it may replace: refused before any work."""
    url = target.url
    if storage.is_remote(url):
        return
    path = os.path.expanduser(url)
    parts = Path(path).parts
    for k in range(1, len(parts) + 1):  # the link may be the output or a folder above it
        here = os.path.join(*parts[:k])
        if os.path.islink(here) and not os.path.exists(here):
            raise OutputError(
                f"{target.what} {url}: {here} is a symbolic link that leads nowhere (a loop "
                "or a missing target); remove the link or choose another path"
            )


def _check_folder_slot(target: Target) -> None:
    if not storage.is_remote(target.url) and os.path.isfile(target.url):
        raise OutputError(
            f"{target.what} {target.url} is a file; it should be a folder: choose another path"
        )


def made_by_w2w(target: Target) -> None:
    """Refuse an existing output that is not of the kind w2w makes there (a user's folder
    where a store, a run or a file should go)."""
    url = target.url
    if target.kind == "file":
        if _is_dir(url):
            raise OutputError(
                f"{target.what} {url} is a folder; w2w writes a file there and will not "
                "replace a folder: remove it or choose another path"
            )
        return
    if not _is_dir(url):
        raise OutputError(
            f"{target.what} {url} is a file; w2w writes a folder there and will not replace "
            "it: remove it or choose another path"
        )
    if target.kind == "store" and not _is_w2w_store(url):
        raise OutputError(
            f"{target.what} {url} exists and is not a store made by w2w; w2w replaces only "
            "what it made: remove it or choose another path"
        )
    if target.kind == "fileset" and not _is_w2w_fileset(url):
        raise OutputError(
            f"{target.what} {url} exists and was not written by w2w (it has no "
            f"{_fileset_file()}); w2w replaces only what it made: remove it or choose another path"
        )
    if target.kind == "run" and not _is_w2w_run(url):
        raise OutputError(
            f"{target.what} {url} exists and holds no w2w training run; w2w replaces only "
            "what it made: choose another --run-name or --storage-path"
        )


def _is_dir(url: str) -> bool:
    if storage.is_remote(url):
        try:
            return bool(storage.filesystem(url).isdir(url))
        except Exception as exc:  # noqa: BLE001 - object-store errors
            raise storage.remote_error(url, exc) from None
    return os.path.isdir(url)


def w2w_attributes(url: str) -> dict[str, Any] | None:
    """The ``w2w`` attributes in the group metadata (``zarr.json``) of the store at ``url``,
    read without opening the store; None where there is no such file or no such entry
    (object-storage failures raise :class:`StorageError`)."""
    try:
        raw = storage.read_bytes(storage.join(url, "zarr.json"))
    except StorageError:
        raise
    except InputError:
        return None
    try:
        attrs = json.loads(raw).get("attributes", {}).get("w2w")
    except (ValueError, AttributeError):
        return None
    return attrs if isinstance(attrs, dict) else None


def _is_w2w_store(url: str) -> bool:
    if not storage.exists(storage.join(url, "zarr.json")):
        return _empty(url)
    attrs = w2w_attributes(url)
    return attrs is not None and "kind" in attrs


def _is_w2w_run(url: str) -> bool:
    from w2w.core.outputs import RUN_FILE

    return storage.exists(storage.join(url, RUN_FILE)) or _empty(url)


def _fileset_file() -> str:
    from w2w.core.outputs import FILESET_FILE

    return FILESET_FILE


def _is_w2w_fileset(url: str) -> bool:
    return storage.exists(storage.join(url, _fileset_file())) or _empty(url)


def _empty(url: str) -> bool:
    if storage.is_remote(url):
        return not storage.filesystem(url).ls(url, detail=False)
    return not os.listdir(url)
