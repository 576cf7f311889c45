"""The rules every stage passes through, tested as a matrix generated from the stage registry:
a stage added later (or an input or output option added to one) is covered without a new test.

* the output guard (:mod:`w2w.core.guard`): an output that is, lies inside or holds an input,
  spelled through ``..`` or a symlink, is refused; an existing output needs ``--overwrite``;
  ``--overwrite`` replaces only what w2w made; a file never replaces a folder;
* the publish protocol (:mod:`w2w.core.outputs`): what a killed run left is rolled back or
  finished by the next run, staging leftovers of dead processes removed;
* readers see one version (:mod:`w2w.core.pins`): nothing is published when an input changed;
* resources (:mod:`w2w.core.resources`): requests the cluster cannot meet are refused at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import free_ports, stalled_endpoint_at, write_tif
from w2w.core import guard, locks, outputs, pins
from w2w.core.errors import ConfigError, InputError, OutputError
from w2w.stages import STAGES, TOOLS, Stage

#: Every command that writes outputs: the pipeline's stages and the tools beside them.
WRITERS = (*STAGES, *TOOLS)

#: Settings a stage needs beyond the paths the matrix fills in; a stage's variants together
#: must name every input field it has (checked below), so a new input is never left out.
VARIANTS: dict[str, list[dict[str, Any]]] = {
    "ingest": [
        {"images": ["img/a.tif"], "label": "lab.tif"},
        {
            "tiles": ["tiles/*.tif"],
            "aoi": "aoi.gpkg",
            "crs": "EPSG:32613",
            "resolution": 10,
        },
    ],
    "sieve": [{"min_pixels": 4}],
    "evaluate": [{"bundle": "m.safetensors"}],
}

W2W_STORE = {"zarr_format": 3, "node_type": "group", "attributes": {"w2w": {"kind": "scene"}}}


def _is_store(what: str) -> bool:
    return "store" in what or what == "mosaic"


def _make(path: Path, what: str) -> None:
    """An input as it is on disk: a store (a folder w2w made) or a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if _is_store(what):
        path.mkdir(exist_ok=True)
        (path / "zarr.json").write_text(json.dumps(W2W_STORE))
    else:
        path.write_bytes(b"input")


def _snapshot(root: Path, *, hidden: bool = False) -> dict[str, bytes]:
    """Every file (content) and folder under ``root``; hidden ones too with ``hidden``."""
    return {
        str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"/"
        for p in sorted(root.rglob("*"))
        if not p.name.startswith("link_") and (hidden or not p.name.startswith("."))
    }


