"""The local cluster's record, and the templates for real clusters (YAML, Ray's schema, bash -n)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from ftl.launcher.cli import main
from tests.conftest import REPO, fails

TEMPLATES = REPO / "cluster" / "templates"
PLANTED = "planted-secret-token-7f3a9c2e51"


# ---- the local cluster's record -------------------------------------------------------------------------


def test_cluster_verbs_without_a_cluster(capsys):
    assert "only --local is supported" in fails(capsys, ["cluster", "start"])
    assert "no local cluster is recorded" in fails(capsys, ["cluster", "stop"])
    assert main(["cluster", "status"]) == 0
    assert capsys.readouterr().out.strip() == "stopped"


def _record(pid: int, create_time: float, tmp_path: Path) -> None:
    from ftl.cluster.state import LocalCluster, write_state

    write_state(
        LocalCluster(
            pid=pid,
            create_time=create_time,
            dashboard_url="http://127.0.0.1:1",
            gcs_address="127.0.0.1:2",
            token_file=str(tmp_path / "token"),
            storage=str(tmp_path / "storage"),
            temp_dir=str(tmp_path / "ray-temp"),
            log_file=str(tmp_path / "log"),
        )
    )


def test_a_second_local_cluster_is_refused(capsys, tmp_path):
    import psutil

    me = psutil.Process()
    _record(me.pid, me.create_time(), tmp_path)  # a live process stands in for a running head
    message = fails(capsys, ["cluster", "start", "--local"])
    assert "already running at http://127.0.0.1:1" in message and "ftl cluster stop" in message


def test_a_recycled_pid_is_not_the_cluster(capsys, tmp_path):
    import psutil

    from ftl.cluster.state import state_path

    me = psutil.Process()
    _record(me.pid, me.create_time() - 1000.0, tmp_path)  # same pid, another process's creation time
    message = fails(capsys, ["cluster", "stop"])
    assert "is not running" in message and "record is removed" in message
    assert not state_path().exists()
    assert me.is_running()


# ---- templates ------------------------------------------------------------------------------------------


def _launcher_templates() -> list[Path]:
    return [TEMPLATES / "aws" / "ftl-gpu.yaml", TEMPLATES / "gcp" / "ftl-gpu.yaml"]


@pytest.mark.parametrize("path", _launcher_templates(), ids=lambda p: p.parent.name)
def test_ray_launcher_templates_follow_rays_schema(path):
    import jsonschema
    import ray.autoscaler

    config = yaml.safe_load(path.read_text())
    schema_file = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    jsonschema.validate(config, json.loads(schema_file.read_text()))
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type", "setup_commands"):
        assert key in config, key
    assert config["provider"]["type"] == path.parent.name
    assert config["head_node_type"] in config["available_node_types"]
    head_start = " ".join(config["head_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in head_start and "--dashboard-host=127.0.0.1" in head_start
    assert "RAY_AUTH_MODE=token" in " ".join(config["worker_start_ray_commands"])
    assert any("ftl" in command for command in config["setup_commands"])
    workers = [t for name, t in config["available_node_types"].items() if name != config["head_node_type"]]
    if path.parent.name == "aws":
        types = {t["node_config"]["InstanceType"] for t in workers}
        assert any(t.startswith("g5.") for t in types) and any(t.startswith("p4d.") for t in types)
    else:
        accelerators = {a["acceleratorType"] for t in workers for a in t["node_config"]["guestAccelerators"]}
        assert accelerators == {"nvidia-tesla-t4", "nvidia-tesla-a100"}
        assert all(t["node_config"]["scheduling"][0]["onHostMaintenance"] == "TERMINATE" for t in workers)


def _pod_specs(spec: dict) -> list[dict]:
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [group["template"]["spec"] for group in groups]


def test_kuberay_manifests():
    cluster = yaml.safe_load((TEMPLATES / "kuberay" / "raycluster.yaml").read_text())
    job = yaml.safe_load((TEMPLATES / "kuberay" / "rayjob.yaml").read_text())
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert job["spec"]["entrypoint"].startswith(("ftl run ", "ftl tune "))
    assert "--address auto" in job["spec"]["entrypoint"]
    for spec in (cluster["spec"], job["spec"]["rayClusterSpec"]):
        assert spec["headGroupSpec"]["serviceType"] == "ClusterIP"  # the dashboard is never exposed
        for pod in _pod_specs(spec):
            env = {e["name"]: e for e in pod["containers"][0]["env"]}
            assert env["RAY_AUTH_MODE"]["value"] == "token"
            assert "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"]  # the token comes from a Secret
        for group in spec["workerGroupSpecs"]:
            limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
            assert int(limits["nvidia.com/gpu"]) >= 1
    submitter_env = {e["name"] for e in job["spec"]["submitterPodTemplate"]["spec"]["containers"][0]["env"]}
    assert {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"} <= submitter_env
    dockerfile = (TEMPLATES / "kuberay" / "Dockerfile").read_text()
    for line in re.findall(r"^COPY (.+)$", dockerfile, flags=re.M):
        sources = [part for part in line.split()[:-1] if not part.startswith("--")]
        assert sources and all((REPO / source).exists() for source in sources), line


def test_slurm_script_parses_and_runs_ftl():
    script = TEMPLATES / "slurm" / "ftl-ray.sbatch"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert re.search(r"^#SBATCH --gpus-per-node=\d+", text, flags=re.M)
    assert "ray start --head --block" in text and "srun" in text
    assert "RAY_AUTH_MODE=token" in text and "--dashboard-host=127.0.0.1" in text
    assert "ftl submit" in text and "--follow" in text


@pytest.mark.parametrize("folder", ["aws", "gcp", "kuberay", "slurm"])
def test_every_template_has_a_readme(folder):
    readme = (TEMPLATES / folder / "README.md").read_text()
    assert "ftl" in readme and "```" in readme
