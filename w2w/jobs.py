"""The entry points of ``jobs/*.py``: one stage, or the whole pipeline, from a pipeline YAML.

The same scripts run on an embedded local Ray (``python jobs/pipeline.py --config ...``) and
on a cluster (``ray job submit --working-dir . -- python jobs/pipeline.py --config ...``):
the stages call :func:`w2w.core.runtime.ensure_ray`, which joins the cluster named by
``RAY_ADDRESS`` (set by the job supervisor) and starts a local Ray only when there is none.

A job runs the ``w2w pipeline`` command with the chosen stages, so it validates every stage's
settings on the driver before any work, and fails exactly as the CLI does: one line
``error: ...`` naming what to fix, and a non-zero exit, which ends the Ray job as FAILED.
"""

from __future__ import annotations

import argparse

from w2w.stages import STAGE_NAMES


def parse_args(stage: str | None, argv: list[str] | None = None) -> argparse.Namespace:
    """The jobs' small interface: ``--config FILE.yaml`` plus logging switches."""
    name = f"jobs/{stage or 'pipeline'}.py"
    what = f"the {stage} stage" if stage else "every configured stage"
    parser = argparse.ArgumentParser(
        prog=name,
        description=f"Run {what} of a w2w pipeline config, on the Ray cluster in RAY_ADDRESS "
        "or on an embedded local Ray.",
    )
    parser.add_argument(
        "--config", "-c", required=True, help="pipeline YAML: a workdir and one section per stage"
    )
    if stage is None:
        parser.add_argument(
            "--stage",
            "-s",
            action="append",
            choices=STAGE_NAMES,
            help="run only this stage (repeat for several)",
        )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress messages")
    return parser.parse_args(argv)


def command_line(stage: str | None, argv: list[str] | None = None) -> list[str]:
    """The ``w2w`` arguments that run a job: ``pipeline CONFIG [--stage S ...]``."""
    args = parse_args(stage, argv)
    cli = [*(["--debug"] if args.debug else []), *(["--quiet"] if args.quiet else [])]
    cli += ["pipeline", args.config]
    for s in [stage] if stage else (args.stage or []):
        cli += ["--stage", s]
    return cli


def main(stage: str | None = None, argv: list[str] | None = None) -> None:
    """Run a job; exits with the CLI's exit code (0, or non-zero with one ``error:`` line)."""
    from w2w.cli import main as cli_main

    cli_main(command_line(stage, argv))
