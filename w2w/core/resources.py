"""Nothing waits silently: what a Ray job asks for is checked against the cluster first.

Ray queues a request the cluster cannot meet (a GPU on a CPU-only cluster, four one-CPU actors
on two CPUs) and waits for it without a word, for ever. Before a stage starts its actors or
training workers it calls :func:`require` with what it asks for: each unit (actor, worker) must
fit on one live node, all of them together on the cluster, with the CPUs its other tasks need
(reads, writes, the chip pipeline) left over. What does not fit is refused at once, with the
numbers -- unless an autoscaler can add nodes: on a cluster started with ``ray up`` (its head
node holds the autoscaler's ``ray_bootstrap_config.yaml``) the check waits up to
:data:`AUTOSCALER_WAIT_S` for them, saying so every 30 s, and then gives up with the numbers.
``W2W_WAIT_FOR_NODES`` (seconds; 0: refuse at once) sets the wait anywhere.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from w2w.core.errors import ConfigError

log = logging.getLogger("w2w")

#: Seconds to wait for an autoscaler to add nodes (``W2W_WAIT_FOR_NODES``; 0: refuse at once).
WAIT_ENV = "W2W_WAIT_FOR_NODES"
#: The wait where an autoscaler runs and the environment says nothing: GPU instances take a
#: few minutes to start, spot capacity longer.
AUTOSCALER_WAIT_S = 1800.0
#: Where ``ray up`` puts the autoscaler's config on the head node (where a job's driver runs).
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"
REPORT_EVERY_S = 30.0


def wait_for_nodes() -> float:
    """Seconds to wait for nodes a request needs: ``W2W_WAIT_FOR_NODES`` if set, else
    :data:`AUTOSCALER_WAIT_S` on a cluster with an autoscaler, else 0."""
    given = os.environ.get(WAIT_ENV)
    if given is not None and given.strip():
        return float(given)
    return AUTOSCALER_WAIT_S if Path(BOOTSTRAP_CONFIG).expanduser().exists() else 0.0


@dataclass(frozen=True)
class Request:
    """``count`` units (actors or workers) of ``cpus`` and ``gpus`` each, plus CPUs that must
    stay free beside them for the job's other tasks."""

    what: str
    count: int
    cpus: float
    gpus: float = 0.0
    spare_cpus: float = 0.0
    #: How to ask for less, for the message.
    fix: str = ""


def shortfall(req: Request, nodes: list[dict[str, float]]) -> str | None:
    """Why ``req`` cannot run on live nodes with these total resources, or None if it can."""
    total_cpu = sum(n.get("CPU", 0.0) for n in nodes)
    total_gpu = sum(n.get("GPU", 0.0) for n in nodes)
    if req.gpus and total_gpu == 0:
        return f"{req.what} ask for {req.gpus:g} GPU each and the Ray cluster has no GPU"
    fitting = sum(
        min(
            int(n.get("CPU", 0.0) // req.cpus) if req.cpus else req.count,
            int(n.get("GPU", 0.0) // req.gpus) if req.gpus else req.count,
        )
        for n in nodes
    )
    if fitting < req.count:
        largest = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
        return (
            f"{req.count} {req.what} of {req.cpus:g} CPU"
            + (f" and {req.gpus:g} GPU" if req.gpus else "")
            + f" each do not fit: the Ray cluster has {total_cpu:g} CPU"
            + (f" and {total_gpu:g} GPU" if req.gpus else "")
            + f" (at most {largest:g} CPU on one node); only {fitting} fit"
        )
    if req.count * req.cpus + req.spare_cpus > total_cpu:
        return (
            f"{req.count} {req.what} of {req.cpus:g} CPU each take {req.count * req.cpus:g} of "
            f"the cluster's {total_cpu:g} CPU and leave less than the {req.spare_cpus:g} CPU "
            "their input tasks need (they would wait for ever)"
        )
    return None


def live_nodes() -> list[dict[str, float]]:
    """The total resources of each live node of the connected Ray cluster."""
    import ray

    return [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]


def require(req: Request) -> None:
    """Refuse ``req`` at once if the cluster cannot meet it (or, with ``W2W_WAIT_FOR_NODES``,
    once that long has passed without new nodes); see the module notes."""
    wait = wait_for_nodes()
    start = time.monotonic()
    last_report: float | None = None
    while True:
        problem = shortfall(req, live_nodes())
        if problem is None:
            return
        waited = time.monotonic() - start
        if waited >= wait:
            hint = f"; {req.fix}" if req.fix else ""
            after = f" after waiting {waited:.0f} s for new nodes" if wait else ""
            raise ConfigError(f"{problem}{after}{hint}")
        if last_report is None or time.monotonic() - last_report >= REPORT_EVERY_S:
            log.warning("waiting for the autoscaler (%.0f of %.0f s): %s", waited, wait, problem)
            last_report = time.monotonic()
        time.sleep(min(5.0, max(0.1, wait - waited)))
