"""The ``w2w`` command line: one command per stage, built from the stage registry, plus
commands to inspect stores and bundles and to run the whole pipeline.

Every stage command takes its settings from options and/or ``--config FILE.yaml`` (options
given on the command line win); its options are the fields of the stage's config
(:mod:`w2w.cli.options`). Bad input ends with a one-line ``error: ...`` on stderr and a
non-zero exit; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import enum
import functools
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.markup import escape

from w2w.cli.help import StageCommand
from w2w.cli.options import command_for
from w2w.core.config import StageConfig
from w2w.core.errors import StageFailedError, StorageError, W2WError, from_os_error
from w2w.core.progress import console, out, set_quiet, setup_logging
from w2w.core.provenance import w2w_version
from w2w.stages import STAGES, Stage

app = typer.Typer(
    name="w2w",
    help="Wall-to-wall land-cover mapping: ingest, train, predict, sieve, export, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # Plain help (click's): it wraps at any width and never cuts an option name short.
    rich_markup_mode=None,
)

_state: dict[str, bool] = {"debug": False}
log = logging.getLogger("w2w")

F = TypeVar("F", bound=Callable[..., Any])


def _version(value: bool) -> None:
    if value:
        out.print(f"w2w {w2w_version()}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    quiet: Annotated[
        bool,
        typer.Option("--quiet", "-q", help="No progress bars, and none of Ray's log lines."),
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Debug messages, Ray's included.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
    io_timeout: Annotated[
        float | None,
        typer.Option(
            help="Seconds an object-storage request may wait before it is retried "
            "(W2W_IO_TIMEOUT).  [default: 60]",
        ),
    ] = None,
    io_retries: Annotated[
        int | None,
        typer.Option(
            help="Retries of a failed object-storage request (W2W_IO_RETRIES).  [default: 3]"
        ),
    ] = None,
) -> None:
    """w2w: map land cover for a whole state, every pixel, from satellite imagery."""
    # Set in the environment before Ray starts, so that every worker uses them too.
    if io_timeout is not None:
        os.environ["W2W_IO_TIMEOUT"] = str(io_timeout)
    if io_retries is not None:
        os.environ["W2W_IO_RETRIES"] = str(io_retries)
    _state["debug"] = debug
    set_quiet(quiet)
    setup_logging(logging.DEBUG if (debug or verbose) else logging.INFO)


def handle_errors(fn: F) -> F:
    """Turn w2w errors into one line on stderr and a non-zero exit (tracebacks with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except W2WError as exc:
            if _state["debug"]:
                raise
            console.print(
                f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True
            )
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            console.print("[bold red]interrupted[/]")
            raise typer.Exit(130) from None
        except Exception as exc:
            if _state["debug"]:
                raise
            known = from_os_error(exc)
            if known is not None:
                console.print(
                    f"[bold red]error:[/] {escape(str(known))}", highlight=False, soft_wrap=True
                )
                raise typer.Exit(known.exit_code) from None
            console.print(
                f"[bold red]internal error:[/] {type(exc).__name__}: {escape(str(exc))} "
                "(re-run with --debug for the traceback)",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


# -- one command per stage ------------------------------------------------------------------


def _run_stage(stage: Stage, cfg: StageConfig) -> None:
    for line in stage.run(cfg).lines:
        out.print(line)


for _stage in STAGES:
    app.command(_stage.name, help=_stage.help, cls=StageCommand)(
        handle_errors(command_for(_stage, _run_stage))
    )


# -- inspecting stores and bundles ------------------------------------------------------------


@app.command("bundle-info")
@handle_errors
def bundle_info(
    bundle: Annotated[str, typer.Argument(help="A model bundle (.safetensors).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the metadata as JSON.")] = False,
) -> None:
    """Describe a model bundle: model, bands, normalisation, classes, metrics; checks its hash."""
    from w2w.model.bundle import load_bundle

    b = load_bundle(bundle, weights=False)
    if as_json:
        sys.stdout.write(
            json.dumps({**b.metadata(), "content_hash": b.content_hash}, indent=2) + "\n"
        )
        return
    n_params = b.parameters
    out.print(f"bundle: {bundle}")
    out.print(f"content hash: {b.content_hash} (verified)")
    out.print(
        f"model: {b.spec.arch} / {b.spec.encoder}, {n_params:,} parameters, "
        f"{b.spec.in_channels} bands in, {b.spec.classes} classes out"
    )
    out.print(f"chip size: {b.chip_size} px; normalisation: {b.normalizer.method}")
    out.print(f"bands: {', '.join(b.bands)}")
    for i, c in enumerate(b.classes):
        out.print(f"  output {i}: class {c.id} {c.name} rgb{tuple(c.color)}")
    m = b.metrics
    if m.get("val_pixels"):
        out.print(
            f"validation (epoch {m.get('epoch')}): OA {m['val_oa']:.3f}, "
            f"mIoU {m['val_miou']:.3f}, kappa {m['val_kappa']:.3f}, {m['val_pixels']:,} px"
        )
    if b.created:
        out.print(f"created: {b.created}")


@app.command("bundle-export")
@handle_errors
def bundle_export(
    bundle: Annotated[str, typer.Argument(help="A model bundle (.safetensors).")],
    output: Annotated[str, typer.Option("--output", "-o", help="The model file to write.")],
    fmt: Annotated[
        str,
        typer.Option(
            "--format", help="pt2 (torch.export), torchscript (deprecated by PyTorch) or onnx."
        ),
    ] = "pt2",
    overwrite: Annotated[
        bool, typer.Option("--overwrite/--no-overwrite", help="Replace an existing file.")
    ] = False,
) -> None:
    """Write a bundle's model for serving without w2w (TorchScript, torch.export or ONNX),
    with its bands, normalisation and classes in a JSON file beside it."""
    from w2w.stages import stage_named

    stage = stage_named("bundle-export")
    cfg = stage.config.from_dict(
        {"bundle": bundle, "output": output, "format": fmt, "overwrite": overwrite},
        source="command line",
    )
    for line in stage.run(cfg, progress=False).lines:
        out.print(line)


@app.command()
@handle_errors
def info(
    store: Annotated[str, typer.Argument(help="A scene or mosaic store.")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the raw metadata as JSON.")
    ] = False,
) -> None:
    """Describe a scene or mosaic store: grid, bands, statistics, classes."""
    from w2w.core.store import GeoStore, MosaicStore, SceneStore

    opened: GeoStore
    try:
        opened = SceneStore.open(store)
    except StorageError:
        raise
    except W2WError:
        opened = MosaicStore.open(store)
    if as_json:
        sys.stdout.write(json.dumps(opened.meta, indent=2) + "\n")
        return
    out.print(f"{opened.kind} store: {opened.url}")
    out.print(f"grid: {opened.grid.describe()}")
    if isinstance(opened, SceneStore):
        meta = opened.info
        out.print(
            f"bands ({meta.n_bands}, {meta.dtype}, nodata {meta.nodata}): "
            f"{', '.join(meta.band_names)}"
        )
        for name, s in meta.stats.items():
            out.print(
                f"  {name}: mean {s.mean:.4g}, std {s.std:.4g}, p2 {s.p2:.4g}, p98 {s.p98:.4g}"
            )
        for c in meta.classes:
            n = meta.class_histogram.get(c.id, 0)
            out.print(f"  class {c.id} {c.name}: {n:,} labelled px")
        _print_sources(opened)
    elif isinstance(opened, MosaicStore):
        done = opened.done_blocks()
        out.print(f"blocks done: {int(done.sum())} of {done.size}")
        for c in opened.classes:
            out.print(f"  class {c.id} {c.name}")


class VerifyEngine(enum.StrEnum):
    """Where ``w2w verify`` reads the blocks."""

    auto = "auto"
    ray = "ray"
    local = "local"


def _print_sources(scene: Any) -> None:
    """What a scene was made from: tiles, dates, boundary, and the blocks it skipped."""
    source = scene.info.source
    written = scene.written_blocks()
    out.print(
        f"blocks: {int(written.sum())} of {written.size} written, "
        f"{int((~written).sum())} outside the area mapped (never written)"
    )
    if source.get("mode") != "tiles":
        return
    used = {name for names in scene.meta.get("block_sources", {}).values() for name in names}
    out.print(f"tiles: {len(source['tiles'])} given, {len(used)} used")
    if source.get("datetime"):
        out.print(f"imagery dates: {source['datetime']['start']} to {source['datetime']['end']}")
    aoi = source.get("aoi")
    if aoi:
        where = f" where {aoi['where']}" if aoi.get("where") else ""
        out.print(f"boundary: {aoi['path']}{where}, {aoi['area'] / 1e6:,.2f} km²")
    out.print(f"overlap rule: {source['overlap']}, resampling: {source['resampling']}")


@app.command()
@handle_errors
def verify(
    store: Annotated[str, typer.Argument(help="A mosaic (from predict or sieve) or a scene.")],
    engine: Annotated[
        VerifyEngine,
        typer.Option(help="'ray' (parallel tasks), 'local' (this process) or 'auto'."),
    ] = VerifyEngine.auto,
) -> None:
    """Check a store: a mosaic for holes (every block finished, every valid input pixel
    classified), a scene for missing or changed chunks (every block as ingested)."""
    from w2w.core.coverage import verify_coverage, verify_scene
    from w2w.core.store import SceneStore

    try:
        SceneStore.open(store)
    except StorageError:
        raise
    except W2WError:
        report: Any = verify_coverage(store, engine=engine.value, contents=True)
        fix = (
            "its blocks changed after they were written: predict it again with --overwrite, "
            "or restore it from a good copy"
            if report.changed
            else "re-run `w2w predict` on it: it predicts blocks that are unfinished or have holes"
        )
    else:
        report = verify_scene(store, engine=engine.value)
        fix = "copy the store again from a good copy, or ingest it again"
    if not report.ok:
        raise StageFailedError(f"{store}: {report.describe()}; {fix}")
    out.print(f"{store}: {report.describe()}")


# -- the whole job ------------------------------------------------------------------------------


def _print_pipeline(result: Any) -> None:
    for name, where in result.outputs.items():
        out.print(f"{name}: {where}")
    m = result.metrics
    for split in ("val", "test", "all"):
        if m.get(f"{split}_miou") is not None:
            oa = m.get(f"{split}_oa")
            label = {"val": "validation", "test": "test split", "all": "all labels"}[split]
            out.print(f"{label}: mIoU {m[f'{split}_miou']:.3f}, OA {oa:.3f}")
        if m.get(f"{split}_baseline_miou") is not None:
            out.print(
                f"  per-pixel baseline, same pixels: mIoU {m[f'{split}_baseline_miou']:.3f}, "
                f"OA {m[f'{split}_baseline_oa']:.3f}"
            )
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items())
    out.print(f"time: {timing} (total {sum(result.seconds.values()):.0f} s)")


@app.command()
@handle_errors
def pipeline(
    config: Annotated[Path, typer.Argument(help="Pipeline YAML: workdir plus stage sections.")],
    stage: Annotated[
        list[str] | None,
        typer.Option(
            "--stage",
            "-s",
            help="Run only this stage (repeat for several); outputs of the others are found "
            "under the workdir. Default: the file's 'stages', or every section.",
        ),
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Only validate every stage's settings, run nothing.")
    ] = False,
) -> None:
    """Run the whole job from one config: ingest, train, predict, sieve, export, evaluate."""
    from w2w.pipeline import PipelineConfig, check_pipeline, run_pipeline

    cfg = PipelineConfig.load(str(config))
    if stage:
        cfg = cfg.replace(stages=stage)
    if check:
        for name, stage_cfg in check_pipeline(cfg).items():
            fields = ("images", "scene", "input", "bundle", "storage_path", "output")
            paths = {f: getattr(stage_cfg, f) for f in fields if getattr(stage_cfg, f, None)}
            out.print(f"{name}: ok  " + "  ".join(f"{k}={v}" for k, v in paths.items()))
        return
    _print_pipeline(run_pipeline(cfg))


@app.command()
@handle_errors
def demo(
    workdir: Annotated[
        str, typer.Argument(help="Folder (or s3:// prefix) for the outputs.")
    ] = "w2w-demo",
    size: Annotated[int, typer.Option(help="Edge of the synthetic state in pixels.")] = 768,
    epochs: Annotated[int, typer.Option(help="Maximum training epochs.")] = 15,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic state and training.")] = 0,
    pretrain_epochs: Annotated[
        int,
        typer.Option(
            min=0, help="Pretrain the encoder on the imagery first, for this many epochs."
        ),
    ] = 0,
) -> None:
    """The main job on the embedded default: synthetic state -> ingest -> train -> predict ->
    sieve -> COG -> evaluation, on a local Ray (a few minutes on 2 CPU cores)."""
    from w2w.pipeline import demo_config, run_pipeline

    cfg = demo_config(workdir, size=size, epochs=epochs, seed=seed, pretrain_epochs=pretrain_epochs)
    _print_pipeline(run_pipeline(cfg))


def main(argv: list[str] | None = None) -> None:
    """Console entry point (``argv`` defaults to the process's arguments)."""
    try:
        app(args=argv, prog_name="w2w")
    finally:
        _stop_ray()


def _stop_ray() -> None:
    """Stop the embedded Ray (if the command started one) with Ctrl-C held off: left to the
    interpreter's exit, Ray's shutdown runs in an exit hook, where a Ctrl-C printed a
    traceback and could crash the process after the command had finished."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        ray.shutdown()
    finally:
        signal.signal(signal.SIGINT, before)