def _settings(stage: Stage, variant: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """A valid set of settings: every required path field filled with a path under ``tmp``
    (inputs made on disk), then the variant's values (relative paths placed under ``tmp``)."""
    cls = stage.config
    data: dict[str, Any] = {}
    for name, field in cls.model_fields.items():
        if name in cls.inputs and field.is_required():
            data[name] = str(tmp / f"in_{name}.zarr")
        elif name in cls.outputs and field.is_required():
            data[name] = str(tmp / "out" / f"{name}.tif")
    for name, value in variant.items():
        if name in cls.inputs:
            items = value if isinstance(value, list) else [value]
            placed = [str(tmp / v) for v in items]
            data[name] = placed if isinstance(value, list) else placed[0]
        else:
            data[name] = value
    for name, what in cls.inputs.items():
        value = data.get(name)
        for p in value if isinstance(value, list) else [value] if value else []:
            target = Path(p.replace("*", "x"))
            _make(target, what)
    if stage.name == "export":  # a COG path
        data["output"] = str(tmp / "out" / "map.tif")
    return data


def _cases() -> list[tuple[str, int]]:
    return [(s.name, i) for s in WRITERS for i in range(len(VARIANTS.get(s.name, [{}])))]


def _stage(name: str) -> Stage:
    return next(s for s in WRITERS if s.name == name)


def test_every_input_field_of_every_stage_is_in_the_matrix(tmp_path: Path) -> None:
    for stage in WRITERS:
        named: set[str] = set()
        for i, variant in enumerate(VARIANTS.get(stage.name, [{}])):
            cfg = stage.config.from_dict(_settings(stage, variant, tmp_path / f"{stage.name}{i}"))
            named |= {n for n in stage.config.inputs if getattr(cfg, n, None)}
        assert named == set(stage.config.inputs), (
            f"{stage.name}: inputs {set(stage.config.inputs) - named} are in no VARIANTS entry"
        )
        assert stage.config.outputs, f"{stage.name} declares no outputs for the guard"


def _refused(stage: Stage, settings: dict[str, Any]) -> str:
    """The message with which the stage refuses ``settings`` before doing any work."""
    try:
        cfg = stage.config.from_dict(settings)
        guard.check(cfg)
    except (ConfigError, OutputError) as exc:
        return str(exc)
    raise AssertionError(f"{stage.name} accepted {settings}")


@pytest.mark.parametrize("spelling", ["dotdot", "symlink", "inside"])
@pytest.mark.parametrize(("stage_name", "variant"), _cases())
def test_an_output_that_is_an_input_is_refused_however_spelled(
    stage_name: str, variant: int, spelling: str, tmp_path: Path
) -> None:
    stage = _stage(stage_name)
    cls = stage.config
    base = _settings(stage, VARIANTS.get(stage_name, [{}])[variant], tmp_path)
    before = _snapshot(tmp_path)
    pairs = [
        (out, name) for out in cls.outputs for name in cls.inputs if base.get(name) is not None
    ]
    for out_field, in_field in pairs:
        value = base[in_field]
        path = Path(value[0] if isinstance(value, list) else value)
        if "*" in str(path):
            path = path.parent
        if spelling == "dotdot":
            aliased = str(path.parent / "sub" / ".." / path.name)
        elif spelling == "symlink":
            link = tmp_path / f"link_{out_field}_{in_field}"
            if not link.exists():
                link.symlink_to(path)
            aliased = str(link)
        else:  # an output inside the input, through '..'
            suffix = Path(base.get(out_field) or "x.gpkg").suffix
            aliased = str(path / "x" / ".." / f"inner{suffix}")
            if not _is_store(cls.inputs[in_field]) and in_field != "tiles":
                continue  # nothing lies inside a file
        message = _refused(stage, {**base, out_field: aliased})
        # Refused by the guard, or (an output of a fixed form, e.g. a .gpkg) for its form.
        assert "destroy what it reads" in message or f"'{out_field}'" in message, message
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize(("stage_name", "variant"), _cases())
def test_existing_outputs_need_overwrite_and_overwrite_replaces_only_what_w2w_made(
    stage_name: str, variant: int, tmp_path: Path
) -> None:
    stage = _stage(stage_name)
    base = _settings(stage, VARIANTS.get(stage_name, [{}])[variant], tmp_path)
    targets = [t for t in stage.config.from_dict(base).output_targets() if t.kind != "folder"]
    assert targets
    for t in targets:
        where = Path(t.url)
        where.parent.mkdir(parents=True, exist_ok=True)
        # Made by w2w: refused without overwrite unless the stage resumes it.
        if t.kind == "file":
            where.write_bytes(b"old output")
        else:
            where.mkdir()
            marker = "zarr.json" if t.kind == "store" else outputs.RUN_FILE
            content = json.dumps(W2W_STORE) if t.kind == "store" else "{}"
            (where / marker).write_text(content)
        before = _snapshot(tmp_path)
        cfg = stage.config.from_dict(base)
        if t.resumable:
            guard.check(cfg)
        else:
            with pytest.raises(OutputError, match="exists already; pass --overwrite"):
                guard.check(cfg)
        assert _snapshot(tmp_path) == before
        _remove(where)
        # Not made by w2w: a folder of user files, or a folder where a file goes.
        where.mkdir()
        (where / "notes.txt").write_text("mine")
        before = _snapshot(tmp_path)
        with pytest.raises(OutputError, match="folder|not a store made by w2w|no w2w"):
            guard.check(stage.config.from_dict({**base, "overwrite": True}))
        assert _snapshot(tmp_path) == before
        _remove(where)


@pytest.mark.parametrize("link", ["loop", "dangling", "dangling folder above"])
@pytest.mark.parametrize(("stage_name", "variant"), _cases())
def test_an_output_through_a_link_to_nowhere_is_refused_before_any_work(
    stage_name: str, variant: int, link: str, tmp_path: Path
) -> None:
    """A symbolic link at an output (or at a folder above it) that leads nowhere -- a loop,
    or a target that is gone -- is neither written through nor replaced, with or without
    --overwrite: the guard refuses it, and nothing changes."""
    stage = _stage(stage_name)
    base = _settings(stage, VARIANTS.get(stage_name, [{}])[variant], tmp_path)
    for f, kind in stage.config.outputs.items():  # a folder output takes any name
        if kind == "folder" and not base.get(f):
            base[f] = str(tmp_path / "out" / f)
    tried = [f for f in stage.config.outputs if base.get(f)]
    assert tried, f"{stage_name}: no output field set"
    for field in tried:
        name = Path(base[field]).name
        suffix = Path(name).suffix
        if link == "loop":
            a, b = tmp_path / f"link_{field}_a{suffix}", tmp_path / f"link_{field}_b{suffix}"
            a.symlink_to(b)
            b.symlink_to(a)
            aliased = str(a)
        elif link == "dangling":
            a = tmp_path / f"link_{field}{suffix}"
            a.symlink_to(tmp_path / "gone" / name)
            aliased = str(a)
        else:
            a = tmp_path / f"link_{field}_dir"
            a.symlink_to(tmp_path / "gone")
            aliased = str(a / name)
        before = _snapshot(tmp_path)
        for overwrite in (False, True):
            settings = {**base, field: aliased, "overwrite": overwrite}
            with pytest.raises(OutputError, match="leads nowhere"):
                guard.check(stage.config.from_dict(settings))
        assert _snapshot(tmp_path) == before


@pytest.mark.parametrize(("stage_name", "variant"), _cases())
def test_an_output_under_a_file_is_refused_before_any_work(
    stage_name: str, variant: int, tmp_path: Path
) -> None:
    """An output whose folder is a file (``-o notes.txt/map.tif``) failed only after the
    stage's work; the guard refuses it first, for every output of every stage."""
    stage = _stage(stage_name)
    base = _settings(stage, VARIANTS.get(stage_name, [{}])[variant], tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    for field in stage.config.outputs:
        if not base.get(field):
            continue
        settings = {**base, field: str(tmp_path / "notes.txt" / "sub" / Path(base[field]).name)}
        with pytest.raises(OutputError, match="is a file, not a folder"):
            guard.check(stage.config.from_dict(settings))
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(("stage_name", "variant"), _cases())
def test_a_path_that_is_not_utf8_is_refused_before_any_work(
    stage_name: str, variant: int, tmp_path: Path
) -> None:
    """A name whose bytes are not UTF-8 (``os.fsdecode`` gives surrogates) cannot be written
    into metadata, STAC or logs: refused by the guard, as an output and as an input."""
    stage = _stage(stage_name)
    base = _settings(stage, VARIANTS.get(stage_name, [{}])[variant], tmp_path)
    odd = os.fsdecode(b"bad\xff")
    for field in stage.config.outputs:
        if not base.get(field):
            continue
        where = Path(base[field])
        settings = {**base, field: str(where.with_name(odd + where.suffix))}
        with pytest.raises(OutputError, match="not UTF-8"):
            guard.check(stage.config.from_dict(settings))
    for field in stage.config.inputs:
        value = base.get(field)
        if not value or isinstance(value, list):
            continue
        settings = {**base, field: str(Path(value).with_name(odd))}
        with pytest.raises(InputError, match="not UTF-8"):
            guard.check(stage.config.from_dict(settings))


@contextlib.contextmanager
def _locked_as_another_command(location: str) -> Iterator[None]:
    """The lock of ``location`` held through a descriptor of its own, with a holder's record,
    as another process holds it (the operating system refuses a second flock either way)."""
    import fcntl

    with open(locks.lock_path(location), "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        record = {"pid": 4242, "host": "node-a", "since": 0, "command": "w2w predict other"}
        f.write(json.dumps(record).encode())
        f.flush()
        yield


@pytest.mark.parametrize(("stage_name", "variant"), _cases())
def test_an_output_another_command_is_writing_is_refused_before_any_work(
    stage_name: str,
    variant: int,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two commands writing one output at once (two ``predict --overwrite`` with different
    settings) each took the other's half-built replacement for a leftover; every output of
    every stage is locked while it runs, and a second writer is refused naming the first,
    however the output is spelled."""
    monkeypatch.setenv(locks.LOCK_DIR_ENV, str(tmp_path_factory.mktemp("locks")))
    stage = _stage(stage_name)
    cfg = stage.config.from_dict(
        _settings(stage, VARIANTS.get(stage_name, [{}])[variant], tmp_path)
    )
    targets = [t for t in cfg.output_targets() if t.kind != "folder"]
    assert targets, f"{stage_name} has no output to lock"
    (tmp_path / "link_out").symlink_to(tmp_path / "out", target_is_directory=True)
    for target in targets:
        before = _snapshot(tmp_path, hidden=True)
        spelled = target.url.replace(str(tmp_path / "out"), str(tmp_path / "link_out"))
        refusal = pytest.raises(OutputError, match=r"being written by .*process 4242 on node-a")
        with _locked_as_another_command(guard.real_location(spelled)), refusal:
            stage.execute(cfg, progress=False)
        assert _snapshot(tmp_path, hidden=True) == before
    guard.check(cfg)  # released: the guard (and the stage) may go on


def test_a_lock_is_released_when_its_holder_is_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lock held by a process that is killed (SIGKILL: nothing of its own runs) is free at
    once; while it lives, the refusal names its command and process."""
    monkeypatch.setenv(locks.LOCK_DIR_ENV, str(tmp_path / "locks"))
    where = str(tmp_path / "m.zarr")
    code = (
        "import sys; from w2w.core import locks; locks.acquire('mosaic', sys.argv[1]); "
        "print('held', flush=True); sys.stdin.read()"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, where], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == b"held"
        with pytest.raises(OutputError, match=rf"`-c {where}`, process {child.pid} on "):
            locks.acquire("mosaic", where)
    finally:
        child.kill()
        child.wait(10)
    with locks.held([("mosaic", where)]), locks.held([("mosaic", where)]):  # re-entrant
        pass
    locks.acquire("mosaic", where)
    locks.release(where)


def _remove(p: Path) -> None:
    import shutil

    if p.is_dir():
        shutil.rmtree(p)
    else:
        p.unlink()


def test_the_python_api_runs_stages_through_the_same_rules(tmp_path: Path) -> None:
    import w2w
    import w2w.ingest.run  # binds the name w2w.ingest to the package: it answers calls too

    img = write_tif(tmp_path / "img.tif", np.ones((1, 32, 32), dtype=np.uint16))
    out = tmp_path / "s.zarr"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not a store made by w2w"):
        w2w.ingest(w2w.IngestConfig(images=[str(img)], output=str(out), overwrite=True))
    assert (out / "notes.txt").read_text() == "mine"


def test_a_pipeline_refuses_a_later_stages_output_before_the_first_stage_runs(
    tmp_path: Path,
) -> None:
    from w2w.pipeline import demo_config, run_pipeline

    cfg = demo_config(str(tmp_path), size=64)
    cfg = cfg.replace(export={**cfg.export, "overwrite": False})
    (tmp_path / "landcover.tif").write_bytes(b"last year's map")
    with pytest.raises(OutputError, match=r"landcover\.tif exists already"):
        run_pipeline(cfg, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["landcover.tif"]


def test_a_pipeline_refuses_a_later_stages_output_another_command_writes_before_it_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pipeline locks every stage's outputs before its first stage: a COG another command is
    writing is refused at once, not after ingest, training and prediction."""
    from w2w.pipeline import demo_config, run_pipeline, stage_configs

    monkeypatch.setenv(locks.LOCK_DIR_ENV, str(tmp_path / "locks"))
    work = tmp_path / "job"
    cfg = demo_config(str(work), size=64)
    cog = stage_configs(cfg)["export"].output_targets()[0].url
    refusal = pytest.raises(OutputError, match=r"landcover\.tif is being written by .*4242")
    with _locked_as_another_command(guard.real_location(cog)), refusal:
        run_pipeline(cfg, progress=False)
    assert not work.exists() or not any(work.iterdir())


# -- the examples of the kind ------------------------------------------------------------------


def test_ingest_refuses_an_output_that_holds_its_tiles_list_files_or_stac_assets(
    tmp_path: Path,
) -> None:
    ingest = _stage("ingest")
    grid = {"crs": "EPSG:32613", "resolution": 10, "bounds": "0,0,100,100", "overwrite": True}
    state = tmp_path / "state"
    (state / "tiles").mkdir(parents=True)
    (state / "tiles" / "a.tif").write_bytes(b"tile")
    (state / "done.zarr").mkdir()
    (state / "done.zarr" / "zarr.json").write_text(json.dumps(W2W_STORE))
    glob = str(state / "tiles" / "*.tif")
    msg = _refused(ingest, {"tiles": [glob], "output": str(state), **grid})
    assert "holds the input tile" in msg
    # A list file naming tiles elsewhere: the output may not hold them.
    other = tmp_path / "other"
    other.mkdir()
    (other / "b.tif").write_bytes(b"tile")
    listing = tmp_path / "list.txt"
    listing.write_text(f"{other / 'b.tif'}\n")
    msg = _refused(ingest, {"tiles": [f"@{listing}"], "output": str(other), **grid})
    assert "holds the input tile" in msg and "b.tif" in msg
    # A STAC document whose assets lie in the output.
    data = tmp_path / "data"
    data.mkdir()
    (data / "b1.tif").write_bytes(b"band")
    item = {
        "type": "Feature",
        "stac_version": "1.1.0",
        "id": "i",
        "geometry": None,
        "properties": {"datetime": "2024-01-01T00:00:00Z"},
        "links": [],
        "assets": {"b1": {"href": "../data/b1.tif", "type": "image/tiff"}},
    }
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "item.json").write_text(json.dumps(item))
    msg = _refused(
        ingest, {"tiles": [str(tmp_path / "cat" / "item.json")], "output": str(data), **grid}
    )
    assert "holds the input STAC asset" in msg
    assert (state / "tiles" / "a.tif").exists() and (other / "b.tif").exists()


def test_a_killed_overwrite_of_a_run_is_rolled_back_by_the_next_command(tmp_path: Path) -> None:
    from w2w.train.config import TrainConfig

    runs = tmp_path / "runs"
    (runs / "r1").mkdir(parents=True)
    (runs / "r1" / outputs.RUN_FILE).write_text('{"old": true}')
    (runs / "r1" / "model.safetensors").write_bytes(b"old bundle")
    # A process sets the old run aside, starts the new one in its place, and is killed.
    code = (
        "import os, sys; from w2w.core.outputs import set_aside; "
        f"set_aside({str(runs / 'r1')!r}); os.makedirs({str(runs / 'r1')!r}); "
        f"open({str(runs / 'r1' / 'partial')!r}, 'w').close(); os._exit(9)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 9
    assert not (runs / "r1" / outputs.RUN_FILE).exists()
    cfg = TrainConfig(scene=str(tmp_path / "s.zarr"), storage_path=str(runs), run_name="r1")
    guard.check(cfg)
    assert (runs / "r1" / "model.safetensors").read_bytes() == b"old bundle"
    assert not (runs / "r1" / "partial").exists()
    assert sorted(p.name for p in runs.iterdir()) == ["r1"]


def _dead_tag() -> str:
    """A staging tag of a process that has ended."""
    return subprocess.run(
        [sys.executable, "-c", "from w2w.core.outputs import staging_tag; print(staging_tag())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def test_swap_and_staging_leftovers_of_dead_processes_are_settled(tmp_path: Path) -> None:
    dead = _dead_tag()
    out = tmp_path / "m.zarr"
    # Killed between the two renames of a swap: the old store comes back.
    (tmp_path / f".m.zarr.w2w-swap-{dead}").mkdir()
    (tmp_path / f".m.zarr.w2w-swap-{dead}" / "old").write_text("old")
    (tmp_path / f".m.zarr.w2w-tmp-{dead}").mkdir()  # a staging store of the dead process
    live = tmp_path / f".m.zarr.w2w-tmp-{outputs.staging_tag()}"  # this process's: kept
    live.mkdir()
    outputs.recover(str(out))
    assert (out / "old").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m.zarr", live.name])
    # Killed after the swap: the new one stays, the old one goes.
    (tmp_path / f".m.zarr.w2w-swap-{dead}").mkdir()
    outputs.recover(str(out))
    assert (out / "old").exists()
    assert not (tmp_path / f".m.zarr.w2w-swap-{dead}").exists()


def test_staging_left_on_object_storage_by_dead_processes_is_removed(s3_bucket: str) -> None:
    """A build that failed where even its clean-up could not reach the endpoint leaves its
    staging prefix; the next run's guard removes it (a live process's is kept)."""
    dead = _dead_tag()
    from w2w.core import storage

    live = outputs.staging_tag()
    for tag in (dead, live):
        storage.atomic_write_bytes(f"{s3_bucket}/.m.zarr.w2w-tmp-{tag}/zarr.json", b"{}")
    storage.atomic_write_bytes(f"{s3_bucket}/m.zarr/zarr.json", b"{}")
    outputs.recover(f"{s3_bucket}/m.zarr")
    left = sorted(p.rsplit("/", 1)[-1] for p in storage.filesystem(s3_bucket).ls(s3_bucket))
    assert left == sorted(["m.zarr", f".m.zarr.w2w-tmp-{live}"])


class _Killed(BaseException):
    """Stands for SIGKILL in-process: nothing after it runs, nothing cleans up."""


@pytest.mark.parametrize("step", ["before-swap", "mid-swap", "after-swap"])
def test_a_file_set_killed_while_published_is_settled_whatever_the_order_of_its_files(
    step: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guard settles a stage's outputs together: a set's journal (beside its first file)
    is finished before staged files beside the other files are taken for leftovers."""
    from w2w.core import crashpoints

    names = ["fig.png", "report.md", "report.json"]
    for n in names:
        (tmp_path / n).write_text(f"old {n}")
    staged = tmp_path / "staging"
    staged.mkdir()
    for n in names:
        (staged / n).write_text(f"new {n}")

    def die(at: str, *_: str) -> None:
        if at == step:
            raise _Killed

    monkeypatch.setattr(crashpoints, "reached", die)
    with pytest.raises(_Killed):
        outputs.publish_files([(str(tmp_path / n), staged / n) for n in names])
    monkeypatch.setattr(crashpoints, "reached", lambda *_: None)
    monkeypatch.setattr(outputs, "_maker_gone", lambda name: True)  # as if this process died
    outputs.recover(*(str(tmp_path / n) for n in reversed(names)))  # the JSON first
    got = {n: (tmp_path / n).read_text() for n in names}
    want = "old" if step == "before-swap" else "new"
    assert got == {n: f"{want} {n}" for n in names}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*names, "staging"])


@pytest.mark.parametrize("step", ["before-swap", "mid-swap", "after-swap"])
def test_a_run_replaced_in_place_and_killed_keeps_the_old_run_or_the_finished_new_one(
    step: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed before the new run finished, the old run comes back; killed once it had
    finished (its bundle already published beside), the new run stays."""
    from w2w.core import crashpoints

    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "state").write_text("old")

    def die(at: str, *where: str) -> None:
        if at == step and where == (str(run),):  # the run's steps, not its journal's
            raise _Killed

    def replace_the_run() -> None:
        aside = outputs.set_aside(str(run))
        run.mkdir()
        (run / "state").write_text("new")
        outputs.discard_aside(aside, str(run))

    monkeypatch.setattr(crashpoints, "reached", die)
    with pytest.raises(_Killed):
        replace_the_run()
    monkeypatch.setattr(crashpoints, "reached", lambda *_: None)
    monkeypatch.setattr(outputs, "_maker_gone", lambda name: True)  # as if this process died
    outputs.recover(str(run))
    assert (run / "state").read_text() == ("new" if step == "after-swap" else "old")
    assert sorted(p.name for p in run.parent.iterdir()) == ["r1"]


def test_nothing_is_published_from_an_input_that_changed_while_read(tmp_path: Path) -> None:
    from w2w.export.config import ExportConfig

    mosaic = tmp_path / "m.zarr"
    _make(mosaic, "mosaic")
    cfg = ExportConfig(input=str(mosaic), output=str(tmp_path / "map.tif"))
    (tmp_path / "map.tif").write_bytes(b"old map")
    staged = tmp_path / "work" / "map.tif"
    staged.parent.mkdir()
    staged.write_bytes(b"new map")
    changed = pytest.raises(pins.InputChangedError, match=r"m\.zarr changed while it was being")
    with changed, pins.pinned(cfg):
        other = {**W2W_STORE, "attributes": {"w2w": {"kind": "mosaic", "identity": "b"}}}
        (mosaic / "zarr.json").write_text(json.dumps(other))  # another command's mosaic
        outputs.publish_files([(str(tmp_path / "map.tif"), staged)])
    assert (tmp_path / "map.tif").read_bytes() == b"old map"
    # Unchanged inputs publish as before.
    with pins.pinned(cfg):
        outputs.publish_files([(str(tmp_path / "map.tif"), staged)])
    assert (tmp_path / "map.tif").read_bytes() == b"new map"


def test_no_store_is_marked_complete_from_an_input_that_changed_while_read(
    tmp_path: Path,
) -> None:
    """A stage that writes its output in place (a new mosaic, resumable) must not mark it
    complete when an input changed while it was read: the mark is what later stages trust
    (a model swapped mid-predict gave a complete mosaic naming the other model). Checked at
    the store layer, for both kinds of store."""
    from w2w.core.store import MosaicStore, SceneStore
    from w2w.export.config import ExportConfig
    from w2w.ingest.synth import SynthConfig

    source = tmp_path / "m.zarr"
    _make(source, "mosaic")
    cfg = ExportConfig(input=str(source), output=str(tmp_path / "map.tif"))
    grid = SynthConfig(output="unused", height=32, width=32).grid
    mosaic = MosaicStore.create(str(tmp_path / "new.zarr"), grid, block=16, classes=[])
    for w in mosaic.blocks():
        mosaic.write("class", w, np.zeros((w.height, w.width), "uint8"))
        mosaic.mark_block_done(w, w.size)
    scene = SceneStore.create(
        str(tmp_path / "s.zarr"), grid, band_names=["a"], dtype="uint16", nodata=0
    )

    def swap_the_input_then_mark(store: Any) -> None:
        with pins.pinned(cfg):
            other = {**W2W_STORE, "attributes": {"w2w": {"kind": "mosaic", "identity": "b"}}}
            (source / "zarr.json").write_text(json.dumps(other))
            store.mark_complete()

    for store in (mosaic, scene):
        with pytest.raises(pins.InputChangedError):
            swap_the_input_then_mark(store)
        (source / "zarr.json").write_text(json.dumps(W2W_STORE))
        assert not type(store).open(store.url, mode="r+").meta.get("complete")


def _float_fields(model: Any, prefix: str = "") -> list[str]:
    """Dotted names of the float settings of a config model, nested sections included."""
    import typing

    from pydantic import BaseModel

    found = []
    for name, field in model.model_fields.items():
        hint = field.annotation
        args = typing.get_args(hint) or (hint,)
        sections = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        if sections:
            found += _float_fields(sections[0], f"{prefix}{name}.")
        elif any(getattr(m, "allow_inf_nan", None) for m in field.metadata):
            continue  # a nodata value: NaN is one
        elif any(typing.get_origin(a) is tuple for a in (hint, *args)):
            if float in typing.get_args(hint) or any(float in typing.get_args(a) for a in args):
                found.append(f"{prefix}{name}()")  # a pair of numbers, e.g. an origin
        elif float in args:
            found.append(f"{prefix}{name}")
    return found


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
@pytest.mark.parametrize(("stage_name", "variant"), _cases())
def test_no_number_of_any_setting_is_infinite_or_nan(
    stage_name: str, variant: int, value: float, tmp_path: Path
) -> None:
    """Every float setting of every stage, nested sections included (an area of ``inf``, a
    learning rate of ``inf``, a NaN origin passed their bounds and failed deep in the stage
    or wrote a broken map): refused when the config is read, naming the setting."""
    stage = _stage(stage_name)
    base = _settings(stage, VARIANTS.get(stage_name, [{}])[variant], tmp_path)
    fields = _float_fields(stage.config)
    for dotted in fields:
        data = dict(base)
        pair = dotted.endswith("()")
        dotted = dotted.removesuffix("()")
        given: Any = (value, 0.0) if pair else value
        section, _, leaf = dotted.rpartition(".")
        if section:
            data[section] = {**data.get(section, {}), leaf: given}
        else:
            data[leaf] = given
        with pytest.raises(ConfigError, match="finite number"):
            stage.config.from_dict(data)


@pytest.mark.parametrize(
    ("stage_name", "setting"),
    [
        ("predict", "cpus_per_actor"),
        ("predict", "read_cpus"),
        ("train", "workers.cpus_per_worker"),
        ("train", "workers.gpus_per_worker"),
        ("pretrain", "workers.cpus_per_worker"),
    ],
)
def test_a_share_of_a_cpu_ray_cannot_reserve_is_refused_with_the_config(
    stage_name: str, setting: str, tmp_path: Path
) -> None:
    """Ray reserves CPUs and GPUs in steps of 0.0001; a smaller share failed on a worker
    with Ray's traceback, after the output store was made."""
    stage = _stage(stage_name)
    data = _settings(stage, VARIANTS.get(stage_name, [{}])[0], tmp_path)
    section, _, leaf = setting.rpartition(".")
    if section:
        data[section] = {**data.get(section, {}), leaf: 1e-9}
    else:
        data[leaf] = 1e-9
    with pytest.raises(ConfigError, match="greater than or equal to 0.0001"):
        stage.config.from_dict(data)


def test_a_config_file_that_is_not_text_is_an_error(tmp_path: Path) -> None:
    from w2w.core.config import load_yaml

    bad = tmp_path / "c.yaml"
    bad.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError, match="not a text file in UTF-8"):
        load_yaml(bad)
    with pytest.raises(InputError, match="is a folder"):
        load_yaml(tmp_path)
    twice = tmp_path / "twice.yaml"
    twice.write_text("min_pixels: 4\ninput: m.zarr\nmin_pixels: 8\n")
    with pytest.raises(ConfigError, match=r"'min_pixels' is given twice at line 3") as err:
        load_yaml(twice)
    assert "\n" not in str(err.value)  # one line


# -- bad input: errors, never internal errors --------------------------------------------------


@pytest.mark.parametrize(
    ("rest", "expected"),
    [("error", None), ("unlabelled", [0, 1, 1, 2, 0, 1]), ("keep", [1, 1, 1, 2, 5, 1])],
)
def test_codes_the_label_map_does_not_name_are_an_error_unless_told(
    rest: str, expected: list[int] | None
) -> None:
    from w2w.core.grid import Window
    from w2w.ingest.labels import LabelCodes

    codes = LabelCodes.from_map({2: 1, 3: 1, 6: 1, 4: 2}, None, 0, "labels.tif", rest)
    raw = np.array([[1, 2, 3, 4, 5, 6]], dtype=np.int16)
    if expected is None:
        with pytest.raises(InputError, match=r"codes \[1, 5\] that --label-map does not name"):
            codes.apply(raw, Window(0, 0, 1, 6))
    else:
        assert codes.apply(raw, Window(0, 0, 1, 6)).ravel().tolist() == expected


def test_a_resolution_in_the_wrong_unit_is_refused_before_any_allocation() -> None:
    from w2w.ingest.target import snapped_grid

    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="check --resolution"):
        snapped_grid("EPSG:32613", 0.001, (300_000.0, 3_000_000.0, 800_000.0, 3_500_000.0))
    assert time.perf_counter() - t0 < 5


def test_label_map_rest_reaches_the_ingest_of_a_raster(tmp_path: Path) -> None:
    from w2w.ingest import IngestConfig, ingest

    img = write_tif(tmp_path / "img.tif", np.full((2, 64, 64), 100, dtype=np.uint16))
    lab = np.ones((64, 64), dtype=np.uint8)
    lab[:, 32:] = 5
    write_tif(tmp_path / "lab.tif", lab)
    cfg = {
        "images": [str(img)],
        "label": str(tmp_path / "lab.tif"),
        "label_map": "1=1",
        "output": str(tmp_path / "s.zarr"),
        "engine": "local",
        "chunk": 32,
        "block": 64,
    }
    with pytest.raises(InputError, match=r"codes \[5\]"):
        ingest(IngestConfig.from_dict(cfg), progress=False)
    assert not (tmp_path / "s.zarr").exists()
    done = ingest(IngestConfig.from_dict({**cfg, "label_map_rest": "unlabelled"}), progress=False)
    assert done.class_histogram == {1: 64 * 32}


# -- resources checked before work -------------------------------------------------------------


def test_requests_the_cluster_cannot_meet_are_refused_with_the_numbers(ray_session: None) -> None:
    from w2w.core.resources import Request, require

    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=r"4 inference actors of 1 CPU each do not fit"):
        require(Request("inference actors", 4, 1.0, spare_cpus=0.5))
    with pytest.raises(ConfigError, match="the Ray cluster has no GPU"):
        require(Request("inference actors", 1, 1.0, 1.0))
    with pytest.raises(ConfigError, match="leave less than the 1 CPU"):
        require(Request("training workers", 2, 1.0, spare_cpus=1.0))
    require(Request("inference actors", 1, 1.0, spare_cpus=0.5))
    assert time.perf_counter() - t0 < 60


