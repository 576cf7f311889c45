"""The ``w2w`` command line.

Every command takes its settings from options and/or ``--config FILE.yaml`` (options given
on the command line win). Bad input ends with a one-line ``error: ...`` on stderr and a
non-zero exit; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.markup import escape

from w2w.config import StageConfig, load_yaml
from w2w.errors import ConfigError, W2WError
from w2w.progress import console, out, set_enabled, setup_logging

app = typer.Typer(
    name="w2w",
    help="Wall-to-wall land-cover mapping: ingest, train, predict, export, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_state: dict[str, bool] = {"debug": False}
log = logging.getLogger("w2w")

F = TypeVar("F", bound=Callable[..., Any])
C = TypeVar("C", bound=StageConfig)

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="YAML file with the stage's settings; options override it."
    ),
]
OverwriteOpt = Annotated[
    bool | None, typer.Option("--overwrite", help="Replace an existing output.", show_default=False)
]
EngineOpt = Annotated[
    str | None,
    typer.Option("--engine", help="'ray' (parallel, default) or 'local' (this process only)."),
]


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """w2w: map land cover for a whole state, every pixel, from satellite imagery."""
    _state["debug"] = debug
    set_enabled(not quiet)
    setup_logging(logging.DEBUG if debug else logging.INFO)


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
            console.print(
                f"[bold red]internal error:[/] {type(exc).__name__}: {escape(str(exc))} "
                "(re-run with --debug for the traceback)",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def build_config(
    cls: type[C],
    config: Path | None,
    section: str | None = None,
    *,
    drop: set[str] | None = None,
    **options: Any,
) -> C:
    """A stage config from an optional YAML file overlaid with the options that were given.

    ``drop`` names keys of the file to ignore, e.g. the alternative to an option given.
    """
    base: dict[str, Any] = {}
    if config is not None:
        data = load_yaml(config)
        if section and section in data and isinstance(data[section], dict):
            data = data[section]
        base = {k: v for k, v in data.items() if k not in (drop or set())}
    given = {k: v for k, v in options.items() if v is not None}
    source = str(config) if config else "command line"
    return cls.from_dict({**base, **given}, source=source)


def parse_label_map(text: str | None) -> dict[int, int] | None:
    """Parse ``'-5=0;2,3,6=1'`` into ``{-5: 0, 2: 1, 3: 1, 6: 1}``."""
    if text is None:
        return None
    mapping: dict[int, int] = {}
    for group in filter(None, (g.strip() for g in text.replace(" ", ";").split(";"))):
        if "=" not in group:
            raise ConfigError(
                f"label map entry '{group}' has no '='; write SOURCE[,SOURCE...]=CLASS "
                "groups separated by ';', e.g. '-5=0;2,3,6=1'"
            )
        sources, target = group.rsplit("=", 1)
        try:
            tgt = int(target)
            for src in sources.split(","):
                mapping[int(src)] = tgt
        except ValueError:
            raise ConfigError(f"label map entry '{group}' is not made of integers") from None
    return mapping


def parse_class_names(text: str | None) -> dict[int, str] | None:
    """Parse ``'1=forest,2=water'`` into ``{1: 'forest', 2: 'water'}``."""
    if text is None:
        return None
    names: dict[int, str] = {}
    for item in filter(None, (i.strip() for i in text.split(","))):
        key, sep, name = item.partition("=")
        if not sep or not key.strip().lstrip("-").isdigit() or not name.strip():
            raise ConfigError(f"class entry '{item}' should look like ID=NAME, e.g. '1=forest'")
        names[int(key)] = name.strip()
    return names


def _split_csv(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


# -- synth ----------------------------------------------------------------------------------


@app.command()
@handle_errors
def synth(
    output: Annotated[
        str | None, typer.Argument(help="Folder for GeoTIFFs, or store path.")
    ] = None,
    size: Annotated[
        str | None, typer.Option(help="HEIGHTxWIDTH or one number, in pixels (e.g. 512, 97x130).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    pixel_size: Annotated[float | None, typer.Option(help="Pixel size in metres.")] = None,
    store: Annotated[
        bool, typer.Option("--store", help="Write a scene store instead of GeoTIFFs.")
    ] = False,
    separate_bands: Annotated[
        bool, typer.Option("--separate-bands", help="One GeoTIFF per band.")
    ] = False,
    config: ConfigOpt = None,
    overwrite: OverwriteOpt = None,
    engine: EngineOpt = None,
) -> None:
    """Generate a synthetic state: imagery with land-cover labels, as GeoTIFFs or a store."""
    from w2w.synth import SynthConfig, synthesize

    height = width = None
    if size is not None:
        h, _, w = size.lower().partition("x")
        try:
            height, width = int(h), int(w or h)
        except ValueError:
            raise ConfigError(f"--size '{size}' should be HEIGHTxWIDTH or one number") from None
    cfg = build_config(
        SynthConfig,
        config,
        "synth",
        output=output,
        height=height,
        width=width,
        seed=seed,
        pixel_size=pixel_size,
        format="store" if store else None,
        separate_bands=separate_bands or None,
        overwrite=overwrite,
        engine=engine,
    )
    result = synthesize(cfg)
    if result.store:
        out.print(f"scene store: {result.store}")
    else:
        for path in result.images:
            out.print(f"image: {path}")
        out.print(f"labels: {result.label}")
    out.print(f"grid: {result.grid.describe()}")


# -- ingest ---------------------------------------------------------------------------------


@app.command()
@handle_errors
def ingest(
    images: Annotated[
        list[str] | None, typer.Argument(help="Image raster(s); several are stacked in order.")
    ] = None,
    output: Annotated[
        str | None, typer.Option("--output", "-o", help="Scene store to write.")
    ] = None,
    label: Annotated[str | None, typer.Option(help="Label raster (one integer band).")] = None,
    band_names: Annotated[
        str | None, typer.Option(help="Comma-separated band names, one per stacked band.")
    ] = None,
    nodata: Annotated[
        str | None,
        typer.Option(help="Image nodata: one value, or comma-separated, one per image file."),
    ] = None,
    label_nodata: Annotated[int | None, typer.Option(help="Label value meaning no data.")] = None,
    label_map: Annotated[
        str | None,
        typer.Option(
            help="Map label values to classes: 'SRC[,SRC]=CLASS;...', e.g. '-5=0;2,3,6=1'."
        ),
    ] = None,
    unlabelled: Annotated[
        int | None, typer.Option(help="Class id meaning 'not labelled' (ignored in training).")
    ] = None,
    classes: Annotated[
        str | None, typer.Option(help="Class names: '1=forest,2=water,...'.")
    ] = None,
    reproject_labels: Annotated[
        bool,
        typer.Option("--reproject-labels", help="Warp labels on another grid onto the image grid."),
    ] = False,
    chunk: Annotated[int | None, typer.Option(help="Store chunk edge in pixels.")] = None,
    block: Annotated[
        int | None, typer.Option(help="Pixels per task edge (multiple of chunk).")
    ] = None,
    config: ConfigOpt = None,
    overwrite: OverwriteOpt = None,
    engine: EngineOpt = None,
) -> None:
    """Ingest GeoTIFF image(s) and optional labels into a chunked Zarr scene store."""
    from w2w.ingest import IngestConfig
    from w2w.ingest import ingest as run_ingest

    nodata_values = None
    if nodata is not None:
        try:
            nodata_values = [float(v) for v in nodata.split(",")]
        except ValueError:
            raise ConfigError(
                f"--nodata '{nodata}' should be numbers separated by commas"
            ) from None
    cfg = build_config(
        IngestConfig,
        config,
        "ingest",
        images=images or None,
        output=output,
        label=label,
        band_names=_split_csv(band_names),
        nodata=nodata_values,
        label_nodata=label_nodata,
        label_map=parse_label_map(label_map),
        unlabelled=unlabelled,
        classes=parse_class_names(classes),
        reproject_labels=reproject_labels or None,
        chunk=chunk,
        block=block,
        overwrite=overwrite,
        engine=engine,
    )
    report = run_ingest(cfg)
    out.print(f"scene store: {report.output}")
    out.print(f"grid: {report.grid.describe()}")
    out.print(f"bands: {', '.join(report.band_names)}")
    out.print(f"valid pixels: {report.valid_pixels:,}")
    if report.class_histogram:
        hist = ", ".join(f"{k}: {v:,}" for k, v in report.class_histogram.items())
        out.print(f"labelled pixels per class: {hist}")


# -- train ----------------------------------------------------------------------------------


@app.command()
@handle_errors
def train(
    scene: Annotated[str | None, typer.Argument(help="Scene store with labels.")] = None,
    run_name: Annotated[
        str | None, typer.Option(help="Run name; re-run the same to resume.")
    ] = None,
    storage_path: Annotated[
        str | None, typer.Option(help="Folder or s3:// prefix for runs and checkpoints.")
    ] = None,
    bundle: Annotated[str | None, typer.Option(help="Where to write the model bundle.")] = None,
    arch: Annotated[
        str | None, typer.Option(help="Architecture, e.g. Unet, FPN, UnetPlusPlus.")
    ] = None,
    encoder: Annotated[
        str | None, typer.Option(help="Encoder, e.g. resnet34, efficientnet-b0.")
    ] = None,
    chip_size: Annotated[int | None, typer.Option(help="Chip edge in pixels.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Chips per batch per worker.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (AdamW).")] = None,
    workers: Annotated[int | None, typer.Option(help="Training workers (DDP).")] = None,
    gpu: Annotated[bool, typer.Option("--gpu", help="One GPU per worker.")] = False,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    config: ConfigOpt = None,
    overwrite: Annotated[
        bool | None, typer.Option("--overwrite", help="Start the run again from scratch.")
    ] = None,
) -> None:
    """Train a segmentation model on a scene store with Ray Train; writes a model bundle."""
    from w2w.train import TrainConfig
    from w2w.train import train as run_train

    base = {}
    if config is not None:
        data = load_yaml(config)
        base = dict(data.get("train", data))
    nested = {
        "model": {"arch": arch, "encoder": encoder},
        "chips": {"size": chip_size},
        "optim": {"lr": lr},
        "workers": {"num_workers": workers, "use_gpu": True if gpu else None},
    }
    for section, values in nested.items():
        given = {k: v for k, v in values.items() if v is not None}
        if given:
            base[section] = {**dict(base.get(section) or {}), **given}
    flat = {
        "scene": scene,
        "run_name": run_name,
        "storage_path": storage_path,
        "bundle": bundle,
        "epochs": epochs,
        "batch_size": batch_size,
        "seed": seed,
        "overwrite": overwrite,
    }
    merged = {**base, **{k: v for k, v in flat.items() if v is not None}}
    cfg = TrainConfig.from_dict(merged, source=str(config) if config else "command line")
    report = run_train(cfg)
    m = report.metrics
    out.print(f"model bundle: {report.bundle}")
    out.print(f"run directory: {report.run_dir}")
    out.print(f"epochs run: {report.epochs_run}, best epoch: {report.best_epoch}")
    if len(report.starts) > 1:
        out.print(f"resumed at epoch(s): {', '.join(str(s) for s in report.starts[1:])}")
    if m.get("val_pixels"):
        scores = f"OA {m['val_oa']:.3f}, mIoU {m['val_miou']:.3f}, kappa {m['val_kappa']:.3f}"
        out.print(f"validation: {scores}")


@app.command("bundle-info")
@handle_errors
def bundle_info(
    bundle: Annotated[str, typer.Argument(help="A model bundle (.safetensors).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the metadata as JSON.")] = False,
) -> None:
    """Describe a model bundle: model, bands, normalisation, classes, metrics; checks its hash."""
    from w2w.bundle import load_bundle

    b = load_bundle(bundle)
    if as_json:
        sys.stdout.write(
            json.dumps({**b.metadata(), "content_hash": b.content_hash}, indent=2) + "\n"
        )
        return
    n_params = sum(int(t.numel()) for t in b.state.values())
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


# -- predict --------------------------------------------------------------------------------


@app.command()
@handle_errors
def predict(
    scene: Annotated[str | None, typer.Argument(help="Scene store to map.")] = None,
    bundle: Annotated[str | None, typer.Option("--bundle", "-m", help="Model bundle.")] = None,
    output: Annotated[
        str | None, typer.Option("--output", "-o", help="Mosaic store to write.")
    ] = None,
    block: Annotated[int | None, typer.Option(help="Block edge in pixels (mosaic chunk).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Chips per forward pass.")] = None,
    stride: Annotated[int | None, typer.Option(help="Chip step (default: half a chip).")] = None,
    actors: Annotated[int | None, typer.Option(help="Inference actors (GPUs when --gpu).")] = None,
    gpu: Annotated[bool, typer.Option("--gpu", help="One GPU per inference actor.")] = False,
    tta: Annotated[bool, typer.Option("--tta", help="Flip test-time augmentation.")] = False,
    config: ConfigOpt = None,
    overwrite: OverwriteOpt = None,
) -> None:
    """Predict every pixel of a scene into a Zarr mosaic (resumes an unfinished run)."""
    from w2w.predict import PredictConfig
    from w2w.predict import predict as run_predict

    cfg = build_config(
        PredictConfig,
        config,
        "predict",
        scene=scene,
        bundle=bundle,
        output=output,
        block=block,
        batch_size=batch_size,
        stride=stride,
        actors=actors,
        use_gpu=gpu or None,
        tta=tta or None,
        overwrite=overwrite,
    )
    report = run_predict(cfg)
    out.print(f"mosaic: {report.output}")
    out.print(
        f"blocks: {report.blocks_written} written, {report.blocks_done_before} already done "
        f"(skipped), {report.blocks_total} in all"
    )
    out.print(f"throughput: {report.pixels_per_second / 1e6:.3f} Mpx/s over {report.seconds:.1f} s")


# -- info -----------------------------------------------------------------------------------


@app.command()
@handle_errors
def info(
    store: Annotated[str, typer.Argument(help="A scene or mosaic store.")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the raw metadata as JSON.")
    ] = False,
) -> None:
    """Describe a scene or mosaic store: grid, bands, statistics, classes."""
    from w2w.store import GeoStore, MosaicStore, SceneStore

    opened: GeoStore
    try:
        opened = SceneStore.open(store)
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
    else:
        done = opened.done_blocks()
        out.print(f"blocks done: {int(done.sum())} of {done.size}")
        for c in opened.classes:
            out.print(f"  class {c.id} {c.name}")


@app.command()
@handle_errors
def verify(
    mosaic: Annotated[str, typer.Argument(help="A mosaic store (from predict or sieve).")],
    engine: EngineOpt = None,
) -> None:
    """Check a mosaic for holes: every block finished, every valid input pixel classified."""
    from w2w.errors import StageFailedError
    from w2w.predict import verify_coverage

    report = verify_coverage(mosaic, engine=engine or "ray")
    if not report.ok:
        raise StageFailedError(
            f"{mosaic}: {report.describe()}; re-run `w2w predict` on it: it predicts blocks that "
            "are unfinished or have holes again"
        )
    out.print(f"{mosaic}: {report.describe()}")


# -- sieve ----------------------------------------------------------------------------------


@app.command()
@handle_errors
def sieve(
    mosaic: Annotated[str | None, typer.Argument(help="Mosaic store to sieve.")] = None,
    output: Annotated[
        str | None, typer.Option("--output", "-o", help="Mosaic store to write.")
    ] = None,
    min_pixels: Annotated[
        int | None,
        typer.Option("--min-pixels", help="Merge patches with fewer pixels into a neighbour."),
    ] = None,
    min_area_ha: Annotated[
        float | None,
        typer.Option("--min-area-ha", help="The same, as an area in hectares (projected CRS)."),
    ] = None,
    connectivity: Annotated[
        int | None,
        typer.Option(help="4 (pixels join through edges, default) or 8 (corners too)."),
    ] = None,
    config: ConfigOpt = None,
    overwrite: OverwriteOpt = None,
    engine: EngineOpt = None,
) -> None:
    """Apply a minimum mapping unit: merge small patches into their largest neighbour."""
    from w2w.sieve import SieveConfig
    from w2w.sieve import sieve as run_sieve

    # A unit given on the command line replaces the other unit from the config file.
    drop = {"min_area_ha"} if min_pixels is not None else set()
    drop |= {"min_pixels"} if min_area_ha is not None else set()
    cfg = build_config(
        SieveConfig,
        config,
        "sieve",
        drop=drop,
        input=mosaic,
        output=output,
        min_pixels=min_pixels,
        min_area_ha=min_area_ha,
        connectivity=connectivity,
        overwrite=overwrite,
        engine=engine,
    )
    report = run_sieve(cfg)
    out.print(f"mosaic store: {report.output}")
    out.print(f"minimum mapping unit: {report.min_pixels:,} px, {report.connectivity}-connected")
    out.print(f"pixels changed: {report.changed_pixels:,}")


# -- export ---------------------------------------------------------------------------------


@app.command()
@handle_errors
def export(
    mosaic: Annotated[str | None, typer.Argument(help="Mosaic store to export.")] = None,
    output: Annotated[
        str | None, typer.Option("--output", "-o", help="COG to write (.tif path or s3:// URL).")
    ] = None,
    confidence: Annotated[
        str | None,
        typer.Option(help="'file' (<name>_confidence.tif, default), 'band' or 'none'."),
    ] = None,
    blocksize: Annotated[int | None, typer.Option(help="COG tile edge in pixels.")] = None,
    compress: Annotated[
        str | None, typer.Option(help="'deflate' (default), 'zstd', 'lzw'.")
    ] = None,
    overview_resampling: Annotated[
        str | None, typer.Option(help="Class overviews: 'mode' (default) or 'nearest'.")
    ] = None,
    quicklook_size: Annotated[
        int | None, typer.Option(help="Quicklook long edge in pixels.")
    ] = None,
    datetime: Annotated[
        str | None, typer.Option(help="Nominal date of the map for STAC (ISO 8601).")
    ] = None,
    allow_incomplete: Annotated[
        bool, typer.Option("--allow-incomplete", help="Export an unfinished mosaic.")
    ] = False,
    cache_mb: Annotated[int | None, typer.Option(help="GDAL block cache in MB.")] = None,
    workdir: Annotated[
        str | None, typer.Option(help="Local scratch folder (default: system temp).")
    ] = None,
    config: ConfigOpt = None,
    overwrite: OverwriteOpt = None,
) -> None:
    """Export a mosaic as a Cloud-Optimized GeoTIFF with a STAC Item and a quicklook."""
    from w2w.export import ExportConfig
    from w2w.export import export as run_export

    cfg = build_config(
        ExportConfig,
        config,
        "export",
        input=mosaic,
        output=output,
        confidence=confidence,
        blocksize=blocksize,
        compress=compress,
        overview_resampling=overview_resampling,
        quicklook_size=quicklook_size,
        datetime=datetime,
        allow_incomplete=allow_incomplete or None,
        cache_mb=cache_mb,
        workdir=workdir,
        overwrite=overwrite,
    )
    result = run_export(cfg)
    out.print(f"COG: {result.cog} ({result.size_bytes / 2**20:,.1f} MiB)")
    if result.confidence:
        out.print(f"confidence: {result.confidence}")
    out.print(f"STAC item: {result.stac}")
    out.print(f"quicklook: {result.quicklook}")
    out.print(f"QGIS style: {result.style}")
    out.print(f"grid: {result.grid.describe()}")
    levels = ", ".join(str(f) for f in result.overviews) or "none (fits in one tile)"
    out.print(f"overviews: {levels}")


# -- evaluate -------------------------------------------------------------------------------


@app.command()
@handle_errors
def evaluate(
    mosaic: Annotated[str | None, typer.Argument(help="Mosaic store to evaluate.")] = None,
    scene: Annotated[
        str | None, typer.Option(help="Scene store with the reference labels.")
    ] = None,
    bundle: Annotated[
        str | None, typer.Option(help="Model bundle whose spatial split selects the pixels.")
    ] = None,
    split: Annotated[
        str | None,
        typer.Option(help="'test', 'val', 'train' or 'all' (default: test with a bundle)."),
    ] = None,
    output: Annotated[
        str | None, typer.Option("--output", "-o", help="Folder or s3:// prefix for reports.")
    ] = None,
    allow_incomplete: Annotated[
        bool, typer.Option("--allow-incomplete", help="Evaluate an unfinished mosaic.")
    ] = False,
    config: ConfigOpt = None,
    overwrite: OverwriteOpt = None,
    engine: EngineOpt = None,
) -> None:
    """Score a mosaic against reference labels and estimate class areas with 95% CIs."""
    from w2w.evaluate import EvaluateConfig
    from w2w.evaluate import evaluate as run_evaluate

    cfg = build_config(
        EvaluateConfig,
        config,
        "evaluate",
        mosaic=mosaic,
        scene=scene,
        bundle=bundle,
        split=split,
        output=output,
        allow_incomplete=allow_incomplete or None,
        overwrite=overwrite,
        engine=engine,
    )
    result = run_evaluate(cfg)
    out.print(f"report: {result.markdown}")
    out.print(f"metrics: {result.json}")
    out.print(f"confusion matrix: {result.figure}")
    out.print(f"split: {result.split}, reference pixels: {result.reference_pixels:,}")
    out.print(
        f"overall accuracy: {result.overall_accuracy:.4f}, kappa: {result.kappa:.4f}, "
        f"mean IoU: {result.mean_iou:.4f}"
    )
    if result.excluded["map_nodata"]:
        out.print(f"reference pixels left as nodata in the map: {result.excluded['map_nodata']:,}")
    unit = result.area_unit
    for a in result.areas:
        out.print(
            f"  {a.name}: mapped {a.mapped_area:,.1f} {unit}, estimated "
            f"{a.estimated_area:,.1f} ± {a.ci95:,.1f} {unit} (95% CI)"
        )


# -- pipeline and demo ----------------------------------------------------------------------


def _print_pipeline(result: Any) -> None:
    for name, where in result.outputs.items():
        out.print(f"{name}: {where}")
    m = result.metrics
    for split in ("val", "test", "all"):
        if m.get(f"{split}_miou") is not None:
            oa = m.get(f"{split}_oa")
            label = {"val": "validation", "test": "test split", "all": "all labels"}[split]
            out.print(f"{label}: mIoU {m[f'{split}_miou']:.3f}, OA {oa:.3f}")
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
    from w2w.pipeline import PipelineConfig, run_pipeline, stage_configs

    cfg = PipelineConfig.load(str(config))
    if stage:
        cfg = cfg.replace(stages=stage)
    if check:
        for name, stage_cfg in stage_configs(cfg).items():
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
    epochs: Annotated[int, typer.Option(help="Maximum training epochs.")] = 30,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic state and training.")] = 0,
) -> None:
    """The main job on the embedded default: synthetic state -> ingest -> train -> predict ->
    sieve -> COG -> evaluation, on a local Ray (a few minutes on 2 CPU cores)."""
    from w2w.pipeline import demo_config, run_pipeline

    _print_pipeline(run_pipeline(demo_config(workdir, size=size, epochs=epochs, seed=seed)))


def main(argv: list[str] | None = None) -> None:
    """Console entry point (``argv`` defaults to the process's arguments)."""
    app(args=argv, prog_name="w2w")


if __name__ == "__main__":
    main()
