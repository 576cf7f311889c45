"""One writer per output: a stage holds a lock on each of its outputs while it runs.

Two commands writing one output at once -- two ``predict --overwrite`` runs with different
settings, a ``sieve`` started while the last is still running -- would each take the other's
half-built replacement for a leftover, or publish over it. The stage registry therefore takes
a lock on every output of a stage before the output guard looks at it (:func:`writing`) and
holds it until the stage ends; a second command finds it held and is refused at once, naming
the command that holds it (nothing waits silently).

A lock is an advisory ``flock`` on a small file named by the output's real location (the
output guard's :func:`~w2w.core.guard.real_location`: ``..`` and symbolic links resolved, URLs
normalised), in a folder of this machine (``W2W_LOCK_DIR``, default a per-user folder of the
temporary directory). The operating system releases it when its process ends however it ends
(killed included), so a stale lock cannot block a later run. The commands that write one
output run on one machine: a cluster's jobs are driven from its head node (``ray job
submit``), where their locks are taken; two machines writing one ``s3://`` output each from its
own driver are not excluded.

Within one process a lock is re-entrant (a pipeline's stage that calls another stage).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

from w2w.core.errors import OutputError

if TYPE_CHECKING:
    from w2w.core.config import StageConfig

#: Environment variable naming the folder of lock files (default: see :func:`lock_dir`).
LOCK_DIR_ENV = "W2W_LOCK_DIR"

_held: dict[str, tuple[IO[bytes], int]] = {}
_mutex = threading.Lock()


def lock_dir() -> Path:
    """The folder of this machine's lock files (created on first use, private to the user)."""
    env = os.environ.get(LOCK_DIR_ENV)
    where = Path(env) if env else Path(tempfile.gettempdir()) / f"w2w-locks-{os.getuid()}"
    where.mkdir(mode=0o700, parents=True, exist_ok=True)
    return where


def lock_path(location: str) -> Path:
    """The lock file of an output at ``location`` (a real location, see the module notes)."""
    digest = hashlib.sha256(location.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return lock_dir() / f"{digest}.lock"


def _holder(f: IO[bytes]) -> str:
    """Who holds the lock whose file is ``f``, as its holder wrote it, for the message."""
    try:
        f.seek(0)
        record = json.loads(f.read() or b"{}")
    except (OSError, ValueError):
        record = {}
    if not record:
        return "another w2w command"
    since = time.strftime("%H:%M:%S", time.localtime(record.get("since", 0)))
    return (
        f"another w2w command (`{record.get('command', '?')}`, process {record.get('pid', '?')} "
        f"on {record.get('host', '?')}, since {since})"
    )


def acquire(what: str, location: str) -> None:
    """Take the lock of the output ``what`` at ``location`` for this process, or raise
    :class:`OutputError` naming the command that holds it."""
    with _mutex:
        if location in _held:
            f, count = _held[location]
            _held[location] = (f, count + 1)
            return
        f = open(lock_path(location), "a+b")  # noqa: SIM115 - held until release()
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(f)
            f.close()
            raise OutputError(
                f"{what} {location} is being written by {holder}; wait for it to finish or "
                "write to another path"
            ) from None
        record = {
            "output": location,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.time(),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:200],
        }
        f.seek(0)
        f.truncate()
        f.write(json.dumps(record).encode())
        f.flush()
        _held[location] = (f, 1)


def release(location: str) -> None:
    """Give back one hold of the lock at ``location`` (the last one unlocks it)."""
    with _mutex:
        f, count = _held[location]
        if count > 1:
            _held[location] = (f, count - 1)
            return
        del _held[location]
        with contextlib.suppress(OSError):
            f.seek(0)
            f.truncate()
        f.close()  # closing the descriptor releases the flock


@contextlib.contextmanager
def held(outputs: list[tuple[str, str]]) -> Iterator[None]:
    """Hold the locks of ``outputs`` (what, real location) for the block; all or none."""
    named = {location: what for what, location in reversed(outputs)}  # first name wins
    taken: list[str] = []
    try:
        for location, what in sorted(named.items()):
            acquire(what, location)
            taken.append(location)
        yield
    finally:
        for location in reversed(taken):
            release(location)


@contextlib.contextmanager
def writing(cfg: StageConfig) -> Iterator[None]:
    """Hold the locks of every output of ``cfg`` while the block runs (see the module notes)."""
    from w2w.core.guard import real_location

    targets = [t for t in cfg.output_targets() if t.kind != "folder"]  # shared, not written
    with held([(t.what, real_location(t.url)) for t in targets]):
        yield