def test_waiting_for_an_autoscaler_says_so_and_gives_up(
    ray_session: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from w2w.core.resources import Request, require

    monkeypatch.setenv("W2W_WAIT_FOR_NODES", "1")
    logger = logging.getLogger("w2w")
    monkeypatch.setattr(logger, "handlers", [*logger.handlers, caplog.handler])
    monkeypatch.setattr(logger, "level", logging.INFO)
    with pytest.raises(ConfigError, match="after waiting 1 s for new nodes"):
        require(Request("training workers", 1, 1.0, 1.0))
    assert "waiting for the autoscaler" in caplog.text


def test_predict_and_train_refuse_what_the_cluster_cannot_run(
    tiny_run, synthetic_scene: str, tmp_path: Path
) -> None:
    from w2w.predict import PredictConfig, predict
    from w2w.train import train

    bundle = tiny_run[1].bundle
    for bad, message in [({"actors": 4}, "4 inference actors"), ({"use_gpu": True}, "no GPU")]:
        cfg = PredictConfig(scene=synthetic_scene, bundle=bundle, output=str(tmp_path / "m.zarr"))
        with pytest.raises(ConfigError, match=message):
            predict(cfg.replace(**bad), progress=False)
        assert not (tmp_path / "m.zarr").exists() or not os.listdir(tmp_path / "m.zarr")
    cfg = tiny_run[0].replace(
        storage_path=str(tmp_path / "runs"), cache_chips="no", epochs=1
    )  # two 1-CPU workers on 2 CPUs, chips streamed from the store
    with pytest.raises(ConfigError, match="leave one CPU for them"):
        train(cfg, progress=False)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


# -- vector inputs: the storage layer, and bad input that is an error, never internal -----------


def _geojson(path: Path, features: list[tuple[dict[str, Any] | None, dict[str, Any]]]) -> str:
    doc = {
        "type": "FeatureCollection",
        "crs": {"type": "name", "properties": {"name": "EPSG:32613"}},
        "features": [
            {"type": "Feature", "properties": props, "geometry": geom} for geom, props in features
        ],
    }
    path.write_text(json.dumps(doc))
    return str(path)


def _box(x: float, y: float, size: float = 100.0) -> dict[str, Any]:
    ring = [[x, y], [x + size, y], [x + size, y + size], [x, y + size], [x, y]]
    return {"type": "Polygon", "coordinates": [ring]}


def test_a_label_field_of_class_names_is_mapped_through_classes_or_refused(
    tmp_path: Path,
) -> None:
    from w2w.ingest.vectors import read_vector_labels

    path = _geojson(
        tmp_path / "labels.geojson",
        [
            (_box(300000, 3400000), {"cover": "Forest "}),
            (None, {"cover": "water"}),  # no geometry: left out, its value with it
            (_box(300200, 3400000), {"cover": None}),  # no value: unlabelled
            (_box(300400, 3400000), {"cover": "water"}),
        ],
    )
    labels = read_vector_labels(path, "cover", "EPSG:32613", classes={1: "forest", 2: "water"})
    assert len(labels) == 3
    assert labels.values[0] == 1 and np.isnan(labels.values[1]) and labels.values[2] == 2
    with pytest.raises(InputError, match=r"class names \(water\) that --classes does not name"):
        read_vector_labels(path, "cover", "EPSG:32613", classes={1: "forest"})


def test_a_self_intersecting_boundary_is_repaired_not_an_internal_error(tmp_path: Path) -> None:
    from w2w.ingest.vectors import read_aoi

    x, y = 300000, 3400000
    bowtie = {"type": "Polygon", "coordinates": [[[x, y], [x + 100, y + 100], [x + 100, y],
                                                  [x, y + 100], [x, y]]]}  # fmt: skip
    aoi = read_aoi(_geojson(tmp_path / "aoi.geojson", [(bowtie, {})]), "EPSG:32613")
    assert aoi.area() == pytest.approx(5000.0)


def test_vector_reads_on_object_storage_use_the_storage_layers_endpoint(
    s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from w2w.core import storage
    from w2w.ingest.vectors import read_aoi

    local = _geojson(tmp_path / "aoi.geojson", [(_box(300000, 3400000), {})])
    url = f"{s3_bucket}/in/aoi.geojson"
    storage.atomic_put_file(local, url)
    assert read_aoi(url, "EPSG:32613").area() == pytest.approx(10_000.0)
    # A dead endpoint: an error naming the file within the timeout, not a hang.
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("W2W_IO_TIMEOUT", "1")
    monkeypatch.setenv("W2W_IO_RETRIES", "0")
    t0 = time.perf_counter()
    with pytest.raises(InputError, match=r"aoi\.geojson"):
        read_aoi(url, "EPSG:32613")
    assert time.perf_counter() - t0 < 30


# -- verify: every block as its writer wrote it ---------------------------------------------------


def _mosaic(url: Path, grid: Any, seed: int) -> None:
    from w2w.core.classes import ClassInfo
    from w2w.core.store import MosaicStore

    m = MosaicStore.create(
        str(url),
        grid,
        block=64,
        classes=[ClassInfo(1, "a", (0, 0, 0)), ClassInfo(2, "b", (9, 9, 9))],
    )
    rng = np.random.default_rng(seed)
    for w in m.tiling.windows():
        m.write("class", w, rng.integers(1, 3, (w.height, w.width), dtype=np.uint8))
        m.write("confidence", w, rng.integers(100, 255, (w.height, w.width), dtype=np.uint8))
        m.mark_block_done(w, w.size)
    m.mark_complete()


def test_verify_finds_chunks_copied_in_from_another_mosaic_of_the_scene(tmp_path: Path) -> None:
    import shutil

    from affine import Affine
    from rasterio.crs import CRS
    from typer.testing import CliRunner

    from w2w.cli import app
    from w2w.core.grid import Grid

    wkt = CRS.from_epsg(32613).to_wkt()
    grid = Grid(wkt, Affine(10.0, 0.0, 300_000.0, 0.0, -10.0, 3_401_280.0), 128, 128)
    _mosaic(tmp_path / "a.zarr", grid, 1)
    _mosaic(tmp_path / "b.zarr", grid, 2)
    runner = CliRunner()
    ok = runner.invoke(app, ["verify", str(tmp_path / "a.zarr")])
    assert ok.exit_code == 0, ok.output
    chunk = Path("class") / "c" / "1" / "0"
    shutil.copyfile(tmp_path / "b.zarr" / chunk, tmp_path / "a.zarr" / chunk)
    bad = runner.invoke(app, ["verify", str(tmp_path / "a.zarr")])
    assert bad.exit_code != 0
    assert "1 block(s) differ from what their writer wrote" in bad.output
    assert "(row 64, col 0)" in bad.output


def test_predict_does_not_resume_over_a_scene_rewritten_in_place(
    tiny_run, synthetic_scene: str, tmp_path: Path
) -> None:
    import shutil

    from w2w.predict import PredictConfig, predict

    scene = tmp_path / "scene.zarr"
    shutil.copytree(synthetic_scene, scene)
    cfg = PredictConfig(
        scene=str(scene), bundle=tiny_run[1].bundle, output=str(tmp_path / "m.zarr"), block=128
    )
    first = predict(cfg.replace(max_blocks=1), progress=False)
    assert first.blocks_written == 1
    chunks = scene / "image" / "c"
    a, b = sorted(p for p in chunks.rglob("*") if p.is_file())[:2]
    shutil.copyfile(b, a)  # a chunk rewritten in place: the metadata says nothing
    with pytest.raises(InputError, match=r"is not as it was when mosaic .* was started"):
        predict(cfg, progress=False)


# -- STAC and VRT tiles ------------------------------------------------------------------------

TILE_GRID = {
    "crs": "EPSG:32613",
    "resolution": 10.0,
    "bounds": "300000,3499360,300640,3500000",
    "resampling": "nearest",
    "engine": "local",
    "chunk": 32,
    "block": 64,
}


def _item(assets: dict[str, str], datetime: str | None = "2024-06-01T17:00:00Z") -> dict:
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": "t",
        "geometry": None,
        "properties": {"datetime": datetime},
        "links": [],
        "assets": {
            k: {"href": v, "type": "image/tiff; application=geotiff"} for k, v in assets.items()
        },
    }


def test_a_multi_band_stac_asset_gives_every_band(tmp_path: Path) -> None:
    from w2w.core.store import SceneStore
    from w2w.ingest import IngestConfig, ingest

    data = np.arange(3 * 64 * 64, dtype=np.uint16).reshape(3, 64, 64) % 1000 + 1
    write_tif(tmp_path / "rgb.tif", data, nodata=0)
    (tmp_path / "item.json").write_text(json.dumps(_item({"visual": "rgb.tif"})))
    ingest(
        IngestConfig.from_dict(
            {
                "tiles": [str(tmp_path / "item.json")],
                "output": str(tmp_path / "s.zarr"),
                **TILE_GRID,
            }
        ),
        progress=False,
    )
    scene = SceneStore.open(str(tmp_path / "s.zarr"))
    assert scene.info.band_names == ("visual_1", "visual_2", "visual_3")
    np.testing.assert_array_equal(scene.read_image(scene.grid.full_window), data)


def test_stac_items_without_a_date_and_vrts_without_their_sources_are_errors(
    tmp_path: Path,
) -> None:
    from w2w.ingest import IngestConfig, ingest

    write_tif(tmp_path / "a.tif", np.ones((1, 64, 64), dtype=np.uint16), nodata=0)
    (tmp_path / "item.json").write_text(json.dumps(_item({"b": "a.tif"}, datetime=None)))
    out = str(tmp_path / "s.zarr")
    with pytest.raises(InputError, match="is not valid STAC.*needs a datetime"):
        ingest(
            IngestConfig.from_dict(
                {"tiles": [str(tmp_path / "item.json")], "output": out, **TILE_GRID}
            ),
            progress=False,
        )
    vrt = tmp_path / "t.vrt"
    vrt.write_text(
        '<VRTDataset rasterXSize="64" rasterYSize="64"><SRS>EPSG:32613</SRS>'
        "<GeoTransform>300000, 10, 0, 3500000, 0, -10</GeoTransform>"
        '<VRTRasterBand dataType="UInt16" band="1"><SimpleSource>'
        '<SourceFilename relativeToVRT="1">gone.tif</SourceFilename><SourceBand>1</SourceBand>'
        "</SimpleSource></VRTRasterBand></VRTDataset>"
    )
    with pytest.raises(InputError, match=r"reads from .*gone\.tif, which does not exist"):
        ingest(
            IngestConfig.from_dict({"tiles": [str(vrt)], "output": out, **TILE_GRID}),
            progress=False,
        )
    assert not (tmp_path / "s.zarr").exists()


# -- a full disk -------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    """A 2 MiB tmpfs the test mounts (root only; skipped elsewhere), unmounted after."""
    where = tmp_path / "disk"
    where.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if made.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_full_disk_is_an_error_and_leaves_the_old_output(small_disk: Path) -> None:
    from typer.testing import CliRunner

    from w2w.cli import app

    runner = CliRunner()
    out = small_disk / "s.zarr"
    args = ["synth", str(out), "--format", "store", "--engine", "local", "--chunk", "64"]
    first = runner.invoke(app, [*args, "--size", "64", "--block", "64"])
    assert first.exit_code == 0, first.output
    before = _snapshot(small_disk)
    full = runner.invoke(app, [*args, "--size", "1536", "--block", "512", "--overwrite"])
    assert full.exit_code != 0
    assert "error: no space left on the device" in full.output, full.output
    assert "internal error" not in full.output
    assert _snapshot(small_disk) == before  # the old store as it was, no leftovers
    assert sorted(p.name for p in small_disk.iterdir()) == ["s.zarr"]


def test_the_docs_name_only_tests_that_exist() -> None:
    import re

    root = Path(__file__).parents[1]
    text = (root / "docs" / "errors.md").read_text() + (root / "docs" / "design.md").read_text()
    named = set(re.findall(r"(test_[a-z0-9_]+)(?![a-z0-9_]|\.py)", text))
    defined = {
        m
        for p in (root / "tests").glob("test_*.py")
        for m in re.findall(r"def (test_\w+)\(", p.read_text())
    }
    assert len(named & defined) >= 20
    assert not named - defined, f"the docs name tests that do not exist: {sorted(named - defined)}"


# -- every stage on a full disk (slow: one small demo run, then each stage once more) -------------


@pytest.fixture(scope="module")
def demo_root(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of a small demo run that has run (the inputs and outputs of every stage)."""
    from w2w.pipeline import run_pipeline

    root = tmp_path_factory.mktemp("demo")
    run_pipeline(_demo_config(root), progress=False)
    return root


def _demo_config(root: Path) -> Any:
    """The small demo run of the registry matrices, in ``root``."""
    from w2w.pipeline import demo_config

    return demo_config(str(root), size=256, epochs=1, pretrain_epochs=1)


def _demo_configs(root: Path) -> dict[str, Any]:
    from w2w.pipeline import stage_configs

    return stage_configs(_demo_config(root))


@pytest.fixture(scope="module")
def demo_stages(demo_root: Path) -> dict[str, Any]:
    """Every stage's config from the demo run (the inputs each stage reads)."""
    return _demo_configs(demo_root)


def _own_demo(demo_root: Path, stage: Stage, tmp_path: Path) -> Any:
    """``stage``'s config over a copy of the demo run of its own: a test that replaces the
    demo's outputs (a new model, a new mosaic) leaves every other test the demo's outputs as
    they were, whichever of the tests run and in whatever order. The copy keeps the content
    (provenance compares content, not paths)."""
    root = tmp_path / "demo"
    shutil.copytree(demo_root, root, symlinks=True)
    return _demo_configs(root)[stage.name]


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES, ids=[s.name for s in STAGES])
def test_every_stage_on_a_full_disk_says_so_and_damages_nothing(
    stage: Stage, demo_stages: dict[str, Any], small_disk: Path
) -> None:
    import yaml
    from typer.testing import CliRunner

    from w2w.cli import app

    cfg = demo_stages[stage.name]
    moved = {
        name: str(small_disk / Path(getattr(cfg, name)).name)
        for name in stage.config.outputs
        if getattr(cfg, name, None)
    }
    cfg = cfg.replace(**moved)
    # An earlier output of the same name, which must come through whole; then the disk full.
    for t in cfg.output_targets():
        if t.kind == "file":
            Path(t.url).parent.mkdir(parents=True, exist_ok=True)
            Path(t.url).write_bytes(b"an earlier output")
    stat = os.statvfs(small_disk)
    free = stat.f_bavail * stat.f_frsize
    (small_disk / "filler").write_bytes(b"\0" * max(0, free - 16 * 1024))
    before = _snapshot(small_disk, hidden=True)
    settings = small_disk.parent / f"{stage.name}.yaml"
    settings.write_text(yaml.safe_dump(cfg.to_dict()))
    done = CliRunner().invoke(app, ["--quiet", stage.name, "--config", str(settings)])
    assert done.exit_code != 0, done.output
    assert "no space left on the device" in done.output, done.output
    assert "internal error" not in done.output
    after = _snapshot(small_disk, hidden=True)
    assert {k: after.get(k) for k in before} == before  # nothing there before was changed
    # New: only what a stage resumes (a training run: run again, it goes on) and its folders.
    resumable = [t.url for t in cfg.output_targets() if t.resumable]
    extra = [str(small_disk / k) for k in after if k not in before]
    assert all(any(e.startswith(r) or r.startswith(e + "/") for r in resumable) for e in extra), (
        extra
    )


def _targets_snapshot(cfg: Any) -> dict[str, dict[str, bytes]]:
    """What each output of ``cfg`` holds now (visible files; a missing one as empty)."""
    out: dict[str, dict[str, bytes]] = {}
    for t in cfg.output_targets():
        p = Path(t.url)
        if t.kind == "folder":
            continue
        if p.is_dir():
            out[t.url] = _snapshot(p)
        elif p.is_file():
            out[t.url] = {"": p.read_bytes()}
        else:
            out[t.url] = {}
    return out


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES, ids=[s.name for s in STAGES])
def test_ctrl_c_ends_every_stage_within_seconds_and_keeps_the_old_output(
    stage: Stage, demo_root: Path, tmp_path: Path
) -> None:
    import signal

    import yaml

    cfg = _own_demo(demo_root, stage, tmp_path)
    settings = tmp_path / f"{stage.name}.yaml"
    settings.write_text(yaml.safe_dump(cfg.to_dict()))
    before = _targets_snapshot(cfg)
    proc = subprocess.Popen(
        [sys.executable, "-m", "w2w.cli", "--quiet", stage.name, "--config", str(settings)],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(8.0)  # past start-up (imports, Ray), into the stage's work
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError(f"w2w {stage.name} did not end within 30 s of Ctrl-C") from None
    assert time.monotonic() - sent < 30
    print(f"{stage.name}: exit {proc.returncode} {time.monotonic() - sent:.1f} s after Ctrl-C")
    if proc.returncode != 0:  # interrupted (not finished first): the old output as it was
        assert "internal error" not in err, err
        # Said so, with the shell's code for Ctrl-C (Ray Train's own handler once ended
        # training with exit 1 and no word).
        assert proc.returncode == 130 and "interrupted" in err, (proc.returncode, err[-2000:])
        assert _targets_snapshot(cfg) == before


# -- object storage that stalls or is gone, for every stage's inputs and outputs (slow) ---------


@contextlib.contextmanager
def _endpoint(kind: str) -> Iterator[str]:
    """A loopback 'S3 endpoint' that stalls (accepts, never answers) or is gone (a port
    nothing listens on)."""
    if kind == "stalled":
        with stalled_endpoint_at() as url:
            yield url
        return
    yield f"http://127.0.0.1:{free_ports(1)[0]}"


def _on_s3(value: Any) -> Any:
    if isinstance(value, list):
        return [_on_s3(v) for v in value]
    return f"s3://stalled/{Path(value).name}"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["stalled", "gone"])
