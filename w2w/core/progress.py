"""Progress bars and user messages on stderr (rich), quiet when not wanted."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True, soft_wrap=True)
#: Results of commands (paths written, metrics) go to stdout, everything else to stderr.
out = Console(soft_wrap=True, highlight=False, markup=False)
_state = {"enabled": True, "quiet": False}


def set_enabled(enabled: bool) -> None:
    """Turn progress bars on or off for this process."""
    _state["enabled"] = enabled


def set_quiet(quiet: bool) -> None:
    """``--quiet``: no progress bars, and none of Ray's own log lines."""
    _state["quiet"] = quiet
    _state["enabled"] = not quiet


def is_quiet() -> bool:
    """Whether the user asked for quiet (``--quiet``)."""
    return bool(_state["quiet"])


def setup_logging(level: int = logging.INFO) -> None:
    """Route w2w's log messages (warnings included) to stderr through rich."""
    logger = logging.getLogger("w2w")
    if not any(isinstance(h, RichHandler) for h in logger.handlers):
        logger.addHandler(
            RichHandler(console=console, show_path=False, show_time=False, markup=False)
        )
    logger.setLevel(level)
    logger.propagate = False


@contextlib.contextmanager
def progress_bar(
    description: str, *, total: int | None, enabled: bool = True
) -> Iterator[Callable[[int], None]]:
    """A progress bar for ``total`` steps; yields a function that advances it."""
    if not (enabled and _state["enabled"]):
        yield lambda n: None
        return
    if not sys.stderr.isatty():
        # Logs (a Ray job's, a file): a line every tenth of the way instead of a bar.
        with _progress_lines(description, total) as advance:
            yield advance
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


@contextlib.contextmanager
def _progress_lines(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    log = logging.getLogger("w2w")
    state = {"done": 0, "next": 0.1}
    t0 = time.time()

    def advance(n: int) -> None:
        state["done"] += n
        if not total:
            return
        fraction = state["done"] / total
        if fraction >= state["next"] or state["done"] == total:
            log.info(
                "%s: %d of %d (%.0f%%) in %.0f s",
                description,
                state["done"],
                total,
                100 * fraction,
                time.time() - t0,
            )
            state["next"] = (int(fraction * 10) + 1) / 10

    yield advance
