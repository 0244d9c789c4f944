"""Cluster operations without a cluster: addresses, the auth rule, redaction, the job's files, storage, the job's
own entry point, the local cluster's record, and the templates (YAML, Ray's schema, bash -n)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from ftl.cluster.address import is_loopback, parse_address, resolve_address
from ftl.cluster.auth import Token, check_safe, redact, resolve_token
from ftl.cluster.client import Connection
from ftl.cluster.entry import JOB_RECORD, entry_command
from ftl.cluster.package import FILES, RECIPE_FILE, stage
from ftl.cluster.storage import check_storage, copy_tree, exists, resolve_storage
from ftl.cluster.submit import job_env, new_job_id
from ftl.launcher.cli import main
from ftl.launcher.errors import FtlError
from ftl.launcher.recipe import load_recipe
from tests.conftest import REPO, edit_recipe, fails, minilm_dir, sentiment_rows, write_tsv

TEMPLATES = REPO / "cluster" / "templates"
PLANTED = "planted-secret-token-7f3a9c2e51"


@pytest.fixture(autouse=True)
def _no_cluster_settings(tmp_path, monkeypatch):
    """No token, address or storage from the machine; a private state dir and home (no ~/.ray/auth_token)."""
    for name in (
        "RAY_AUTH_TOKEN",
        "RAY_AUTH_TOKEN_PATH",
        "RAY_ADDRESS",
        "RAY_API_SERVER_ADDRESS",
        "FTL_RAY_ADDRESS",
        "FTL_STORAGE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FTL_CLUSTER_DIR", str(tmp_path / "cluster-state"))
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def free_port() -> int:
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


# ---- addresses ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "url"),
    [
        ("http://head:8265", "http://head:8265"),
        ("http://head:8265/", "http://head:8265"),
        ("head:9000", "http://head:9000"),
        ("head", "http://head:8265"),
        ("ray://head:10001", "http://head:8265"),
        ("https://ray.example.org", "https://ray.example.org:443"),
        ("https://ray.example.org:8443", "https://ray.example.org:8443"),
        ("http://[::1]:8265", "http://[::1]:8265"),
        ("127.0.0.1:8265", "http://127.0.0.1:8265"),
    ],
)
def test_address_forms_become_the_dashboard_url(raw, url):
    assert parse_address(raw).url == url


def test_address_credentials_are_kept_out_of_the_url():
    address = parse_address("http://alice:s3cret-pass@head:8265")
    assert address.url == "http://head:8265" and address.password == "s3cret-pass"
    assert "s3cret" not in str(address)


@pytest.mark.parametrize("raw", ["ftp://head:21", "", "http://:8265", "http://head:99999"])
def test_bad_addresses_are_one_line_errors(raw):
    with pytest.raises(FtlError, match="--address"):
        parse_address(raw)


def test_default_address_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("FTL_RAY_ADDRESS", "head-a:8265")
    assert resolve_address(None).url == "http://head-a:8265"
    monkeypatch.delenv("FTL_RAY_ADDRESS")
    monkeypatch.setenv("RAY_ADDRESS", "http://head-b:8265")
    assert resolve_address(None).url == "http://head-b:8265"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # a GCS address for ray.init, not a dashboard
    with pytest.raises(FtlError, match="no cluster given.*ftl cluster start --local"):
        resolve_address(None)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("127.0.0.1", True),
        ("127.3.4.5", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("10.0.0.1", False),
        ("head", False),
        ("localhost.example.org", False),
    ],
)
def test_loopback_detection(host, loopback):
    assert is_loopback(host) is loopback


# ---- auth -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "token", "insecure", "refused"),
    [
        ("http://127.0.0.1:8265", None, False, False),
        ("http://localhost:8265", None, False, False),
        ("http://gpu-head:8265", None, False, True),
        ("http://gpu-head:8265", Token("t" * 32, "test"), False, False),
        ("https://gpu-head:8265", None, False, False),
        ("http://gpu-head:8265", None, True, False),
        ("http://user:pw12@gpu-head:8265", None, False, False),  # basic auth through a proxy
    ],
)
def test_open_remote_clusters_are_refused_unless_insecure(raw, token, insecure, refused):
    address = parse_address(raw)
    if refused:
        with pytest.raises(FtlError, match="run code on the cluster.*--insecure"):
            check_safe(address, token, insecure=insecure)
    else:
        check_safe(address, token, insecure=insecure)


def test_submit_refuses_an_open_remote_cluster_before_any_network(capsys, classification_recipe):
    default = Path(os.environ["HOME"]) / ".ray" / "auth_token"
    default.parent.mkdir()
    default.write_text("a-local-ray-token-that-means-nothing-remotely")
    message = fails(
        capsys, ["submit", str(classification_recipe), "--address", "http://gpu-head.invalid:8265"]
    )
    assert "refusing" in message and "run code" in message and "--insecure" in message


def test_recipe_and_space_errors_come_before_any_network(capsys, classification_recipe):
    port = free_port()  # nothing listens: a message about the cluster would mean ftl went there first
    message = fails(
        capsys,
        ["submit", str(classification_recipe), "train.lerning_rate=1", "--address", f"127.0.0.1:{port}"],
    )
    assert "lerning_rate" in message
    bad_space = "tune={space: {train.batch_size: [16, many]}}"
    message = fails(
        capsys, ["submit", str(classification_recipe), bad_space, "--tune", "--address", f"127.0.0.1:{port}"]
    )
    assert "train.batch_size" in message and "cannot reach" not in message
    message = fails(
        capsys, ["submit", str(classification_recipe), "--tune", "--address", f"127.0.0.1:{port}"]
    )
    assert "no tune.space" in message


def test_nothing_listening_fails_in_seconds(capsys, classification_recipe):
    port = free_port()
    started = time.monotonic()
    message = fails(capsys, ["submit", str(classification_recipe), "--address", f"http://127.0.0.1:{port}"])
    assert time.monotonic() - started < 15
    assert "cannot reach the Ray dashboard" in message and str(port) in message
    message = fails(capsys, ["jobs", "--address", f"127.0.0.1:{port}"])
    assert "cannot reach" in message


def test_token_sources_in_order(tmp_path, monkeypatch):
    address = parse_address("http://gpu-head:8265")
    assert resolve_token(address) is None
    default = Path(os.environ["HOME"]) / ".ray" / "auth_token"
    default.parent.mkdir()
    default.write_text("from-default-file\n")
    assert resolve_token(parse_address("http://127.0.0.1:8265")).value == "from-default-file"
    assert resolve_token(address) is None  # Ray's local default token is never sent to a remote cluster
    path_file = tmp_path / "path-token"
    path_file.write_text("from-path-env")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(path_file))
    assert resolve_token(address).value == "from-path-env"
    assert "from-default-file" not in repr(resolve_token(address))
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert resolve_token(address).value == "from-env"
    flag = tmp_path / "flag-token"
    flag.write_text("from-flag\n")
    token = resolve_token(address, flag)
    assert token.value == "from-flag" and "--token-file" in token.source
    assert "from-flag" not in repr(token)
    with pytest.raises(FtlError, match="--token-file .*not found"):
        resolve_token(address, tmp_path / "missing")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(FtlError, match="empty"):
        resolve_token(address, tmp_path / "empty")


def test_redaction_and_auth_errors_never_show_the_token():
    from ray.exceptions import AuthenticationError

    assert redact(f"bad header Bearer {PLANTED} sent", PLANTED) == "bad header Bearer *** sent"
    address = parse_address("http://127.0.0.1:8265")
    rejected = Connection(address, Token(PLANTED, "$RAY_AUTH_TOKEN"), None).translate(
        AuthenticationError(f"Authentication failed: Forbidden: Invalid authentication token {PLANTED}")
    )
    assert "auth" in str(rejected) and "rejected the token from $RAY_AUTH_TOKEN" in str(rejected)
    assert PLANTED not in str(rejected)
    missing = Connection(address, None, None).translate(
        AuthenticationError("Authentication required: Unauthorized: Missing authentication token")
    )
    assert "requires a token" in str(missing) and "--token-file" in str(missing)


# ---- the job's files ------------------------------------------------------------------------------------


def test_staged_recipe_is_portable_with_overrides_applied(tmp_path, classification_recipe):
    loaded = load_recipe(classification_recipe, ["train.lr=3e-3", "data.max_train_rows=100"])
    staged = stage(loaded, tmp_path / "job")
    text = staged.recipe_file.read_text()
    data = yaml.safe_load(text)
    assert data["train"]["lr"] == 3e-3 and data["data"]["max_train_rows"] == 100
    assert data["data"]["train"]["path"] == f"./{FILES}/data-train/train.tsv"
    assert (staged.root / FILES / "data-train" / "train.tsv").read_bytes() == (
        tmp_path / "train.tsv"
    ).read_bytes()
    tokenizer = staged.root / data["model"]["tokenizer"]
    assert (tokenizer / "tokenizer.json").is_file() and (tokenizer / "vocab.txt").is_file()
    assert not list(tokenizer.rglob("*.safetensors"))  # a tokenizer ships without the model's weights
    assert str(tmp_path) not in text and minilm_dir() not in text
    assert staged.sha256 == hashlib.sha256(staged.recipe_file.read_bytes()).hexdigest()
    assert staged.recipe.recipe.train.lr == 3e-3
    assert staged.size < 5 * 2**20


def test_staging_resolves_extends_and_copies_globs_and_folders(tmp_path, classification_recipe):
    parts = tmp_path / "parts"
    parts.mkdir()
    write_tsv(parts / "a.tsv", sentiment_rows(30, seed=2))
    write_tsv(parts / "b.tsv", sentiment_rows(30, seed=3))
    (parts / "notes.md.bak").write_text("not data")
    held_out = tmp_path / "held-out"
    held_out.mkdir()
    write_tsv(held_out / "val.tsv", sentiment_rows(20, seed=4))
    (held_out / "__pycache__").mkdir()
    (held_out / "__pycache__" / "x.pyc").write_bytes(b"\0")
    base = tmp_path / "base.yaml"
    base.write_text(classification_recipe.read_text())
    child = tmp_path / "child.yaml"
    child.write_text(
        "extends: base.yaml\nname: child\ndata: {train: {path: 'parts/*.tsv'}, validation: {path: held-out}}\n"
    )
    staged = stage(load_recipe(child), tmp_path / "job")
    data = yaml.safe_load(staged.recipe_file.read_text())
    assert "extends" not in data and data["name"] == "child" and data["train"]["epochs"] == 4
    assert data["data"]["train"]["path"] == f"./{FILES}/data-train/*.tsv"
    assert sorted(p.name for p in (staged.root / FILES / "data-train").iterdir()) == ["a.tsv", "b.tsv"]
    assert (staged.root / data["data"]["validation"]["path"] / "val.tsv").is_file()
    assert not (staged.root / data["data"]["validation"]["path"] / "__pycache__").exists()


def test_staging_a_local_model_and_what_stays_for_the_cluster(tmp_path, classification_recipe):
    model_dir = tmp_path / "models" / "tiny"
    model_dir.mkdir(parents=True)
    (model_dir / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (model_dir / "model.safetensors").write_bytes(b"\0" * 1000)
    edit_recipe(
        classification_recipe,
        model={
            "config": None,
            "local_copies": ["package:not_installed_model_pkg", "/nowhere/on/this/machine", "models/tiny"],
            "name_or_path": "org/hub-model",
            "tokenizer": "models/tiny",
        },
        data={"validation": {"path": "missing/val.tsv", "hub": "org/dataset"}},
    )
    staged = stage(load_recipe(classification_recipe), tmp_path / "job")
    model = yaml.safe_load(staged.recipe_file.read_text())["model"]
    assert model["local_copies"] == [
        "package:not_installed_model_pkg",
        "/nowhere/on/this/machine",
        f"./{FILES}/model/tiny",
    ]
    assert model["name_or_path"] == "org/hub-model"
    assert model["tokenizer"] == f"./{FILES}/model/tiny"  # the same folder ships once, weights included
    assert (staged.root / FILES / "model" / "tiny" / "model.safetensors").is_file()
    notes = " | ".join(staged.notes)
    assert "package must be installed on the cluster" in notes
    assert "/nowhere/on/this/machine" in notes and "missing/val.tsv" in notes


def test_staging_local_choices_of_the_search_space(tmp_path, classification_recipe):
    import shutil

    other = tmp_path / "other-tokenizer"
    other.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "config.json"):
        shutil.copy(Path(minilm_dir()) / name, other / name)
    space = {"model.tokenizer": [minilm_dir(), "other-tokenizer", "org/hub-tokenizer"]}
    edit_recipe(classification_recipe, tune={"space": space})
    staged = stage(load_recipe(classification_recipe), tmp_path / "job")
    data = yaml.safe_load(staged.recipe_file.read_text())
    choices = data["tune"]["space"]["model.tokenizer"]["choice"]
    assert choices[0] == data["model"]["tokenizer"]  # the recipe's own tokenizer folder ships once
    assert choices[1].startswith(f"./{FILES}/space/") and choices[2] == "org/hub-tokenizer"
    assert (staged.root / choices[1] / "tokenizer.json").is_file()


def test_too_large_job_names_the_biggest_files_and_the_fix(tmp_path, classification_recipe):
    write_tsv(tmp_path / "train.tsv", sentiment_rows(3000, seed=5))
    with pytest.raises(FtlError) as error:
        stage(load_recipe(classification_recipe), tmp_path / "job", limit=50_000)
    message = str(error.value)
    assert "\n" not in message and "over Ray's" in message
    assert "files/data-train/train.tsv" in message and "shared filesystem" in message


def test_a_model_over_rays_limit_is_refused_before_anything_is_copied(
    tmp_path, capsys, classification_recipe
):
    model_dir = tmp_path / "big-model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with (model_dir / "model.safetensors").open("wb") as handle:
        handle.truncate(2 * 2**30)  # sparse: 2 GiB to stat, nothing on disk
    edit_recipe(classification_recipe, model={"config": None, "name_or_path": "big-model"})
    port = free_port()
    message = fails(capsys, ["submit", str(classification_recipe), "--address", f"127.0.0.1:{port}"])
    assert "cannot reach" in message  # the cluster is checked before any file is staged
    with pytest.raises(FtlError) as error:
        stage(load_recipe(classification_recipe), tmp_path / "job")
    assert "files/model/big-model/model.safetensors (2048.0 MiB)" in str(error.value)
    from ftl.cluster.package import working_dir_limit

    assert f"over Ray's {working_dir_limit() / 2**20:.1f} MiB limit" in str(error.value)
    assert not any(p.is_file() for p in (tmp_path / "job").rglob("*"))


def test_secrets_never_travel_in_the_staged_recipe(tmp_path, classification_recipe):
    edit_recipe(classification_recipe, description=f"token {PLANTED}")
    with pytest.raises(FtlError, match="contains the cluster's token") as error:
        stage(load_recipe(classification_recipe), tmp_path / "job", secrets=(PLANTED,))
    assert PLANTED not in str(error.value)
    edit_recipe(
        classification_recipe,
        description="",
        tune={"space": {"train.lr": [0.01]}, "storage": "postgresql://ftl:hunter2-pass@db/ftl"},
    )
    with pytest.raises(FtlError, match="tune.storage: the URL holds a password") as error:
        stage(load_recipe(classification_recipe), tmp_path / "job2")
    assert "hunter2" not in str(error.value)


def test_job_environment_metadata_and_command(monkeypatch, classification_recipe):
    monkeypatch.setenv("RAY_AUTH_TOKEN", PLANTED)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = load_recipe(classification_recipe).recipe
    local = job_env(Connection(parse_address("http://127.0.0.1:8265"), None, None), recipe)
    remote = job_env(Connection(parse_address("http://gpu-head:8265"), None, None), recipe)
    assert local["FTL_CACHE"] == os.environ["FTL_CACHE"] and "FTL_CACHE" not in remote
    assert local["HF_HUB_OFFLINE"] == remote["HF_HUB_OFFLINE"] == "1"
    assert local["RAY_OVERRIDE_JOB_RUNTIME_ENV"] == "1"
    assert PLANTED not in json.dumps([local, remote])
    command = entry_command("run", "ftl-x-1", "/shared dir/runs")
    assert shlex.split(command) == [
        "ftl",
        "job-entry",
        "run",
        "--job-id",
        "ftl-x-1",
        "--storage",
        "/shared dir/runs",
    ]
    assert re.fullmatch(r"ftl-tiny-cls-\d{8}-\d{6}-[0-9a-f]{4}", new_job_id("tiny-cls"))


# ---- storage --------------------------------------------------------------------------------------------


def test_storage_rules(tmp_path, monkeypatch):
    with pytest.raises(FtlError, match="--storage.*FTL_STORAGE"):
        resolve_storage(None, local_cluster_storage=None)
    assert resolve_storage(None, local_cluster_storage=str(tmp_path)) == str(tmp_path)
    monkeypatch.setenv("FTL_STORAGE", "s3://bucket/runs/")
    assert resolve_storage(None, local_cluster_storage=None) == "s3://bucket/runs"
    assert resolve_storage("relative/runs", local_cluster_storage=None) == str(
        Path("relative/runs").resolve()
    )
    with pytest.raises(FtlError, match="credentials") as error:
        check_storage("s3://AKIAKEY:very-secret-key@bucket/runs")
    assert "very-secret-key" not in str(error.value)


def test_copy_tree_through_a_uri_and_back(tmp_path):
    source = tmp_path / "run"
    (source / "model").mkdir(parents=True)
    (source / "metrics.json").write_text('{"eval_accuracy": 0.9}')
    (source / "model" / "config.json").write_text("{}")
    uri = f"file://{tmp_path}/store/job-1"
    assert not exists(uri)
    copy_tree(str(source), uri)
    assert exists(uri)
    copy_tree(uri, str(tmp_path / "back"))
    assert json.loads((tmp_path / "back" / "metrics.json").read_text()) == {"eval_accuracy": 0.9}
    assert (tmp_path / "back" / "model" / "config.json").is_file()


def test_fetch_of_a_job_without_files_is_one_line(capsys, tmp_path):
    message = fails(
        capsys, ["fetch", "ftl-none-1", "--storage", str(tmp_path / "store"), "--output", str(tmp_path)]
    )
    assert "job 'ftl-none-1': no run directory at" in message


@pytest.mark.slow
def test_job_entry_writes_to_uri_storage_also_after_a_failure(tmp_path, monkeypatch, classification_recipe):
    """What a job runs on the cluster, run here: the run directory reaches the storage URI either way."""
    staged = stage(load_recipe(classification_recipe, ["train.epochs=1"]), tmp_path / "job")
    monkeypatch.chdir(staged.root)
    store = f"file://{tmp_path}/store"
    assert main(["job-entry", "run", "--job-id", "ftl-ok-1", "--storage", store]) == 0
    done = tmp_path / "store" / "ftl-ok-1"
    assert json.loads((done / "metrics.json").read_text())["eval_accuracy"] >= 0.0
    record = json.loads((done / JOB_RECORD).read_text())
    assert record["outcome"] == "succeeded" and record["recipe_sha256"] == staged.sha256

    write_tsv(staged.root / FILES / "data-train" / "train.tsv", [("good film", 7), ("bad film", 0)] * 20)
    assert main(["job-entry", "run", "--job-id", "ftl-bad-1", "--storage", store]) == 2
    failed = tmp_path / "store" / "ftl-bad-1"
    assert json.loads((failed / JOB_RECORD).read_text())["outcome"] == "failed"
    assert (failed / "recipe.resolved.yaml").is_file()


def test_job_entry_outside_a_job_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    message = fails(capsys, ["job-entry", "run", "--job-id", "x", "--storage", str(tmp_path)])
    assert f"no {RECIPE_FILE}" in message


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
