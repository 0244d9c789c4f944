"""`ftl export`: a finished run's model as a standalone Hugging Face model directory (LoRA merged if asked)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ftl.launcher.errors import FtlError
from ftl.launcher.files import make_dir
from ftl.launcher.model.load import quiet_transformers
from ftl.launcher.model.saved import is_adapter, load_trained
from ftl.launcher.tasks.registry import task_for
from ftl.launcher.train.rundir import TASK_STATE_FILE, RunDir
from ftl.launcher.use.trained import damaged


def export_run(run: Path, output: Path, *, merge_lora: bool, dtype: str = "fp32") -> Path:
    from transformers import AutoTokenizer

    rundir = RunDir.existing(run)
    output = output.resolve()
    if output.exists() and not output.is_dir():
        raise FtlError(f"--output: {output} is a file; give a new directory")
    if output.exists() and any(output.iterdir()):
        raise FtlError(f"--output: {output} already holds files; choose an empty or new directory")
    make_dir(output.parent, "--output")
    recipe = rundir.read_recipe()
    quiet_transformers(recipe.log.level)
    adapter = is_adapter(rundir.model)
    if adapter and not merge_lora:
        raise FtlError(f"{run}: the model is a LoRA adapter; pass --merge-lora to write a standalone model")
    if merge_lora and not adapter:
        raise FtlError(f"{run}: the run trained full weights (no LoRA adapter); drop --merge-lora")
    task = task_for(recipe.task)
    with damaged(rundir.model, "model"):  # a damaged model folder: the same one line as ftl eval and predict
        model = load_trained(rundir.model, task.model_class(), merge=merge_lora)
    with damaged(rundir.model, "tokenizer"):
        tokenizer = AutoTokenizer.from_pretrained(str(rundir.model))
    if dtype == "bf16":
        import torch

        model = model.to(torch.bfloat16)
    staging = output.with_name(f".{output.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(str(staging))
    tokenizer.save_pretrained(str(staging))
    state = rundir.model / TASK_STATE_FILE
    if state.exists():
        (staging / TASK_STATE_FILE).write_text(state.read_text())
    (staging / "ftl_export.json").write_text(
        json.dumps({"run": str(run.resolve()), "merged_lora": merge_lora, "dtype": dtype}, indent=1)
    )
    if output.exists():
        output.rmdir()
    staging.rename(output)
    return output
