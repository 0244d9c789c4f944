"""ftl vs a plain HF Trainer script vs a raw PyTorch loop: SST-2 + MiniLM, identical settings, one process.

Same rows, tokenizer, dynamic padding, length-grouped batches, batch size, learning rate, AdamW, schedule and
clipping (sst2_contenders.py). Each contender trains --warmup + --steps optimizer steps, --repeats times,
alternating with the others in rotating order; tokens/s counts non-pad tokens of the timed steps.
Goal: ftl / plain HF Trainer >= 0.98.

Usage: python benchmarks/throughput.py [--steps 30] [--warmup 3] [--repeats 9] [--device cpu|cuda]
Writes benchmarks/results/throughput.{md,json,csv}.
"""

from __future__ import annotations

import shutil
from functools import partial

from common import (
    best_of,
    interleaved,
    machine,
    medians,
    paired_ratio,
    run_rows,
    runs_text,
    write_results,
)
from sst2_contenders import parse_arguments, prepare, run_ftl, run_hf_trainer, run_raw_loop


def main() -> None:
    args = parse_arguments(__doc__, steps=30, warmup=3, repeats=9)
    setup = prepare(args, scratch_prefix="ftl-throughput-", max_length=64)
    scratch, device = setup.scratch, setup.device
    info = machine()
    contenders = {
        "ftl": partial(run_ftl, setup),
        "hf_trainer": partial(run_hf_trainer, setup),
        "raw_pytorch_loop": partial(run_raw_loop, setup),
    }
    samples = interleaved(contenders, args.repeats)
    tokens = medians(samples, "tokens_per_s")
    padding = medians(samples, "non_pad_fraction")
    best = best_of(samples)
    first = samples["ftl"][0]["step_tokens"]
    same = "checked" if all(runs[0]["step_tokens"] == first for runs in samples.values()) else "NOT the case"
    ratios = {}
    for other, key in (("hf_trainer", "ftl_vs_hf_trainer"), ("raw_pytorch_loop", "ftl_vs_raw_loop")):
        ratios[key] = tokens["ftl"] / tokens[other]
        ratios[f"{key}_paired"] = paired_ratio(samples, "tokens_per_s", "ftl", other)
        ratios[f"{key}_best_of"] = best["ftl"] / best[other]
    report = {
        "settings": {
            "model": "all-MiniLM-L6-v2 + 2-way head",
            "rows": args.rows,
            "batch": args.batch,
            "max_length": 64,
            "warmup_steps": args.warmup,
            "timed_steps": args.steps,
            "repeats": args.repeats,
            "device": device,
        },
        "median_tokens_per_s": tokens,
        "best_of_tokens_per_s": best,
        "identical_batches": same == "checked",
        "median_non_pad_fraction": padding,
        "ratios": ratios,
        "machine": info,
        "samples": samples,
    }
    goal = "met" if ratios["ftl_vs_hf_trainer"] >= 0.98 else "NOT met"
    markdown = [
        "# Throughput: ftl vs plain HF Trainer vs raw PyTorch loop (SST-2 + MiniLM-L6, one process)",
        "",
        f"Identical settings: {args.rows} SST-2 rows, max_length 64, dynamic padding, length-grouped batches of "
        f"{args.batch}, AdamW lr 5e-5, linear schedule, clipping 1.0, fp32 on {device} "
        f"({args.threads if device == 'cpu' else 'all'} torch thread(s)). Each run: {args.warmup} "
        f"warm-up + {args.steps} timed optimizer steps; {args.repeats} repeats, contenders alternating in rotating "
        "order; medians. tokens/s = non-pad tokens of the timed steps / their wall time.",
        "",
        "| contender | median non-pad tokens/s | best-of tokens/s | median samples/s | non-pad share of positions "
        "| runs (tokens/s) |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
        *[
            f"| {name} | {tokens[name]:,.0f} | {best[name]:,.0f} | {medians(samples, 'samples_per_s')[name]:,.1f} | "
            f"{100 * padding[name]:.1f} % | {runs_text(runs)} |"
            for name, runs in samples.items()
        ],
        "",
        f"- ftl / plain HF Trainer: **{ratios['ftl_vs_hf_trainer']:.3f}** (ratio of medians); median of per-repeat "
        f"ratios {ratios['ftl_vs_hf_trainer_paired']:.3f}; best-of {ratios['ftl_vs_hf_trainer_best_of']:.3f}; "
        f"goal >= 0.98: {goal}",
        f"- ftl / raw PyTorch loop: **{ratios['ftl_vs_raw_loop']:.3f}** (ratio of medians); median of per-repeat "
        f"ratios {ratios['ftl_vs_raw_loop_paired']:.3f}; best-of {ratios['ftl_vs_raw_loop_best_of']:.3f}. The loop "
        "has no Trainer bookkeeping (logging, callbacks, accelerate wrappers).",
        "",
        "Best-of: every repeat of a contender trains the same batches in the same order, so each step's fastest "
        "time over the repeats estimates its cost without the neighbours' load; tokens/s = Σ tokens / Σ fastest "
        f"step times. The three contenders train exactly the same batches (same sampler and seed): {same}.",
        "",
        "Rerun: `python benchmarks/throughput.py` (add `--device cuda` on a GPU node).",
    ]
    write_results("throughput", report, markdown, run_rows(samples), args.out)
    shutil.rmtree(scratch, ignore_errors=True)  # run directories and caches of the contenders


if __name__ == "__main__":
    main()
