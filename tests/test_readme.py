"""The README runs as written: every ``bash`` and ``python`` block of README.md and docs/*.md,
in document order, in one empty folder, with ``s3://bucket`` on the loopback S3 server.

``console`` blocks are what a laptop cannot run (a GPU cluster, a cloud account) and are not
run. Of the ``bash`` lines, only those in :data:`NOT_RUN` are left out, each with its reason:
the set-up this test itself runs in, the test suite, and the benchmarks (whose runs
benchmarks/RESULTS.md records). A new block in the README or in docs/ is run without a new
test.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

#: Commands of ``bash`` blocks the test does not run (by their first words), and why.
NOT_RUN: dict[str, str] = {
    "pip install": "the set-up this test runs in",
    "pytest": "the test suite this test is part of",
    "python -m benchmarks": "benchmarks take minutes to hours; RESULTS.md records their runs",
}

_FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[A-Za-z]*)\s*$")


def blocks(path: Path) -> list[tuple[str, str, int]]:
    """The fenced blocks of a Markdown file: (language, text, first line number)."""
    found: list[tuple[str, str, int]] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m and m["lang"]:
            indent, lang, start = len(m["indent"]), m["lang"], i + 1
            body = []
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i][indent:])
                i += 1
            found.append((lang, "\n".join(body) + "\n", start + 1))
        i += 1
    return found


def commands(script: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, comments and blanks left
    out."""
    joined = re.sub(r"\\\n\s*", " ", script)
    out = []
    for line in joined.splitlines():
        text = line.strip()
        if text and not text.startswith("#"):
            out.append(text)
    return out


def runnable(command: str) -> bool:
    """Whether the test runs ``command`` (see :data:`NOT_RUN`)."""
    return not any(command.startswith(prefix) for prefix in NOT_RUN)


def test_blocks_are_found_and_every_left_out_command_has_a_reason() -> None:
    """The parser sees the README's blocks (indented ones in lists too), and what it leaves
    out is only what :data:`NOT_RUN` names."""
    readme = blocks(REPO / "README.md")
    langs = {lang for lang, _, _ in readme}
    assert {"bash", "python", "console"} <= langs
    shell = [c for lang, text, _ in readme if lang == "bash" for c in commands(text)]
    assert "w2w demo" in shell and any(c.startswith("w2w train ") for c in shell)
    left_out = [c for c in shell if not runnable(c)]
    assert left_out and all(any(c.startswith(p) for p in NOT_RUN) for c in left_out)
    assert all(c.startswith("w2w ") for c in shell if runnable(c)), shell


@pytest.mark.slow
@pytest.mark.timeout(2400)  # the whole tour, a command at a time (each under its own limit)
def test_the_readme_and_docs_run_as_written(tmp_path: Path, s3_server: str) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_server)
    if "bucket" not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
        s3.create_bucket(Bucket="bucket")
    (tmp_path / "jobs").symlink_to(REPO / "jobs")  # the repository's configs, as in a clone
    # Each command on its own embedded Ray, as for a user (not on a cluster a test started).
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONUNBUFFERED"] = "1"
    ran = 0  # what each command took is printed (shown with -rP, or with a failure)
    for doc in DOCUMENTS:
        for lang, text, line in blocks(doc):
            where = f"{doc.relative_to(REPO)}:{line}"
            runs: list[tuple[list[str], str]] = []
            if lang == "bash":
                runs = [
                    (["bash", "-euo", "pipefail", "-c", command], command[:70])
                    for command in filter(runnable, commands(text))
                ]
            elif lang == "python":
                runs = [([sys.executable, "-c", text], "python block")]
            for args, what in runs:
                t0 = time.monotonic()
                _run(args, tmp_path, env, where)
                print(f"{time.monotonic() - t0:7.1f} s  {where} {what}")
                ran += 1
    assert ran >= 20
    # The tour's outputs are where it says: on the S3 server and in the folder.
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="bucket").get("Contents", [])}
    assert "chihuahua/landcover-2024.tif" in keys and "chihuahua/landcover-2024.gpkg" in keys
    assert (tmp_path / "evaluation-v1" / "evaluation.json").exists()
    assert (tmp_path / "w2w-demo").is_dir() and (tmp_path / "w2w-tiny").is_dir()


def _run(args: list[str], cwd: Path, env: dict[str, str], where: str) -> None:
    result = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    if result.returncode != 0:
        tail = (result.stdout + result.stderr)[-3000:]
        pytest.fail(f"{where}: {' '.join(args[-1:])[:200]} exited {result.returncode}:\n{tail}")
