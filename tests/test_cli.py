"""The command line: a synth -> ingest -> info round, one-line errors, exit codes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from w2w.cli import app
from w2w.core.errors import ConfigError
from w2w.ingest.config import parse_class_names, parse_label_map

runner = CliRunner()


def w2w(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["--quiet", *args])
    return result.exit_code, result.stdout, result.stderr


def test_synth_ingest_info(tmp_path: Path, ray_session: None) -> None:
    code, out, err = w2w("synth", str(tmp_path / "syn"), "--size", "97x130", "--seed", "2")
    assert code == 0, err
    assert "image.tif" in out and "labels.tif" in out
    code, out, err = w2w(
        "ingest",
        str(tmp_path / "syn" / "image.tif"),
        "--label",
        str(tmp_path / "syn" / "labels.tif"),
        "-o",
        str(tmp_path / "s.zarr"),
        "--chunk",
        "32",
        "--block",
        "64",
        "--classes",
        "1=forest,2=grassland",
    )
    assert code == 0, err
    assert "valid pixels" in out
    code, out, err = w2w("info", str(tmp_path / "s.zarr"))
    assert code == 0, err
    assert "scene store" in out and "B02" in out and "class 1 forest" in out


def test_errors_are_one_line_with_nonzero_exit(tmp_path: Path) -> None:
    code, _out, err = w2w("ingest", str(tmp_path / "missing.tif"), "-o", str(tmp_path / "o.zarr"))
    assert code == 2
    assert err.strip().startswith("error: image file not found")
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["--debug", "ingest", str(tmp_path / "missing.tif"), "-o", str(tmp_path / "o.zarr")]
    )
    assert result.exit_code != 0
    assert result.exception is not None and "image file not found" in str(result.exception)


def test_yaml_config_with_unknown_key(tmp_path: Path) -> None:
    cfg = tmp_path / "ingest.yaml"
    cfg.write_text("images: [a.tif]\noutput: o.zarr\nchunck: 128\n")
    code, _, err = w2w("ingest", "--config", str(cfg))
    assert code == 2
    assert "unknown key 'chunck'; did you mean 'chunk'" in err


def test_yaml_config_with_options_overriding(tmp_path: Path, ray_session: None) -> None:
    syn = tmp_path / "syn"
    assert w2w("synth", str(syn), "--size", "40")[0] == 0
    cfg = tmp_path / "ingest.yaml"
    cfg.write_text(
        f"ingest:\n  images: [{syn / 'image.tif'}]\n  output: {tmp_path / 'a.zarr'}\n"
        "  chunk: 16\n  block: 32\n"
    )
    code, _out, err = w2w("ingest", "--config", str(cfg), "-o", str(tmp_path / "b.zarr"))
    assert code == 0, err
    assert (tmp_path / "b.zarr").exists() and not (tmp_path / "a.zarr").exists()


def test_label_map_and_class_parsing() -> None:
    assert parse_label_map("-5=0;2,3,6=1") == {-5: 0, 2: 1, 3: 1, 6: 1}
    assert parse_class_names("1=forest, 2=water") == {1: "forest", 2: "water"}
    with pytest.raises(ConfigError, match="has no '='"):
        parse_label_map("2,3")
    with pytest.raises(ConfigError, match="ID=NAME"):
        parse_class_names("forest")


def test_label_map_option_takes_negative_values(tmp_path: Path) -> None:
    code, _, err = w2w(
        "ingest",
        "x.tif",
        "-o",
        str(tmp_path / "o.zarr"),
        "--label",
        "l.tif",
        "--label-map",
        "-5=0;2=1",
    )
    # Paths are made absolute when the settings are validated, so the error names where it
    # looked.
    assert code == 2 and re.search(r"image file not found: \S*/x\.tif", err), err


def test_progress_is_logged_in_tenths_without_a_terminal() -> None:
    import logging

    from w2w.core.progress import progress_bar, set_enabled

    class Collect(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.INFO)
            self.lines: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.lines.append(record.getMessage())

    logger = logging.getLogger("w2w")
    collect, level = Collect(), logger.level
    logger.addHandler(collect)
    logger.setLevel(logging.INFO)
    set_enabled(True)  # earlier tests may have run the CLI with --quiet in this process
    try:
        with progress_bar("predict", total=20) as advance:
            for _ in range(20):
                advance(1)
    finally:
        logger.removeHandler(collect)
        logger.setLevel(level)
    lines = [line for line in collect.lines if line.startswith("predict:")]
    assert len(lines) == 10, lines
    assert lines[0].startswith("predict: 2 of 20 (10%)") and lines[-1].startswith(
        "predict: 20 of 20"
    )


def test_verify_refuses_an_engine_it_does_not_have(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from w2w.cli import app

    done = CliRunner().invoke(app, ["verify", str(tmp_path / "m.zarr"), "--engine", "bogus"])
    assert done.exit_code == 2
    flat = " ".join(done.output.replace("│", " ").split())
    assert "'bogus' is not one of 'auto', 'ray', 'local'" in flat


def test_a_pair_of_numbers_is_given_as_yaml_or_comma_separated(tmp_path: Path) -> None:
    for i, text in enumerate(["300000,3500000", "[300000, 3500000]"]):
        code, out, err = w2w("synth", str(tmp_path / f"s{i}"), "--size", "16", "--origin", text)
        assert code == 0, err
        assert "origin (300000.000000, 3500000.000000)" in out, out
