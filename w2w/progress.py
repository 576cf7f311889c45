"""Progress bars and user messages on stderr (rich), quiet when not wanted."""

from __future__ import annotations

import contextlib
import logging
import sys
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
_state = {"enabled": True}


def set_enabled(enabled: bool) -> None:
    """Turn progress bars on or off for this process (``--quiet``)."""
    _state["enabled"] = enabled


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
    if not (enabled and _state["enabled"] and sys.stderr.isatty()):
        yield lambda n: None
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
