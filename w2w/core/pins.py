"""Readers see one version: the inputs a stage reads are pinned while it runs.

The stage registry pins every input of a stage when it starts (:func:`pinned`): a store by its
w2w metadata (content identity, completeness, provenance), a local file by its size and
modification time. Before anything is published -- a store swapped in or marked complete, a
file or file set put in place (:mod:`w2w.core.outputs`, :func:`w2w.core.storage.atomic_put_file`)
-- and again when the stage ends, the pins are checked (:func:`check`): an input replaced or
rewritten by another command meanwhile is an error naming it, and nothing made from the mix
of two versions is published.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from w2w.core import storage
from w2w.core.errors import InputError
from w2w.core.guard import w2w_attributes

if TYPE_CHECKING:
    from w2w.core.config import StageConfig


@dataclass(frozen=True)
class Pin:
    """One input as it was when the stage started."""

    what: str
    url: str
    version: str


class InputChangedError(InputError):
    """An input changed while a stage was reading it."""


_current: contextvars.ContextVar[tuple[Pin, ...]] = contextvars.ContextVar("w2w_pins", default=())


def version(url: str) -> str | None:
    """What identifies the content at ``url`` now: a store's w2w metadata, a local file's size
    and modification time (None for what is neither, e.g. a remote plain file)."""
    if not storage.is_remote(url) and os.path.isfile(url):
        st = os.stat(url)
        return f"file:{st.st_size}:{st.st_mtime_ns}"
    try:
        attrs = w2w_attributes(url)
    except InputError:  # unreadable now (object storage failing): not pinned
        return None
    if attrs is None:
        return None
    text = json.dumps(attrs, sort_keys=True, separators=(",", ":"))
    return "store:" + hashlib.sha256(text.encode()).hexdigest()


def pin(cfg: StageConfig) -> tuple[Pin, ...]:
    """The current version of every input of ``cfg`` that has one."""
    pins = []
    for what, url in cfg.input_locations(expand=False):
        v = version(url)
        if v is not None:
            pins.append(Pin(what, url, v))
    return tuple(pins)


def check(pins: tuple[Pin, ...] | None = None) -> None:
    """Raise :class:`InputChangedError` if a pinned input (default: the running stage's) is
    not as it was when pinned."""
    for p in _current.get() if pins is None else pins:
        if version(p.url) != p.version:
            raise InputChangedError(
                f"the input {p.what} {p.url} changed while it was being read (another command "
                "replaced or rewrote it); nothing was published: run again once it is settled"
            )


@contextlib.contextmanager
def pinned(cfg: StageConfig) -> Iterator[tuple[Pin, ...]]:
    """Pin the inputs of ``cfg`` for the block's duration; checked again at its end."""
    pins = pin(cfg)
    token = _current.set(_current.get() + pins)
    try:
        yield pins
        check(pins)
    finally:
        _current.reset(token)