def test_every_stage_ends_in_seconds_when_object_storage_stalls_or_is_gone(
    kind: str, demo_stages: dict[str, Any], tmp_path: Path
) -> None:
    """Every stage with its inputs on the endpoint (each variant), and with its outputs there
    (its inputs local, from a demo run): one error line within the timeout, never a hang."""
    runs: dict[str, tuple[Stage, dict[str, Any]]] = {}
    for stage in STAGES:
        for i, variant in enumerate(VARIANTS.get(stage.name, [{}])):
            base = _settings(stage, variant, tmp_path / f"{stage.name}{i}")
            reads = {k: _on_s3(v) for k, v in base.items() if k in stage.config.inputs}
            if reads:
                runs[f"{stage.name} {i} reads"] = (stage, {**base, **reads})
        cfg = demo_stages[stage.name]
        writes = {n: _on_s3(getattr(cfg, n)) for n in stage.config.outputs if getattr(cfg, n)}
        runs[f"{stage.name} writes"] = (stage, {**cfg.to_dict(), **writes})
    with _endpoint(kind) as url:
        results = _run_all(runs, url, tmp_path)
    for name, (code, err, seconds) in results.items():
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert code != 0, (name, err)
        assert len(lines) == 1 and lines[0].startswith("error:"), (name, err)
        # Each request waits at most 2 s, tried twice; a command makes a few requests before
        # it knows the storage is unreachable, and the commands share 2 cores.
        assert seconds < 240, (name, seconds, err)


