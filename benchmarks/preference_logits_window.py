"""What does scoring only the replies' positions save in a DPO step? SmolLM2-135M on HH-RLHF pairs.

A preference step scores each reply by its sequence log-probability; only the positions that predict a reply token
matter. Contenders, on the same batches of recipes/hh-dpo-smollm2.yaml (LoRA on the top 8 layers, the reference
= the model with its adapters disabled):
* every position: the model computes logits (576 x 49,152 LM head, then a log-softmax) at every position;
* reply window: `logits_to_keep` asks for the trailing positions from the one before the batch's earliest reply
  token (what ftl does; TRL's use_logits_to_keep).

One process, one model: a step is the trainer's own compute_loss (policy + reference forward) and backward, timed
per batch; the contender is switched by the trainer's cached "takes logits_to_keep" answer. Contenders alternate
within each repeat (the order rotates); the report gives medians of seconds per step, the paired per-repeat ratio
and a best-of (each batch's fastest time). The log-probs of the two are compared too (they must agree).
Usage: python benchmarks/preference_logits_window.py [--repeats 3] [--batches 4]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from common import REPO, best_of, interleaved, machine, paired_ratio, run_rows, write_results

RECIPE = REPO / "recipes" / "hh-dpo-smollm2.yaml"
SETTINGS = [
    "data.max_train_rows=64",
    "data.max_eval_rows=8",
    "log.tensorboard=false",
    "log.progress=false",
]
CONTENDERS = {"every position": False, "reply window": True}


def build_trainer(workdir: Path):
    from ftl.launcher.recipe.loader import load_recipe
    from ftl.launcher.train.execute import build
    from ftl.launcher.train.rundir import RunDir

    loaded = load_recipe(RECIPE, SETTINGS)
    built = build(loaded, RunDir.open_for_run(workdir / "run", resume=False), callbacks=[], train_only=False)
    return built.trainer


def batches_of(trainer, count: int) -> list[dict]:
    loader = trainer.get_train_dataloader()
    found = []
    for batch in loader:
        found.append(trainer._prepare_inputs(batch))
        if len(found) == count:
            return found
    return found


def step_times(trainer, batches: list[dict], window: bool) -> dict:
    """Seconds of one training step (forward of policy and reference, loss, backward) per batch."""
    import torch

    from ftl.launcher.train.preference_losses import reply_window

    trainer._logits_to_keep_known = window  # the trainer's own switch: its answer to "takes logits_to_keep?"
    model = trainer.model
    model.train()
    seconds, tokens, kept = [], [], []
    for batch in batches:
        model.zero_grad(set_to_none=True)
        started = time.perf_counter()
        loss = trainer.compute_loss(model, batch)
        loss.backward()
        seconds.append(time.perf_counter() - started)
        tokens.append(int(batch["attention_mask"].sum()))
        width = batch["labels"].shape[1]
        kept.append(((reply_window(batch["labels"]) if window else 0) or width) / width)
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        model.eval()
        logps = trainer._logps(model, batches[0])
        model.train()
    return {
        "step_s": statistics.median(seconds),
        "total_s": sum(seconds),
        "kept_positions_share": statistics.mean(kept),  # of the padded positions, per batch
        "step_seconds": seconds,
        "step_tokens": tokens,
        "first_batch_logps": [*logps.chosen.tolist(), *logps.rejected.tolist()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, default=4, help="batches (steps) timed per run")
    args = parser.parse_args()
    info = machine()
    with tempfile.TemporaryDirectory(prefix="ftl-logits-window-") as tmp:
        trainer = build_trainer(Path(tmp))
        if not trainer._takes_logits_to_keep(trainer.model):
            raise SystemExit("this model's forward has no logits_to_keep: nothing to compare")
        batches = batches_of(trainer, args.batches)
        step_times(trainer, batches[:1], True)  # warm-up: first-call allocations, thread pools
        samples = interleaved(
            {name: (lambda w=window: step_times(trainer, batches, w)) for name, window in CONTENDERS.items()},
            args.repeats,
        )
    every, window = samples["every position"], samples["reply window"]
    drift = max(
        abs(a - b)
        for x, y in zip(every, window, strict=True)
        for a, b in zip(x["first_batch_logps"], y["first_batch_logps"], strict=True)
    )
    speedup = paired_ratio(samples, "total_s", "every position", "reply window")
    fastest = best_of(samples)  # tokens/s over each batch's fastest step: the same batches in every repeat
    rows_shape = tuple(batches[0]["input_ids"].shape)
    table = [
        "| contender | median s per step | per-step s, each repeat | positions with logits |",
        "| --- | --- | --- | --- |",
        *(
            f"| {name} | {statistics.median(r['step_s'] for r in runs):.2f} | "
            f"{', '.join(format(r['step_s'], '.2f') for r in runs)} | {runs[0]['kept_positions_share']:.0%} |"
            for name, runs in samples.items()
        ),
    ]
    verdict = (
        f"Scoring only the reply window is **{speedup:.2f}x** faster per step (median of the per-repeat ratios of "
        f"total step time; best-of over repeats: {fastest['reply window'] / fastest['every position']:.2f}x). "
        f"The two contenders' log-probs of the same pairs differ by at most {drift:.2e} (float32 summation order)."
    )
    markdown = [
        "# DPO steps: logits at every position vs only at the replies' positions",
        "",
        f"`python benchmarks/preference_logits_window.py --repeats {args.repeats} --batches {args.batches}`: "
        f"SmolLM2-135M, recipes/hh-dpo-smollm2.yaml (LoRA top 8, reference = adapters disabled), {args.batches} "
        f"batches of HH-RLHF pairs (first batch {rows_shape[0] // 2} pairs = {rows_shape[0]} rows x {rows_shape[1]} "
        "tokens), each timed as one training step (policy + reference forward, backward); one process, contenders "
        f"alternating over {args.repeats} repeats.",
        "",
        *table,
        "",
        verdict,
    ]
    report = {"machine": info, "samples": samples, "speedup": speedup, "max_logp_difference": drift}
    write_results("preference_logits_window", report, markdown, run_rows(samples))


if __name__ == "__main__":
    main()
