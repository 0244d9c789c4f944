"""Ray Train workers on gloo with DeepSpeed ZeRO 0-3: the same math as one worker, checkpoints, retries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftl.launcher.cli import main
from tests.conftest import TINY_BERT, edit_recipe, kill_process_tree, minilm_dir, write_classification_recipe

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_after_module")]


@pytest.fixture
def no_dropout_recipe(classification_recipe):
    """Dropout draws per-worker random numbers; without it 1 and 2 workers compute the same thing."""
    return _without_dropout(classification_recipe)


def _without_dropout(recipe: Path) -> Path:
    edit_recipe(
        recipe,
        model={"config": {**TINY_BERT, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}},
        train={
            "max_steps": 5,
            "log_every_steps": 1,
            "lr": 1e-3,
            "warmup_ratio": 0.0,
            "group_by_length": False,
        },
        eval={"every_steps": 5},
    )
    return recipe


def _losses(run) -> list[float]:
    history = json.loads((run / "log_history.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry][:5]


@pytest.fixture(scope="module")
def zero_recipe(tmp_path_factory) -> Path:
    """The no-dropout recipe: dropout draws per-worker random numbers; without it 1 and 2 workers compute the
    same thing."""
    return _without_dropout(write_classification_recipe(tmp_path_factory.mktemp("zero")))


@pytest.fixture(scope="module")
def one_worker_losses(zero_recipe):
    """The first 5 losses of one worker with the micro-batch of two workers together: at ZeRO-0 (stages 0-2 load
    the model as a single process does) and at ZeRO-3 (the model is built inside deepspeed.zero.Init, which
    initialises a model from a config with other random numbers than a whole model gets)."""
    found = {}

    def losses(stage: int) -> list[float]:
        if stage not in found:
            single = zero_recipe.parent / f"single-zero{stage}"
            settings = [f"distributed.zero_stage={stage}", "train.batch_size=8", "--output", str(single)]
            assert main(["run", str(zero_recipe), *settings]) == 0
            found[stage] = _losses(single)
            assert len(found[stage]) == 5
        return found[stage]

    return losses


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_two_workers_equal_one_worker_at_zero_stage(stage, zero_recipe, one_worker_losses, tmp_path):
    recipe, reference = zero_recipe, one_worker_losses(3 if stage == 3 else 0)
    out = tmp_path / f"zero{stage}"
    assert (
        main(
            [
                "run",
                str(recipe),
                f"distributed.zero_stage={stage}",
                "distributed.workers=2",
                "train.batch_size=4",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    losses = _losses(out)
    assert losses == pytest.approx(reference, rel=1e-3), f"ZeRO-{stage}: {losses} vs {reference}"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["workers"] == 2 and manifest["deepspeed"]["zero_optimization"]["stage"] == stage
    assert (out / "model" / "model.safetensors").exists()


def _ftl(*args: str, **kwargs):
    import subprocess
    import sys

    from tests.conftest import REPO, env_without_hub

    return subprocess.Popen(
        [sys.executable, "-m", "ftl.launcher.cli", *args],
        cwd=REPO,
        env=env_without_hub(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        **kwargs,
    )


def _wait_for(path, process, seconds: float = 300) -> None:
    import time

    deadline = time.time() + seconds
    while not path.exists():
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def _final_eval_loss(run) -> float:
    return json.loads((run / "metrics.json").read_text())["eval_loss"]


RESUMABLE = [
    "distributed.zero_stage=2",
    "distributed.workers=2",
    "train.batch_size=4",
    "distributed.global_batch_size=8",
    "train.max_steps=24",
    "train.checkpoint_every_steps=4",
    "eval.every_steps=4",
    "train.log_every_steps=1",
]


def test_killed_two_worker_zero2_run_resumes_to_the_same_loss(tmp_path, no_dropout_recipe):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert main(["run", str(no_dropout_recipe), *RESUMABLE, "--output", str(whole)]) == 0
    process = _ftl("run", str(no_dropout_recipe), *RESUMABLE, "--output", str(killed))
    _wait_for(killed / "checkpoints" / "checkpoint-8" / "trainer_state.json", process)
    kill_process_tree(process)  # the driver, its local Ray and both workers
    assert not (killed / "metrics.json").exists()
    resumed = _ftl("run", str(no_dropout_recipe), *RESUMABLE, "--output", str(killed), "--resume")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read().decode()[-3000:]
    assert json.loads((killed / "manifest.json").read_text())["resumed_from"] is not None
    assert _final_eval_loss(killed) == pytest.approx(_final_eval_loss(whole), rel=1e-3)
    assert _losses(killed) == pytest.approx(_losses(whole), rel=1e-3)


def test_two_worker_checkpoint_resumes_on_one_worker(tmp_path, no_dropout_recipe):
    run = tmp_path / "run"
    process = _ftl("run", str(no_dropout_recipe), *RESUMABLE, "--output", str(run))
    _wait_for(run / "checkpoints" / "checkpoint-8" / "trainer_state.json", process)
    kill_process_tree(process)
    one_worker = [
        a for a in RESUMABLE if not a.startswith("distributed.workers")
    ]  # global batch 8: accumulate 2
    assert main(["run", str(no_dropout_recipe), *one_worker, "--output", str(run), "--resume"]) == 0
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["workers"] == 1 and manifest["resumed_from"].startswith("checkpoint-")
    assert json.loads((run / "metrics.json").read_text())["train_steps"] == 24


def test_a_killed_worker_is_retried_by_ray_and_the_run_completes(tmp_path, no_dropout_recipe):
    import os
    import signal
    import time

    import psutil

    run = tmp_path / "run"
    process = _ftl(
        "run",
        str(no_dropout_recipe),
        *RESUMABLE,
        "train.max_steps=40",
        "distributed.max_failures=2",
        "--output",
        str(run),
    )
    _wait_for(run / "checkpoints" / "checkpoint-8" / "trainer_state.json", process)
    workers = [  # only this run's workers: descendants of its driver
        p
        for p in psutil.Process(process.pid).children(recursive=True)
        if "RayTrainWorker" in " ".join(p.cmdline())
    ]
    assert workers, "no Ray Train worker process found"
    os.kill(workers[-1].pid, signal.SIGKILL)
    killed_at = time.time()
    assert process.wait(timeout=900) == 0, process.stderr.read().decode()[-3000:]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["resumed_from"] is not None, "the retry should continue from a checkpoint"
    assert json.loads((run / "metrics.json").read_text())["train_steps"] == 40
    assert (run / "metrics.json").stat().st_mtime > killed_at
    history = json.loads((run / "log_history.json").read_text())["log_history"]
    logged = [entry["step"] for entry in history if "loss" in entry]
    assert logged == list(range(1, 41)), "a step was lost or trained twice"


def test_bf16_zero3_trains_on_two_cpu_workers(tmp_path, no_dropout_recipe):
    out = tmp_path / "bf16"
    assert (
        main(
            [
                "run",
                str(no_dropout_recipe),
                "distributed.zero_stage=3",
                "distributed.workers=2",
                "train.batch_size=4",
                "train.precision=bf16",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["deepspeed"]["bf16"]["enabled"] is True and manifest["device"].endswith("bf16")
    assert len(_losses(out)) == 5


def test_checkpoints_in_ray_storage_survive_the_loss_of_the_run_directory(tmp_path, no_dropout_recipe):
    import shutil

    storage = tmp_path / "ray-storage"  # stands for s3://...: Ray storage, not the run directory
    settings = [*RESUMABLE, f"distributed.storage_path={storage}"]
    whole = tmp_path / "whole"
    assert main(["run", str(no_dropout_recipe), *RESUMABLE, "--output", str(whole)]) == 0
    run = tmp_path / "run"
    process = _ftl("run", str(no_dropout_recipe), *settings, "--output", str(run))
    _wait_for(run / "checkpoints" / "checkpoint-12" / "trainer_state.json", process)
    kill_process_tree(process)
    stored = sorted(storage.rglob("checkpoint-*/trainer_state.json"))
    assert stored, "no checkpoint reached Ray storage"
    shutil.rmtree(run / "checkpoints")  # the node (and its local disk) is gone
    resumed = _ftl("run", str(no_dropout_recipe), *settings, "--output", str(run), "--resume")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read().decode()[-3000:]
    assert json.loads((run / "manifest.json").read_text())["resumed_from"] is not None
    assert _final_eval_loss(run) == pytest.approx(_final_eval_loss(whole), rel=1e-3)


def test_optimizer_offload_to_cpu_matches_the_plain_zero2_losses(tmp_path, no_dropout_recipe):
    plain, offload = tmp_path / "plain", tmp_path / "offload"
    common = ["distributed.zero_stage=2", "distributed.workers=2", "train.batch_size=4"]
    assert main(["run", str(no_dropout_recipe), *common, "--output", str(plain)]) == 0
    assert (
        main(
            [
                "run",
                str(no_dropout_recipe),
                *common,
                "distributed.offload_optimizer=cpu",
                "--output",
                str(offload),
            ]
        )
        == 0
    )
    manifest = json.loads((offload / "manifest.json").read_text())
    assert manifest["deepspeed"]["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert _losses(offload) == pytest.approx(_losses(plain), rel=1e-3)


# ---- ZeRO-3 partitions at load time; re-sharding follows Ray storage ---------------------------------------
BIG_LLAMA = {  # ~58M parameters (234 MB in fp32): large enough that a rank's share shows in its memory
    "model_type": "llama",
    "hidden_size": 512,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": 8,
    "intermediate_size": 1536,
    "max_position_embeddings": 64,
    "tie_word_embeddings": False,
}


def test_zero3_ranks_hold_half_of_the_weights_right_after_loading(tmp_path, lm_recipe):
    from transformers import AutoConfig, AutoModelForCausalLM

    settings = {**BIG_LLAMA, "vocab_size": 30522}
    pretrained = tmp_path / "pretrained"  # loaded with from_pretrained, as a model from the hub would be
    AutoModelForCausalLM.from_config(AutoConfig.for_model(**settings)).save_pretrained(pretrained)
    recipe = edit_recipe(
        lm_recipe,
        model={"name_or_path": str(pretrained), "config": None, "tokenizer": minilm_dir()},
        train={"max_steps": 1, "batch_size": 2},
        eval={"before_training": False, "every_steps": 1},
    )
    loading = {}
    for stage in (2, 3):
        out = tmp_path / f"zero{stage}"
        settings = [f"distributed.zero_stage={stage}", "distributed.workers=2", "eval.save_predictions=false"]
        assert main(["run", str(recipe), *settings, "--output", str(out)]) == 0
        loading[stage] = json.loads((out / "manifest.json").read_text())["after_loading"]
    total = loading[3]["parameters"]
    assert total == loading[2]["parameters"] > 50_000_000
    assert loading[2]["held_by_this_process"] == total  # ZeRO-2: each rank loads the whole model
    assert 0.45 < loading[3]["held_by_this_process"] / total < 0.55  # ZeRO-3: its half, from the start
    # Resident memory is recorded, not compared: on CPU a ZeRO-2 rank's safetensors weights are memory-mapped
    # (resident only once read), while zero.Init allocates and partitions; the GPU check compares CUDA memory.
    assert all("rss_mib" in loading[stage] and "peak_rss_mib" in loading[stage] for stage in (2, 3))


def test_a_checkpoint_only_in_ray_storage_is_resharded_for_fewer_workers(tmp_path, no_dropout_recipe):
    import shutil
    import time

    storage = tmp_path / "ray-storage"  # stands for s3://...: the driver's disk does not hold the checkpoints
    settings = [*RESUMABLE, f"distributed.storage_path={storage}"]
    run = tmp_path / "run"
    process = _ftl("run", str(no_dropout_recipe), *settings, "--output", str(run))
    deadline = time.time() + 300
    # in Ray storage and registered there (Ray's snapshot lists it), not just written on the workers' disks
    while not (
        list(storage.glob("*/checkpoint-8/trainer_state.json")) and list(storage.glob("*/*snapshot.json"))
    ):
        assert process.poll() is None and time.time() < deadline, process.stderr.read().decode()[-2000:]
        time.sleep(0.2)
    kill_process_tree(process)
    shutil.rmtree(run / "checkpoints")  # written on the workers' nodes: the driver's node never sees them
    one_worker = [a for a in settings if not a.startswith("distributed.workers")]
    resumed = _ftl("run", str(no_dropout_recipe), *one_worker, "--output", str(run), "--resume")
    code, console = resumed.wait(timeout=600), resumed.stderr.read().decode()
    assert code == 0, console[-3000:]
    assert "from 2 to 1 worker(s)" in console  # the driver re-sharded what it fetched from storage
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["workers"] == 1 and manifest["resumed_from"].startswith("checkpoint-")
    assert json.loads((run / "metrics.json").read_text())["train_steps"] == 24
