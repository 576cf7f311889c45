"""Running block-wise work on Ray (or in-process), with progress and clear errors.

Entry points call :func:`ensure_ray`, which starts an embedded local Ray only when none is
running: the same code runs on a laptop, in tests (whose fixture starts Ray first) and under
``ray job submit`` on a cluster (where ``RAY_ADDRESS`` points at the cluster).

:func:`run_blocks` maps a function over work items as Ray tasks, keeping a bounded number in
flight (memory stays flat however many blocks a state has), retrying tasks that die with
their worker (block tasks are idempotent: each writes chunks it alone owns), and turning a
worker-side :class:`~w2w.core.errors.W2WError` back into the same error on the driver.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from w2w.core.config import Engine
from w2w.core.errors import StageFailedError, W2WError
from w2w.core.progress import is_quiet

log = logging.getLogger("w2w")

T = TypeVar("T")
R = TypeVar("R")


#: Retries of a block task whose worker process died (node loss, OOM kill). Block tasks
#: are idempotent, so re-running one is safe. Application errors are not retried.
TASK_MAX_RETRIES = 3


def ensure_ray(**init_kwargs: Any) -> None:
    """Connect to the Ray cluster in ``RAY_ADDRESS``, or start a local one, unless connected."""
    import ray

    filter_ray_console()
    if ray.is_initialized():
        return
    # Ray Data logs every dataset execution at INFO (each training epoch is one); w2w keeps
    # the console to its own progress and warnings. Set before Ray starts, so workers see it.
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")
    if is_quiet():
        # --quiet: none of Ray's own lines (start-up notices, warnings of its defaults);
        # failures still reach w2w as exceptions and end in one `error:` line.
        for name in ("ray", "ray.data", "ray.train"):
            logging.getLogger(name).setLevel(logging.ERROR)
        os.environ["RAY_DATA_LOG_LEVEL"] = "ERROR"
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=not is_quiet())
        quiet_ray_data()
        return
    # Worker output (Ray Train's per-epoch reports, Ray Data's plans) is kept in Ray's log
    # files; the console shows it with --debug. Errors reach the driver as exceptions anyway.
    kwargs: dict[str, Any] = {
        # "local": always a new embedded instance, never a cluster someone else started
        # on this machine with `ray start` (use RAY_ADDRESS to join one on purpose).
        "address": "local",
        "include_dashboard": False,
        "log_to_driver": log.isEnabledFor(logging.DEBUG) and not is_quiet(),
        "logging_config": ray.LoggingConfig(log_level="ERROR" if is_quiet() else "WARNING"),
    }
    if _IDLE_WORKER_SETTING not in os.environ:
        kwargs["_system_config"] = {"idle_worker_killing_time_threshold_ms": IDLE_WORKER_KEEP_MS}
    kwargs.update(init_kwargs)
    ray.init(**kwargs)
    quiet_ray_data()


#: How long an idle worker process above Ray's soft limit (one per CPU) lives on. Ray's default,
#: 1 s, makes a pipeline whose stages share a node's CPUs (an inference actor beside read and
#: write tasks) start new worker processes over and over: each start costs ~1 s of CPU (Python,
#: Ray and the stage's imports) while the stages run. Set the environment variable
#: ``RAY_idle_worker_killing_time_threshold_ms`` to choose another value.
IDLE_WORKER_KEEP_MS = 30_000
_IDLE_WORKER_SETTING = "RAY_idle_worker_killing_time_threshold_ms"


def quiet_ray_data() -> None:
    """No per-operator progress bars from Ray Data (w2w shows its own progress), and none of
    Ray's console lines that :class:`RayConsoleFilter` drops."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    filter_ray_console()


def filter_ray_console() -> None:
    """Put :class:`RayConsoleFilter` on the console handlers Ray and Ray Data set up (at
    import and in ``ray.init``) and on every logger of Ray's that exists (``ray.init`` sets
    its handlers up anew before it logs); idempotent."""
    handlers = [h for name in ("", "ray", "ray.data") for h in logging.getLogger(name).handlers]
    loggers = [
        logger
        for name, logger in list(logging.root.manager.loggerDict.items())
        if name.split(".")[0] == "ray" and isinstance(logger, logging.Logger)
    ]
    for where in (*handlers, *loggers):
        if not any(isinstance(f, RayConsoleFilter) for f in where.filters):
            where.addFilter(RayConsoleFilter())


