"""The cluster image (docker/Dockerfile): its pinned requirements cover pyproject.toml, its
Ray base image matches the Ray pin, cluster.yaml runs it, and (slow, needs the package
index) pip resolves its dependency layer exactly as pinned, torch built for the base's CUDA.
Docker itself is not needed: the image is not built here."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "docker" / "Dockerfile"
REQUIREMENTS = REPO / "docker" / "requirements.txt"
BASE = re.compile(r"rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-py(?P<py>3)(?P<minor>\d+)-cu(?P<cu>\d+)")


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _pins() -> dict[str, Requirement]:
    pins = {}
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            req = Requirement(line)
            assert canonicalize_name(req.name) not in pins, f"{req.name} pinned twice"
            pins[canonicalize_name(req.name)] = req
    return pins


def _pinned_version(req: Requirement) -> Version:
    specs = list(req.specifier)
    assert len(specs) == 1 and specs[0].operator == "==", f"{req} is not pinned with =="
    assert not req.marker and not req.url, f"{req}: one platform, from the index"
    return Version(specs[0].version)


def _base_image() -> re.Match[str]:
    text = DOCKERFILE.read_text()
    arg = re.search(r"^ARG RAY_IMAGE=(\S+)$", text, re.MULTILINE)
    assert arg and re.search(r"^FROM \$\{RAY_IMAGE\}$", text, re.MULTILINE)
    match = BASE.fullmatch(arg.group(1))
    assert match, f"base image {arg.group(1)} is not a rayproject/ray:X.Y.Z-pyNN-cuNNN tag"
    return match


def _requirements_install_line() -> str:
    runs = re.findall(r"^RUN (.*?)(?<!\\)$", DOCKERFILE.read_text(), re.MULTILINE | re.DOTALL)
    lines = [r for r in runs if "-r /tmp/w2w-requirements.txt" in r]
    assert len(lines) == 1, "one RUN installs docker/requirements.txt"
    return lines[0]


def test_requirements_pin_every_runtime_dependency_of_pyproject() -> None:
    pins = _pins()
    for dep in map(Requirement, _project()["dependencies"]):
        name = canonicalize_name(dep.name)
        assert name in pins, f"docker/requirements.txt lacks {dep.name}: run docker/lock.py"
        version = _pinned_version(pins[name])
        assert dep.specifier.contains(version, prereleases=True), f"{pins[name]} vs {dep}"
        assert dep.extras <= pins[name].extras, f"{pins[name]} lacks extras of {dep}"
    for req in pins.values():
        _pinned_version(req)  # transitive dependencies are pinned too


def test_base_image_is_the_pinned_ray_on_the_projects_python() -> None:
    base = _base_image()
    ray = next(d for d in map(Requirement, _project()["dependencies"]) if d.name == "ray")
    assert Version(base["ray"]) == _pinned_version(_pins()["ray"])
    assert ray.specifier.contains(base["ray"]), f"base Ray {base['ray']} vs pyproject's {ray}"
    python = f"{base['py']}.{base['minor']}"
    assert Requirement(f"python{_project()['requires-python']}").specifier.contains(python)
    # The dependency layer comes from the pinned file alone; w2w on top adds nothing.
    install = _requirements_install_line()
    assert "--index-url" in install
    assert re.search(r"pip install [^\n]*--no-deps[^\n]*/tmp/w2w-src", DOCKERFILE.read_text())
    # The build context keeps only what the Dockerfile copies.
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    star = ignore.index("*")  # everything out, then back in what is copied
    assert all(i > star for i, line in enumerate(ignore) if line.startswith("!"))
    for copy in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", DOCKERFILE.read_text(), re.MULTILINE):
        for source in copy.split():
            assert f"!{source}" in ignore, f".dockerignore leaves {source} out of the context"


def test_cluster_runs_the_image_of_this_version() -> None:
    raw = yaml.safe_load((REPO / "cluster.yaml").read_text())
    assert raw["docker"]["image"].endswith(f"/w2w:{_project()['version']}")
    setup = " ".join(raw["setup_commands"])
    assert "--no-deps" in setup, "nodes install no dependencies at boot: the image has them"
    assert "docker login" in " ".join(raw["initialization_commands"])


def _index_options(install: str) -> list[str]:
    return re.findall(r"--(?:extra-)?index-url\s+\S+", install)


def _reachable(url: str) -> str | None:
    """None when the index answers, else why not."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/pip/", timeout=15):
            return None
    except (urllib.error.URLError, OSError) as e:
        return f"{url} cannot be reached ({e})"


@pytest.mark.slow
def test_the_dependency_layer_resolves_as_pinned(tmp_path: Path) -> None:
    """pip resolves docker/requirements.txt with the Dockerfile's index options, as docker
    build would (no local pip configuration), to exactly the pinned set: ray, torch and
    every runtime dependency among them; torch is built for the base image's CUDA."""
    options = [o for opt in _index_options(_requirements_install_line()) for o in opt.split()]
    for url in options[1::2]:
        why = _reachable(url)
        if why:
            pytest.skip(f"the package index is needed to resolve the image's layer: {why}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k == "PIP_CERT"}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
    cmd += ["--report", str(report), *options, "-r", str(REQUIREMENTS)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    resolved = {
        canonicalize_name(i["metadata"]["name"]): i["metadata"]
        for i in json.loads(report.read_text())["install"]
    }
    pins = _pins()
    assert {n: Version(m["version"]) for n, m in resolved.items()} == {
        n: _pinned_version(r) for n, r in pins.items()
    }
    runtime = {canonicalize_name(Requirement(d).name) for d in _project()["dependencies"]}
    assert {"ray", "torch"} | runtime <= set(resolved)
    cuda = [
        Requirement(r)
        for r in resolved["torch"].get("requires_dist", [])
        if canonicalize_name(Requirement(r).name) == "cuda-toolkit"
    ]
    assert cuda, "the resolved torch is not a CUDA build"
    major, minor = Version(next(iter(cuda[0].specifier)).version).release[:2]
    assert f"{major}{minor}" == _base_image()["cu"], f"torch needs CUDA {major}.{minor}"
