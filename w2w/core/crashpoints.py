"""The steps of the publish protocol where a crash is tested: named points a test can kill
w2w at, as a power cut or the kernel's OOM killer would.

Every step of :mod:`w2w.core.outputs` and :func:`w2w.core.storage.atomic_put_file` that
changes what a reader of an output sees calls :func:`reached` with the step and the output
(every file of a set published as one): ``before-swap``, the new output is complete beside
the old one; ``mid-swap``, the old one has been moved aside and the new one is not in place
yet; ``after-swap``, the new one is in place and the old one not yet removed. Nothing happens
unless the stage registry armed them (:func:`arm`, in the process that runs a stage, never in
Ray's workers) and a test asked for it through the environment:

* ``W2W_CRASH_TRACE=FILE`` appends ``N STEP OUTPUT...`` to FILE for each point reached;
* ``W2W_CRASH_AT=N`` kills this process with SIGKILL at the N-th point reached.

A test runs a stage once with the trace, then kills it at points taken from the trace and
checks what the next run finds (tests/test_guarantees.py).
"""

from __future__ import annotations

import os
import signal

_state = {"armed": False, "count": 0}


def arm() -> None:
    """Count the points this process reaches from now on (the stage registry calls this)."""
    _state["armed"] = True


def reached(step: str, *outputs: str) -> None:
    """This process is at ``step`` of publishing ``outputs`` (one output, or every file of a
    set published together): traced, or killed there, when a test asked for it (see the
    module notes); otherwise nothing."""
    if not _state["armed"]:
        return
    trace, at = os.environ.get("W2W_CRASH_TRACE"), os.environ.get("W2W_CRASH_AT")
    if not trace and not at:
        return
    _state["count"] += 1
    n = _state["count"]
    if trace:
        with open(trace, "a") as f:
            f.write(" ".join([str(n), step, *outputs]) + "\n")
    if at and int(at) == n:
        os.kill(os.getpid(), signal.SIGKILL)
