"""What the benchmarks share: peak-memory sampling, timing, run headers, RESULTS.md."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "RESULTS.md"
MIB = 1 << 20

T = TypeVar("T")


def _tree_memory(root: Any) -> int:
    """Proportional set size (shared pages split between their users) of ``root`` and every
    process below it: the driver, Ray's raylet and object store, and all its workers."""
    import psutil

    total = 0
    procs = [root]
    with contextlib.suppress(psutil.Error):
        procs += root.children(recursive=True)
    for p in procs:
        try:
            total += p.memory_full_info().pss
        except psutil.Error:  # a worker that exited between the listing and the read
            continue
    return total


@dataclass
class PeakMemory:
    """Samples the process tree's memory in a background thread while a stage runs.

    One sample reads the proportional set size of every process in the tree, which costs the
    kernel ~40 ms of CPU with a Ray cluster running: every 0.1 s that took a fifth of a 2-core
    machine from the stage being measured; every 0.5 s it takes a few percent."""

    interval: float = 0.5
    start: int = 0
    peak: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> PeakMemory:
        import psutil

        me = psutil.Process()
        self.start = self.peak = _tree_memory(me)

        def sample() -> None:
            while not self._stop.wait(self.interval):
                self.peak = max(self.peak, _tree_memory(me))

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        import psutil

        self.peak = max(self.peak, _tree_memory(psutil.Process()))


@dataclass
class Timed:
    """A measured call: its result, wall seconds, and peak / start memory of the process tree."""

    result: Any
    seconds: float
    peak_mib: float
    start_mib: float

    @property
    def grown_mib(self) -> float:
        """Peak memory above what the process tree held when the call started."""
        return self.peak_mib - self.start_mib


def timed(fn: Callable[[], T]) -> Timed:
    """Run ``fn`` once, measuring wall time and the process tree's peak memory."""
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - t0
    return Timed(result, seconds, mem.peak / MIB, mem.start / MIB)


def git_commit() -> str:
    """The short commit of the checkout (with ``+dirty`` for uncommitted changes)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> str:
    """A one-line description of this machine: CPU model, cores, memory, GPU if any."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    text = f"{cpu}, {os.cpu_count()} CPUs, {mem:.0f} GiB"
    try:
        import torch

        if torch.cuda.is_available():
            text += f", {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return text


def run_header(command: str, argv: list[str] | None) -> dict[str, Any]:
    """What every results section starts with: date, machine, the command and the commit."""
    args = argv if argv is not None else sys.argv[1:]
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "command": " ".join([command, *args]),
        "commit": git_commit(),
    }


def publish(
    path: Path, header: dict[str, Any], results: dict[str, Any], text: str, *, record: bool
) -> None:
    """Write the results as JSON to ``path``, print the Markdown ``text``, and append it to
    ``benchmarks/RESULTS.md`` when ``record``."""
    path.write_text(json.dumps({"header": header, **results}, indent=2))
    print(text)
    if record:
        append_results(text)


def append_results(section: str) -> None:
    """Append a Markdown section to ``benchmarks/RESULTS.md`` (created when missing)."""
    existing = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    RESULTS.write_text(existing.rstrip() + "\n\n" + section.rstrip() + "\n")


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with ``n`` intra-op torch threads, restoring the previous count after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
