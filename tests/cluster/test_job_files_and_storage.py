"""A job's files (the staged recipe, models, limits, secrets), its environment, storage and entry point."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
from pathlib import Path

import pytest
import yaml

from ftl.cluster.address import parse_address
from ftl.cluster.client import Connection
from ftl.cluster.entry import JOB_RECORD, entry_command
from ftl.cluster.package import FILES, RECIPE_FILE, stage
from ftl.cluster.storage import check_storage, copy_tree, exists, resolve_storage
from ftl.cluster.submit import job_env, new_job_id
from ftl.launcher.cli import main
from ftl.launcher.errors import FtlError
from ftl.launcher.recipe import load_recipe
from tests.cluster.conftest import free_port
from tests.conftest import REPO, edit_recipe, fails, minilm_dir, sentiment_rows, write_tsv

TEMPLATES = REPO / "cluster" / "templates"
PLANTED = "planted-secret-token-7f3a9c2e51"


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
    record = json.loads((failed / JOB_RECORD).read_text())
    assert record["outcome"] == "failed" and "7" in record["error"] and "\n" not in record["error"]
    assert (failed / RECIPE_FILE).read_bytes() == (staged.root / RECIPE_FILE).read_bytes()


def test_job_entry_outside_a_job_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    message = fails(capsys, ["job-entry", "run", "--job-id", "x", "--storage", str(tmp_path)])
    assert f"no {RECIPE_FILE}" in message
