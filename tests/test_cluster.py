"""Cluster operation: cluster.yaml checked by Ray's own validation; jobs submitted with
``ray job submit --working-dir .`` to a real Ray head started with ``ray start --head``."""

from __future__ import annotations

import copy
import os
import secrets
import signal
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import rasterio
import yaml
from rio_cogeo.cogeo import cog_validate
from typer.testing import CliRunner

from tests.conftest import free_ports
from w2w.cli import app
from w2w.jobs import command_line

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "jobs" / "configs" / "tiny-local.yaml"


# -- cluster.yaml -----------------------------------------------------------------------------


def _cluster_config() -> dict[str, Any]:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_cluster_yaml_passes_rays_validation() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = _cluster_config()
    validate_config(prepare_config(copy.deepcopy(raw)))

    nodes = raw["available_node_types"]
    head = nodes[raw["head_node_type"]]
    assert head["resources"] == {"CPU": 0}, "no work may land on the head"
    types = {n["node_config"]["InstanceType"] for n in nodes.values()}
    assert {"g5.xlarge", "g5.12xlarge"} <= types
    cpu_workers = [
        n
        for n in nodes.values()
        if n is not head and not n["node_config"]["InstanceType"].startswith("g")
    ]
    assert cpu_workers, "a CPU worker type for ingest and export"
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert f"assert v == '{version}'" in " ".join(raw["setup_commands"]), "w2w pinned"
    # The w2w image of this version (docker/Dockerfile; tests/test_image.py checks its base).
    assert raw["docker"]["image"].endswith(f"/w2w:{version}")
    for node in nodes.values():
        assert "IamInstanceProfile" in node["node_config"], "S3 access comes from a role"
    text = (REPO / "cluster.yaml").read_text()
    assert "aws_secret_access_key" not in text.lower() and "AKIA" not in text
    # The dashboard (and job API) listens on the head's loopback only: reach it through
    # `ray dashboard cluster.yaml`, an SSH tunnel.
    start = " ".join(raw["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start
    # Every node keeps idle worker processes as long as w2w's local Ray does.
    from w2w.core.runtime import IDLE_WORKER_KEEP_MS

    keep = f"RAY_idle_worker_killing_time_threshold_ms={IDLE_WORKER_KEEP_MS}"
    for kind in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert keep in " ".join(raw[kind]), kind
    ingress = raw["provider"]["security_group"]["IpPermissions"]
    assert [p["FromPort"] for p in ingress] == [22], "only SSH is open"


def test_rays_validation_rejects_an_unknown_field() -> None:
    """The check above has teeth: a misspelt field fails Ray's own schema."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = _cluster_config()
    raw["available_node_types"]["gpu_1x"]["min_worker"] = 1
    with pytest.raises(jsonschema.ValidationError, match="min_worker"):
        validate_config(prepare_config(raw))


# -- jobs on a real Ray head ------------------------------------------------------------------


def test_job_command_lines() -> None:
    assert command_line("train", ["--config", "c.yaml"]) == [
        "pipeline",
        "c.yaml",
        "--stage",
        "train",
    ]
    assert command_line(None, ["-c", "c.yaml", "--stage", "predict", "--quiet"]) == [
        "--quiet",
        "pipeline",
        "c.yaml",
        "--stage",
        "predict",
    ]


class RayHead:
    """A Ray head on this machine, started with ``ray start --head --block``."""

    def __init__(self, temp_dir: Path) -> None:
        self.token = secrets.token_hex(16)
        free = iter(free_ports(9))
        self.dashboard = next(free)
        bin_dir = str(Path(sys.executable).parent)
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")},
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self.token,
            "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{self.dashboard}",
            "RAY_DATA_LOG_LEVEL": "WARNING",
        }
        ports = {
            "--port": next(free),
            "--dashboard-port": self.dashboard,
            "--ray-client-server-port": next(free),
            "--dashboard-agent-listen-port": next(free),
            "--dashboard-agent-grpc-port": next(free),
            "--runtime-env-agent-port": next(free),
            "--metrics-export-port": next(free),
            "--node-manager-port": next(free),
            "--object-manager-port": next(free),
        }
        cmd = [
            str(Path(bin_dir) / "ray"),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1",
            "--include-dashboard=true",
            "--num-cpus=2",
            "--object-store-memory=400000000",
            "--disable-usage-stats",
            f"--temp-dir={temp_dir}",
            *(f"{k}={v}" for k, v in ports.items()),
        ]
        self.log = open(temp_dir.parent / "ray-head.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            self._wait_ready(timeout=120)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        url = f"http://127.0.0.1:{self.dashboard}/api/version"
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(url, timeout=2):
                    return
            except urllib.error.HTTPError:
                return  # it answers (401 without the token): up
            except OSError:
                time.sleep(1)
        raise RuntimeError("the Ray head's job API did not come up")

    def submit(self, *args: str, submission_id: str, timeout: float = 600) -> int:
        """``ray job submit --working-dir . -- python ARGS``; waits, returns its exit code."""
        cmd = [
            "ray",
            "job",
            "submit",
            "--submission-id",
            submission_id,
            "--working-dir",
            ".",
            "--",
            "python",
            *args,
        ]
        done = subprocess.run(
            cmd, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        return done.returncode

    def ray_job(self, *args: str) -> str:
        """Output of ``ray job ARGS`` (e.g. ``status ID``, ``logs ID``) against this head."""
        done = subprocess.run(
            ["ray", "job", *args], env=self.env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def stop(self) -> None:
        # `ray start --block` may outlive a SIGTERM by minutes; its whole group goes after 10 s.
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(timeout=wait)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        self.log.close()


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayHead]:
    """A real Ray head on 127.0.0.1 with the job API, stopped (all its processes) after."""
    head = RayHead(tmp_path_factory.mktemp("rayhead") / "r")
    try:
        yield head
    finally:
        head.stop()


def _tiny_config(tmp_path: Path, **changes: Any) -> Path:
    cfg = yaml.safe_load(TINY.read_text())
    cfg["workdir"] = str(tmp_path / "work")
    for section, values in changes.items():
        if values is None:
            cfg.pop(section, None)
        elif isinstance(values, dict):
            cfg[section] = {**(cfg.get(section) or {}), **values}
        else:
            cfg[section] = values
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _cli_error(config: Path, *stages: str) -> str:
    """The one-line error the CLI prints for the same config and stages."""
    args = ["pipeline", str(config), *(a for s in stages for a in ("--stage", s))]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.mark.parametrize(
    ("job", "changes", "expected"),
    [
        ("pipeline", {"train": {"epochz": 3}}, "unknown key 'epochz'; did you mean 'epochs'?"),
        (
            "ingest",
            {"synth": None, "ingest": {"images": ["/no/such/image.tif"], "label": None}},
            "image file not found: /no/such/image.tif",
        ),
    ],
    ids=["bad-config", "missing-input"],
)
def test_a_failing_job_ends_failed_with_the_clis_message(
    ray_head: RayHead, tmp_path: Path, job: str, changes: dict[str, Any], expected: str
) -> None:
    config = _tiny_config(tmp_path, **changes)
    message = _cli_error(config, *([] if job == "pipeline" else [job]))
    assert expected in message
    sid = f"w2w-fail-{job}-{secrets.token_hex(3)}"
    code = ray_head.submit(f"jobs/{job}.py", "--config", str(config), submission_id=sid)
    assert code != 0
    status = ray_head.ray_job("status", sid)
    assert f"Job '{sid}' failed" in status, status
    assert message in status, status  # the status message carries the error line
    logs = ray_head.ray_job("logs", sid)
    assert message in logs, logs[-2000:]
    assert "Traceback" not in logs
    assert not (tmp_path / "work" / "scene.zarr").exists(), "nothing was written"


@pytest.mark.slow
def test_pipeline_job_runs_every_stage_on_the_cluster(ray_head: RayHead, tmp_path: Path) -> None:
    config = _tiny_config(tmp_path)
    sid = f"w2w-pipeline-{secrets.token_hex(3)}"
    code = ray_head.submit("jobs/pipeline.py", "--config", str(config), submission_id=sid)
    logs = ray_head.ray_job("logs", sid)
    assert code == 0, logs[-3000:]
    assert f"Job '{sid}' succeeded" in ray_head.ray_job("status", sid)
    cog = tmp_path / "work" / "landcover.tif"
    assert f"COG: {cog}" in logs
    valid, errors, _ = cog_validate(str(cog))
    assert valid, errors
    with (
        rasterio.open(cog) as out,
        rasterio.open(tmp_path / "work" / "synthetic" / "image.tif") as src,
    ):
        assert out.crs == src.crs and out.transform == src.transform and out.shape == src.shape
        assert out.overviews(1) or max(out.shape) <= 512
    assert "test split: mIoU" in logs


@pytest.mark.parametrize("name", ["tiny-local.yaml", "chihuahua-g5.yaml"])
def test_example_job_configs_are_valid(name: str) -> None:
    from w2w.pipeline import PipelineConfig, stage_configs

    cfg = PipelineConfig.load(str(REPO / "jobs" / "configs" / name))
    configs = stage_configs(cfg)
    assert {"ingest", "train", "predict", "sieve", "export", "evaluate"} <= set(configs)
    if name.startswith("chihuahua"):
        assert all(
            getattr(c, field).startswith("s3://")
            for c in configs.values()
            for field in ("output", "scene", "bundle", "input", "mosaic", "storage_path")
            if isinstance(getattr(c, field, None), str)
        )
        assert configs["train"].workers.use_gpu and configs["predict"].use_gpu  # type: ignore[attr-defined]
