"""``python -m benchmarks {run,quality,gpu} ...``: the benchmark runners.

- ``run``: throughput of every stage against its limit and a baseline, in one run;
- ``quality``: map quality against a per-pixel RandomForest on the same split;
- ``gpu``: model-only and pipeline throughput on a CUDA GPU, and a statewide projection;
- ``statewide``: ingest from tiles against GDAL's warper, memory as tiles grow, and the
  pipeline inside a boundary against the same state without one;
- ``export-phases``: where an export's time goes, beside GDAL's COG driver.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Dispatch to the chosen benchmark."""
    args = sys.argv[1:] if argv is None else argv
    commands = ("run", "quality", "gpu", "statewide", "export-phases")
    if not args or args[0] not in commands:
        print(__doc__, file=sys.stderr)
        return 2
    if args[0] == "run":
        from benchmarks.throughput import main as run
    elif args[0] == "quality":
        from benchmarks.quality import main as run
    elif args[0] == "statewide":
        from benchmarks.statewide import main as run
    elif args[0] == "export-phases":
        from benchmarks.export_phases import main as run
    else:
        from benchmarks.gpu import main as run
    return run(args[1:])


if __name__ == "__main__":
    raise SystemExit(main())
