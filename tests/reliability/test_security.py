"""No open doors: YAML never runs code, a model's own code runs only when the recipe opts in (with a warning),
planted secrets appear in no file or log ftl writes, and a run directory follows the user's umask.

Refusing an open remote Ray cluster without --insecure: the corpus (submit-open-remote-cluster) and
tests/test_cluster.py::test_open_remote_clusters_are_refused_unless_insecure.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import yaml

from ftl.cluster.address import parse_address
from ftl.cluster.client import Connection
from ftl.cluster.package import stage
from ftl.cluster.submit import job_env, job_metadata
from ftl.launcher.cli import main
from ftl.launcher.recipe import load_recipe
from tests.conftest import edit_recipe, fails
from tests.reliability.conftest import child_env
from tests.reliability.faults import run_in_child

SECRETS = {
    "HF_TOKEN": "hf_plantedTokenValue0123456789abcdef",
    "WANDB_API_KEY": "0123456789abcdef0123456789planted-wandb",
    "RAY_AUTH_TOKEN": "planted-ray-token-5f1c0e9a",
    "AWS_SECRET_ACCESS_KEY": "planted/aws+secret/key0123456789",
    "PGPASSWORD": "planted-pg-password",
    "MLFLOW_TRACKING_TOKEN": "planted-mlflow-token-0a1b2c3d",
    "MLFLOW_TRACKING_PASSWORD": "planted-mlflow-password-9z8y",
}


def test_yaml_tags_never_run_code(capsys, tmp_path, classification_recipe):
    marker = tmp_path / "pwned"
    payload = f"!!python/object/apply:os.system ['touch {marker}']"
    (tmp_path / "base.yaml").write_text(f"seed: {payload}\n")
    recipe = yaml.safe_load(classification_recipe.read_text())
    classification_recipe.write_text("extends: base.yaml\n" + yaml.safe_dump(recipe))
    assert "base.yaml:1: invalid YAML: could not determine a constructor" in fails(
        capsys, ["check", str(classification_recipe)]
    )
    edit_recipe(classification_recipe, extends=None)
    message = fails(capsys, ["check", str(classification_recipe), f"seed={payload}"])
    assert "override 'seed=" in message and "is not a valid value" in message
    assert not marker.exists()


def _model_with_its_own_code(folder: Path, ran: Path) -> Path:
    folder.mkdir()
    (folder / "configuration_ftlcustom.py").write_text(
        "from pathlib import Path\nfrom transformers import BertConfig\n\n"
        f"Path({str(ran)!r}).touch()\n\n\nclass FtlCustomConfig(BertConfig):\n    model_type = 'ftlcustom'\n"
    )
    (folder / "modeling_ftlcustom.py").write_text(
        "from transformers import BertForSequenceClassification\n\n"
        "from .configuration_ftlcustom import FtlCustomConfig\n\n\n"
        "class FtlCustomForSequenceClassification(BertForSequenceClassification):\n"
        "    config_class = FtlCustomConfig\n"
    )
    config = {
        "model_type": "ftlcustom",
        **{"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
        "auto_map": {
            "AutoConfig": "configuration_ftlcustom.FtlCustomConfig",
            "AutoModelForSequenceClassification": "modeling_ftlcustom.FtlCustomForSequenceClassification",
        },
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_a_models_own_code_runs_only_when_the_recipe_opts_in(capsys, tmp_path, classification_recipe):
    ran = tmp_path / "code-ran"
    model = _model_with_its_own_code(tmp_path / "custom-model", ran)
    edit_recipe(classification_recipe, model={"name_or_path": str(model), "config": None})
    message = fails(capsys, ["check", str(classification_recipe)])
    assert "model.trust_remote_code:" in message and "set model.trust_remote_code: true" in message
    assert not ran.exists()

    edit_recipe(classification_recipe, model={"trust_remote_code": True})
    assert main(["check", "-q", str(classification_recipe)]) == 0
    err = capsys.readouterr().err
    assert "warning: model.trust_remote_code is on: Python code shipped with the model" in err
    assert "FtlCustomForSequenceClassification" in err and ran.exists()


def _planted(monkeypatch) -> dict[str, str]:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    return dict(SECRETS)


def test_secrets_in_a_recipe_or_its_overrides_are_refused_without_being_shown(
    capsys, monkeypatch, classification_recipe
):
    secrets = _planted(monkeypatch)
    edit_recipe(classification_recipe, description=f"uses {secrets['HF_TOKEN']}")
    message = fails(capsys, ["check", str(classification_recipe)])
    assert "tiny-cls.yaml:" in message and "description: holds the value of $HF_TOKEN" in message
    edit_recipe(classification_recipe, description="")
    message = fails(
        capsys, ["run", str(classification_recipe), "tune.storage=postgresql://ftl:hunter2-pass@db/ftl"]
    )
    assert "tune.storage: the URL holds a password" in message and "postgresql://ftl:***@db/ftl" in message
    for text in (*secrets.values(), "hunter2-pass"):
        assert text not in message


@pytest.mark.slow
def test_planted_secrets_appear_in_no_file_or_log(monkeypatch, tmp_path, short_run):
    """A run (with MLflow and W&B), a check and a staged job with every secret in the environment: grep all that
    ftl and the trackers wrote."""
    secrets = _planted(monkeypatch)
    out, log = tmp_path / "run", tmp_path / "run.log"
    env = child_env(tmp_path / "ftl-cache", **secrets)
    trackers = {"trackers": ["mlflow", "wandb"], "wandb": {"mode": "offline"}}  # their stores and files too
    edit_recipe(short_run, log={"tensorboard": True, **trackers})
    argv = ["run", str(short_run), "--output", str(out)]
    assert run_in_child(argv, None, env=env, cwd=tmp_path, log=log) == 0, log.read_text()
    assert run_in_child(["check", str(short_run)], None, env=env, cwd=tmp_path, log=log) == 0

    loaded = load_recipe(short_run)
    staged = stage(loaded, tmp_path / "job", secrets=(secrets["RAY_AUTH_TOKEN"],))
    remote = Connection(parse_address("https://ray-head.example:8265"), None, None)
    job = {"env": job_env(remote, loaded.recipe), "metadata": job_metadata(staged, "run", "s3://bucket/runs")}
    (tmp_path / "job.json").write_text(json.dumps(job))

    written = [p for p in tmp_path.rglob("*") if p.is_file() and "ftl-cache" not in p.parts]
    assert {"manifest.json", "recipe.resolved.yaml", "run.log", "job.json"} <= {p.name for p in written}
    assert any(p.parent.name == "tensorboard" for p in written)
    assert {"mlflow.db", "trackers.json"} <= {p.name for p in written}
    assert any(p.suffix == ".wandb" for p in written) and any("mlartifacts" in p.parts for p in written)
    for path in written:
        content = path.read_bytes()
        for name, value in secrets.items():
            assert value.encode() not in content, f"${name} is in {path}"


@pytest.mark.slow
@pytest.mark.parametrize("umask", [0o027, 0o002])
def test_a_run_directory_follows_the_umask(umask, tmp_path, short_run):
    out, log = tmp_path / "run", tmp_path / "log"
    env = child_env(tmp_path / "ftl-cache")
    argv = ["run", str(short_run), "--output", str(out)]
    assert run_in_child(argv, None, env=env, cwd=tmp_path, log=log, umask=umask) == 0, log.read_text()
    paths = [out, *out.rglob("*")]
    assert len(paths) > 20
    for path in paths:
        mode = stat.S_IMODE(path.stat().st_mode)
        expected = (0o777 if path.is_dir() else 0o666) & ~umask
        assert mode == expected, f"{path}: {oct(mode)}, the umask {oct(umask)} asks for {oct(expected)}"
        assert not mode & stat.S_IWOTH