class RayConsoleFilter(logging.Filter):
    """Keeps Ray's lines about what w2w handles itself off the console (its log files keep
    them):

    * a failure w2w reports: a record Ray logs while it handles an exception that holds a
      user error (:func:`user_error`: a w2w error, a full disk), such as Ray Data's stack
      traces of a task that raised one, and Ray Data's notice that a failed task aborts the
      dataset (with advice on ``max_errored_blocks``, which w2w does not offer): every such
      failure ends in w2w's own ``error:`` line, which alone says what is wrong and what to do;
    * notices of what w2w chose on purpose: Ray Data's progress bars (w2w shows its own) and
      token authentication of the embedded local Ray.
    """

    #: How Ray's notices begin (Ray Data's progress bars, token authentication, the abort).
    NOTICES = (
        "Progress bars disabled.",
        "Token authentication is enabled for this Ray cluster.",
        "An exception was raised from a task of operator",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether the record reaches the console."""
        import sys

        if record.name.startswith("ray") and record.getMessage().startswith(self.NOTICES):
            return False
        exc = record.exc_info[1] if record.exc_info else sys.exc_info()[1]
        return exc is None or user_error(unwrap_ray_error(exc)) is None


def unwrap_ray_error(exc: BaseException) -> BaseException:
    """The user-facing error inside a Ray task/actor failure, if there is one.

    Ray keeps the worker's exception as ``cause`` of a ``RayTaskError``, but an exception
    that Ray Data wrapped (``UserCodeException``) arrives with its own cause only as text in
    the traceback: a w2w error is then rebuilt from that text.
    """
    from ray.exceptions import RayTaskError

    seen = 0
    cur: BaseException | None = exc
    while cur is not None and seen < 10:
        if isinstance(cur, W2WError):
            return cur
        if isinstance(cur, RayTaskError):
            cause = getattr(cur, "cause", None)
            if cause is not None and cause is not cur:
                cur = cause
                seen += 1
                continue
        nxt = cur.__cause__ or cur.__context__
        if nxt is None:
            break
        cur = nxt
        seen += 1
    return _w2w_error_in_text(str(exc)) or exc


#: A line of a worker's traceback that names an exception: ``module.Class: message``.
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Warning)): (.+)$")


def _w2w_error_in_text(text: str) -> W2WError | None:
    """The last w2w error named in a traceback's text, rebuilt (class and message)."""
    from w2w.core import errors

    found = None
    for line in text.splitlines():
        m = _EXCEPTION_LINE.match(line.strip())
        if m and m.group(1).startswith("w2w.core.errors."):
            cls = getattr(errors, m.group(1).rsplit(".", 1)[1], None)
            if isinstance(cls, type) and issubclass(cls, W2WError):
                found = cls(m.group(2))
    return found


def user_error(exc: BaseException) -> W2WError | None:
    """The error a user can act on inside ``exc`` (already unwrapped from Ray's): a w2w error,
    or a full or read-only disk (as an exception, or named in a worker's traceback text)."""
    from w2w.core.errors import from_os_error

    if isinstance(exc, W2WError):
        return exc
    return from_os_error(exc) or _os_error_in_text(str(exc))


def _os_error_in_text(text: str) -> W2WError | None:
    """A full disk named in a worker's traceback (Ray passes some causes on as text only)."""
    from w2w.core.errors import DiskFullError

    if "[Errno 28]" in text or "No space left on device" in text:
        return DiskFullError(
            "no space left on the device a worker wrote to; free space there or choose an "
            "output on a larger disk (what was written before is unchanged)"
        )
    return None


def cause_line(text: str) -> str:
    """The innermost exception a worker's traceback names (not Ray's own wrappers), or the
    last line of ``text``."""
    causes = [
        f"{m.group(1).rsplit('.', 1)[-1]}: {m.group(2)}"
        for line in text.splitlines()
        if (m := _EXCEPTION_LINE.match(line.strip())) and not m.group(1).startswith("ray.")
    ]
    if causes:
        return causes[-1]
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "unknown error"


def raise_from_worker(exc: BaseException, what: str) -> None:
    """Re-raise a Ray task or actor failure on the driver: a worker's W2WError as itself,
    anything else as a StageFailedError naming the stage and the cause (not Ray's advice)."""
    inner = unwrap_ray_error(exc)
    known = user_error(inner)
    if known is not None:
        raise known from None
    raise StageFailedError(f"{what} failed on a Ray worker: {cause_line(str(inner))}") from exc


def run_blocks(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    engine: Engine = "ray",
    what: str = "work",
    total: int | None = None,
    num_cpus: float = 1,
    memory: int | None = None,
    max_in_flight: int | None = None,
    progress: bool = True,
) -> Iterator[R]:
    """Apply ``fn`` to every item, as Ray tasks or in this process, yielding results as they come.

    Results arrive in completion order. At most ``max_in_flight`` tasks are pending at once
    (default: twice the cluster's CPUs), so neither the object store nor the driver holds
    more than a few blocks' results however large the scene.
    """
    from w2w.core.progress import progress_bar

    items = list(items) if total is None else items
    n = total if total is not None else len(items)  # type: ignore[arg-type]
    with progress_bar(what, total=n, enabled=progress) as advance:
        if engine == "local":
            for item in items:
                yield fn(item)
                advance(1)
            return

        import ray

        ensure_ray()
        options: dict[str, Any] = {
            "num_cpus": num_cpus,
            "max_retries": TASK_MAX_RETRIES,
            "retry_exceptions": False,
        }
        if memory:
            options["memory"] = memory
        remote_fn = ray.remote(_apply).options(**options)
        fn_ref = ray.put(fn)  # shipped once, not once per task
        limit = max_in_flight or max(2, 2 * int(ray.cluster_resources().get("CPU", 2)))
        pending: list[Any] = []
        try:
            for item in items:
                if len(pending) >= limit:
                    done, pending = ray.wait(pending, num_returns=1)
                    yield _get(done[0], what)
                    advance(1)
                pending.append(remote_fn.remote(fn_ref, item))
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                yield _get(done[0], what)
                advance(1)
        finally:
            for ref in pending:
                ray.cancel(ref, force=False)


def _apply(fn: Callable[[T], R], item: T) -> R:
    """The body of every block task: call the (pickled once) function on one item."""
    return fn(item)


def _get(ref: Any, what: str) -> Any:
    import ray

    try:
        return ray.get(ref)
    except Exception as exc:
        raise_from_worker(exc, what)
        raise  # unreachable
