"""Node loss on a real multi-node Ray: a head and two worker nodes (separate raylets) on this
machine; a worker node is killed in the middle of ingest, training and prediction, and each
finishes with output identical to an undisturbed run. Slow (several minutes): run with
``pytest -m slow``; ``.ci/run`` runs it on a rotating share of days (``rotate``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.rotate]
REPO = Path(__file__).resolve().parents[1]


def test_losing_a_worker_node_changes_no_output(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tests.scenarios.node_loss", str(tmp_path)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-4000:]
    r = json.loads(lines[-1][len("RESULT ") :])
    for stage in ("ingest", "train", "predict"):
        assert "killed_at" in r[f"{stage} killed"], f"{stage}: no node was killed"
    assert r["ingest killed"]["identity"] == r["ingest clean"]["identity"]
    assert r["train killed"]["starts"][-1] >= 1  # training restarted from a checkpoint
    assert r["train killed"]["weights_sha"] == r["train clean"]["weights_sha"]
    assert r["train killed"]["losses"] == r["train clean"]["losses"]
    assert r["predict killed"]["classes_sha"] == r["predict clean"]["classes_sha"]
