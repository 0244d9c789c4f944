"""SST-2: the classic pad-to-max-128 recipe vs ftl's dynamic padding (+ length grouping), one process.

Contenders (MiniLM-L6, batch 32, max_length 128 for all, identical optimiser settings, sst2_contenders.py):
  pad_to_128        the tutorial: every row padded to 128 (`padding="max_length"`), batches in random order
                    (a plain HF Trainer script)
  ftl_dynamic       ftl with train.group_by_length: false: each batch padded to its own longest row
  ftl_dynamic_grouped  ftl's default: dynamic padding and batches of similar lengths
Effective throughput = non-pad tokens/s of the timed steps. Goal: ftl_dynamic_grouped >= 3x pad_to_128.

Usage: python benchmarks/padding.py [--steps 16] [--warmup 2] [--repeats 3] [--device cpu|cuda]
Writes benchmarks/results/padding.{md,json,csv}.
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
from sst2_contenders import parse_arguments, prepare, run_ftl, run_hf_trainer


def main() -> None:
    args = parse_arguments(__doc__, steps=16, warmup=2, repeats=3)
    setup = prepare(args, scratch_prefix="ftl-padding-", max_length=128)
    scratch, device = setup.scratch, setup.device
    info = machine()
    contenders = {
        "pad_to_128": partial(run_hf_trainer, setup, classic=True),
        "ftl_dynamic": partial(run_ftl, setup, group_by_length=False),
        "ftl_dynamic_grouped": partial(run_ftl, setup, group_by_length=True),
    }
    samples = interleaved(contenders, args.repeats)
    tokens = medians(samples, "tokens_per_s")
    padding = medians(samples, "non_pad_fraction")
    step = medians(samples, "step_p50_s")
    best = best_of(samples)
    ratios = {
        "grouped_vs_pad_to_128": tokens["ftl_dynamic_grouped"] / tokens["pad_to_128"],
        "grouped_vs_pad_to_128_paired": paired_ratio(
            samples, "tokens_per_s", "ftl_dynamic_grouped", "pad_to_128"
        ),
        "grouped_vs_pad_to_128_best_of": best["ftl_dynamic_grouped"] / best["pad_to_128"],
        "dynamic_vs_pad_to_128": tokens["ftl_dynamic"] / tokens["pad_to_128"],
        "grouped_vs_dynamic": tokens["ftl_dynamic_grouped"] / tokens["ftl_dynamic"],
    }
    report = {
        "settings": {
            "model": "all-MiniLM-L6-v2 + 2-way head",
            "rows": args.rows,
            "batch": args.batch,
            "max_length": 128,
            "warmup_steps": args.warmup,
            "timed_steps": args.steps,
            "repeats": args.repeats,
            "device": device,
        },
        "median_tokens_per_s": tokens,
        "best_of_tokens_per_s": best,
        "median_non_pad_fraction": padding,
        "median_step_p50_s": step,
        "ratios": ratios,
        "machine": info,
        "samples": samples,
    }
    goal = "met" if ratios["grouped_vs_pad_to_128"] >= 3 else "NOT met"
    markdown = [
        "# Padding: pad-to-128 vs dynamic padding (+ length grouping), SST-2 + MiniLM-L6, one process",
        "",
        f"{args.rows} SST-2 rows, batch {args.batch}, max_length 128, AdamW lr 5e-5, fp32 on {device} "
        f"({args.threads if device == 'cpu' else 'all'} torch thread(s)). Each run: "
        f"{args.warmup} warm-up + {args.steps} timed optimizer steps; {args.repeats} repeats alternating in rotating "
        "order; medians. Effective throughput = non-pad tokens/s.",
        "",
        "| contender | effective tokens/s | best-of tokens/s | samples/s | non-pad share of positions | step p50 s "
        "| runs (tokens/s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
        *[
            f"| {name} | {tokens[name]:,.0f} | {best[name]:,.0f} | {medians(samples, 'samples_per_s')[name]:,.1f} | "
            f"{100 * padding[name]:.1f} % | {step[name]:.3f} | "
            f"{runs_text(runs)} |"
            for name, runs in samples.items()
        ],
        "",
        f"- dynamic padding + length grouping / pad-to-128: **{ratios['grouped_vs_pad_to_128']:.2f}x** (median of "
        f"per-repeat ratios {ratios['grouped_vs_pad_to_128_paired']:.2f}x, best-of "
        f"{ratios['grouped_vs_pad_to_128_best_of']:.2f}x); goal >= 3x: {goal}",
        f"- dynamic padding alone / pad-to-128: {ratios['dynamic_vs_pad_to_128']:.2f}x; length grouping adds "
        f"{ratios['grouped_vs_dynamic']:.2f}x on top",
        "",
        "Rerun: `python benchmarks/padding.py` (add `--device cuda` on a GPU node).",
    ]
    write_results("padding", report, markdown, run_rows(samples), args.out)
    shutil.rmtree(scratch, ignore_errors=True)  # run directories and caches of the contenders


if __name__ == "__main__":
    main()