def _run_all(
    runs: dict[str, tuple[Stage, dict[str, Any]]], endpoint: str, tmp_path: Path
) -> dict[str, tuple[int, str, float]]:
    """Run each ``w2w STAGE --config`` at once against ``endpoint``: (exit, stderr, seconds)."""
    import yaml

    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).parents[1]),
        "AWS_ENDPOINT_URL": endpoint,
        "W2W_IO_TIMEOUT": "2",
        "W2W_IO_RETRIES": "1",
    }
    procs = {}
    started = time.monotonic()
    for name, (stage, settings) in runs.items():
        path = tmp_path / f"{name.replace(' ', '-')}.yaml"
        path.write_text(yaml.safe_dump(settings))
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", "w2w.cli", "--quiet", stage.name, "--config", str(path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    results = {}
    try:
        for name, proc in procs.items():
            _, err = proc.communicate(timeout=600)
            results[name] = (proc.returncode, err, time.monotonic() - started)
    finally:
        for proc in procs.values():
            proc.kill()
    return results


def test_a_cluster_with_an_autoscaler_waits_for_nodes_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from w2w.core import resources

    monkeypatch.delenv("W2W_WAIT_FOR_NODES", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resources.wait_for_nodes() == 0  # no autoscaler: refuse at once
    (tmp_path / "ray_bootstrap_config.yaml").write_text("cluster_name: w2w\n")  # as `ray up`
    assert resources.wait_for_nodes() == resources.AUTOSCALER_WAIT_S
    monkeypatch.setenv("W2W_WAIT_FOR_NODES", "0")
    assert resources.wait_for_nodes() == 0


# -- every stage killed at three points of its publish, then run again (slow) ----------------


def _state_of(url: str) -> Any:
    """What a published path holds now: a folder's visible files, a file's bytes, or None."""
    p = Path(url)
    if p.is_dir():
        return _snapshot(p)
    return p.read_bytes() if p.is_file() else None


def _state_in(tree: dict[str, bytes], root: Path, url: str) -> Any:
    """What :func:`_state_of` gave for ``url`` when ``tree`` (a snapshot of ``root``) was taken."""
    rel = os.path.relpath(url, root)
    if rel in tree:
        return tree[rel]
    inside = {k[len(rel) + 1 :]: v for k, v in tree.items() if k.startswith(rel + "/")}
    return inside or None


def _leftovers(cfg: Any) -> list[str]:
    """Staging and set-aside names beside ``cfg``'s outputs (a mosaic's resumable build,
    ``.NAME.w2w-new-*``, is meant to stay)."""
    folders = {Path(t.url).parent for t in cfg.output_targets() if t.kind != "folder"}
    return sorted(
        str(q)
        for f in folders
        if f.is_dir()
        for q in f.iterdir()
        if ".w2w-" in q.name and ".w2w-new-" not in q.name
    )


def _run_stage(stage: Stage, settings: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``w2w STAGE --config SETTINGS`` in its own process group, which is killed after it
    ended (a run killed by SIGKILL leaves its Ray processes behind)."""
    import signal

    proc = subprocess.Popen(
        [sys.executable, "-m", "w2w.cli", "--quiet", stage.name, "--config", str(settings)],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=600)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _kill_points(events: list[list[str]]) -> list[int]:
    """Three points of a traced run to kill it at: the first, the first mid-swap (or the
    middle one) and the last."""
    n = len(events)
    mids = [i + 1 for i, e in enumerate(events) if e[1] == "mid-swap"]
    return sorted({1, mids[0] if mids else (n + 1) // 2, n})


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES, ids=[s.name for s in STAGES])
def test_every_stage_killed_at_three_points_of_its_publish_leaves_the_old_output_or_the_new(
    stage: Stage, demo_root: Path, tmp_path: Path
) -> None:
    """Each stage, re-run over its demo outputs, is traced through the publish protocol
    (:mod:`w2w.core.crashpoints`), then SIGKILLed at three of the points it passed. After
    each kill, what the next run's guard settles must leave every published unit (a store,
    a run, a file set) whole: the old one before its swap began, the new one after it ended,
    one or the other in between, never a mix and no staging leftovers; then the stage is run
    again to the end. Each stage runs over a copy of the demo run of its own."""
    import signal

    import yaml
    from typer.testing import CliRunner

    from w2w.cli import app

    cfg = _own_demo(demo_root, stage, tmp_path).replace(overwrite=True)
    settings = tmp_path / f"{stage.name}.yaml"
    settings.write_text(yaml.safe_dump(cfg.to_dict()))
    trace = tmp_path / "trace"
    done = _run_stage(stage, settings, W2W_CRASH_TRACE=str(trace))
    assert done.returncode == 0, done.stderr
    events = [line.split() for line in trace.read_text().splitlines()]
    assert events, f"{stage.name} published nothing through the publish protocol"
    # The protocol's own records (a journal, ``.NAME.w2w-*``) are not outputs.
    units = list(dict.fromkeys(tuple(e[2:]) for e in events if ".w2w-" not in e[2]))
    # A unit inside another (a run's own files) goes with the outer one when it is rolled back.
    units = [u for u in units if not any(o != u and u[0].startswith(o[0] + "/") for o in units)]
    traced = {url: _state_of(url) for u in units for url in u}
    print(f"{stage.name}: {len(events)} points, killed at {_kill_points(events)}: {events}")
    seen = []
    for n in _kill_points(events):
        before = {url: _state_of(url) for u in units for url in u}
        killed = _run_stage(stage, settings, W2W_CRASH_AT=str(n))
        assert killed.returncode == -signal.SIGKILL, (n, events[n - 1], killed.stderr)
        guard.check_outputs(cfg, settle=True)  # what the next run's guard does first
        assert not _leftovers(cfg), (n, events[n - 1], _leftovers(cfg))
        for t in cfg.output_targets():
            if t.kind == "store" and Path(t.url).exists():
                whole = CliRunner().invoke(app, ["--quiet", "verify", t.url, "--engine", "local"])
                assert whole.exit_code == 0, (n, t.url, whole.output)
        seen.append((n, before, {url: _state_of(url) for url in before}))
    again = _run_stage(stage, settings)
    assert again.returncode == 0, again.stderr
    assert not _leftovers(cfg)
    # Only what differs between two whole runs (what carries its time of making) tells the
    # old from the new; the rest is the same either way.
    stamped = {url for url in traced if traced[url] != _state_of(url)}
    for n, before, after in seen:
        for unit in units:
            steps = [e[1] for e in events[:n] if tuple(e[2:]) == unit]
            changed = [after[url] != before[url] for url in unit if url in stamped]
            where = (stage.name, n, events[n - 1], unit, steps)
            assert all(after[url] is not None or before[url] is None for url in unit), where
            if "after-swap" in steps:
                assert all(changed), where  # the new one, whole
            elif not steps or steps[-1] == "before-swap":
                assert not any(changed), where  # the old one, as it was
            else:  # killed between the renames: rolled back, or a journalled set finished
                assert all(changed) or not any(changed), where


# -- object storage that stalls while a stage publishes (slow) ---------------------------------


def _keys(bucket: str, prefix: str) -> dict[str, str]:
    """Every object under ``prefix`` and its ETag, read from the server directly."""
    import boto3

    from tests.conftest import S3_ENDPOINT

    client = boto3.client("s3", endpoint_url=S3_ENDPOINT)
    out: dict[str, str] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out.update({o["Key"]: o["ETag"] for o in page.get("Contents", [])})
    return out


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES, ids=[s.name for s in STAGES])
def test_every_stage_whose_endpoint_stalls_as_it_publishes_fails_in_time_and_keeps_the_old(
    stage: Stage, demo_stages: dict[str, Any], s3_bucket: str, tmp_path: Path
) -> None:
    """Each stage writes its outputs to the loopback S3 server through a proxy; run again
    with ``--overwrite``, the proxy stalls at the first request that would change a final
    output (a write, a copy or a delete of its keys). The stage must end within its I/O
    timeouts with one error line (a clean-up that failed too may warn before it), leave the
    old output as it was, and a run once the endpoint answers again must finish and leave
    no staging behind."""
    import yaml

    from tests.conftest import S3_ENDPOINT, stalling_proxy

    bucket = s3_bucket.removeprefix("s3://")
    cfg = demo_stages[stage.name]
    moved = {
        n: f"{s3_bucket}/{stage.name}/{Path(getattr(cfg, n)).name}"
        for n in stage.config.outputs
        if getattr(cfg, n, None)
    }
    settings = tmp_path / f"{stage.name}.yaml"
    settings.write_text(yaml.safe_dump({**cfg.to_dict(), **moved, "overwrite": True}))
    try:
        on_s3 = cfg.replace(**moved)
    except ConfigError as exc:  # a stage that cannot write there says so in one line
        pytest.skip(f"{stage.name} does not write to object storage: {exc}")
    targets = [t for t in on_s3.output_targets() if t.kind != "folder"]
    finals = ["/" + t.url.removeprefix("s3://") for t in targets]

    built: list[str] = []

    def publishing(method: str, path: str) -> bool:
        if method not in ("PUT", "POST", "DELETE"):
            return False
        if ".w2w-" in path:
            built.append(path)  # staging, or a run set aside
            return False
        if path.startswith((f"/{bucket}?delete", f"/{bucket}/?delete")):
            return bool(built)  # a bulk delete once something was built: of old outputs
        return any(path == f or path.startswith((f + "/", f + "?")) for f in finals)

    env = {"W2W_IO_TIMEOUT": "2", "W2W_IO_RETRIES": "1"}
    with stalling_proxy(S3_ENDPOINT, publishing) as proxy:
        proxy.release()
        first = _run_stage(stage, settings, AWS_ENDPOINT_URL=proxy.url, **env)
        if first.returncode != 0:  # a stage that cannot write there says so in one line
            lines = [ln for ln in first.stderr.splitlines() if ln.strip()]
            assert len(lines) == 1 and lines[0].startswith("error:"), first.stderr
            pytest.skip(f"{stage.name} does not write to object storage: {lines[0]}")
        old = {k: v for k, v in _keys(bucket, stage.name).items() if ".w2w-" not in k}
        built.clear()
        proxy.when = publishing
        started = time.monotonic()
        stalled = _run_stage(stage, settings, AWS_ENDPOINT_URL=proxy.url, **env)
        seconds = time.monotonic() - started
        assert proxy.stalled.is_set(), (stage.name, proxy.requests[-5:], stalled.stderr)
        # One error line, last; before it at most a warning that a clean-up failed too.
        lines = [ln for ln in stalled.stderr.splitlines() if ln.strip()]
        assert stalled.returncode != 0 and lines[-1].startswith("error:"), stalled.stderr
        assert "internal error" not in stalled.stderr and "Traceback" not in stalled.stderr
        assert seconds < 240, (seconds, lines)
        now = {k: v for k, v in _keys(bucket, stage.name).items() if ".w2w-" not in k}
        assert now == old  # the stalled request never reached the server: nothing changed
        proxy.release()
        again = _run_stage(stage, settings, AWS_ENDPOINT_URL=proxy.url, **env)
    assert again.returncode == 0, again.stderr
    left = [k for k in _keys(bucket, stage.name) if ".w2w-" in k and ".w2w-new-" not in k]
    assert not left, left
