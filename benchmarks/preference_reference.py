"""What does each way of holding the DPO reference model cost? Peak memory and time, SmolLM2-135M on HH-RLHF pairs.

Contenders (recipes/hh-dpo-smollm2.yaml with short pairs and few steps):
* copy: the top 6 layers train, the reference is a frozen copy of the starting model held beside it;
* precomputed: the same training, the reference's log-probs computed once before training (no copy held);
* adapters disabled: LoRA on the top 8 layers, the reference is the same model with its adapters off;
* none (SimPO): the top 6 layers train with a reference-free loss (the floor: no reference at all).

Each run is a fresh `ftl run` process; its peak RSS (ru_maxrss) is read when it ends, its wall time around it
(common.interleaved) and the training steps' time from the run's own log (train_runtime). Contenders alternate within each repeat (the order rotates), as in
common.interleaved; the report gives medians, each contender's peak RSS above the reference-free floor, and
`ftl plan`'s estimate of the reference copy. Usage: python benchmarks/preference_reference.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from common import REPO, interleaved, machine, medians, run_rows, write_results

RECIPE = REPO / "recipes" / "hh-dpo-smollm2.yaml"
SHORT = [
    "task.max_length=128",
    "task.max_prompt_length=64",
    "train.max_steps=6",
    "train.batch_size=4",
    "train.warmup_steps=0",
    "train.log_every_steps=1",
    "data.max_train_rows=24",
    "data.max_eval_rows=8",
    "eval.every_steps=6",
    "eval.select_best=false",
    "log.tensorboard=false",
    "log.progress=false",
]
TOP_LAYERS = ["lora=null", "freeze.embeddings=true", "freeze.bottom_layers=24"]
CONTENDERS = {
    "copy": [*TOP_LAYERS, "task.reference=copy"],
    "precomputed": [*TOP_LAYERS, "task.reference=precomputed"],
    "adapters disabled (LoRA)": ["task.reference=adapters_disabled"],
    "none (SimPO)": [*TOP_LAYERS, "task.loss=simpo", "task.beta=2.0"],
}
FLOOR = "none (SimPO)"
# the child reports its own peak RSS (ru_maxrss, KiB on Linux) as its last line
_CHILD = (
    "import resource, sys\n"
    "from ftl.launcher.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "print('PEAK_RSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)\n"
    "sys.exit(code)\n"
)


def run_once(name: str, overrides: list[str], workdir: Path) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"{name.split()[0]}-", dir=workdir)) / "run"
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, "run", str(RECIPE), *SHORT, *overrides, "--output", str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    peak_kib = int(
        next(line for line in done.stdout.splitlines() if line.startswith("PEAK_RSS_KIB")).split()[1]
    )
    history = json.loads((out / "log_history.json").read_text())["log_history"]
    summary = next(entry for entry in history if "train_runtime" in entry)
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        "peak_rss_gib": peak_kib / 1024**2,
        "train_s": summary["train_runtime"],
        "steps": metrics["train_steps"],
        "eval_reward_accuracy": metrics.get("eval_reward_accuracy"),
    }


def planned_reference_gib() -> float:
    """`ftl plan`'s memory line for the reference copy of the copy contender."""
    shown = subprocess.run(
        [sys.executable, "-m", "ftl.launcher.cli", "plan", str(RECIPE), *SHORT, *CONTENDERS["copy"]],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    found = re.search(r"reference model\W+([\d.,]+) (MiB|GiB)", shown.stdout + shown.stderr)
    if found is None:
        return float("nan")
    value = float(found.group(1).replace(",", ""))
    return value / 1024 if found.group(2) == "MiB" else value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    info = machine()
    with tempfile.TemporaryDirectory(prefix="ftl-pref-ref-") as tmp:
        workdir = Path(tmp)
        samples = interleaved(
            {
                name: (lambda n=name, o=overrides: run_once(n, o, workdir))
                for name, overrides in CONTENDERS.items()
            },
            args.repeats,
        )
    rss, wall, train = (medians(samples, key) for key in ("peak_rss_gib", "wall_s", "train_s"))
    planned = planned_reference_gib()
    table = [
        "| reference | peak RSS GiB | above no reference | training s (6 steps) | whole run s |",
        "| --- | --- | --- | --- | --- |",
        *(
            f"| {name} | {rss[name]:.2f} | {rss[name] - rss[FLOOR]:+.2f} | {train[name]:.1f} | {wall[name]:.1f} |"
            for name in CONTENDERS
        ),
    ]
    above = {name: rss[name] - rss[FLOOR] for name in CONTENDERS}
    verdict = (
        f"The frozen copy's peak is {above['copy']:+.2f} GiB above no reference at all; `ftl plan` counts "
        f"{planned:.2f} GiB for it. Precomputed log-probs hold no copy: their {above['precomputed']:+.2f} GiB is "
        "the scoring pass before training (eval.batch_size pairs, two sequences each, with logits over the whole "
        "vocabulary), which a smaller eval.batch_size lowers; the pass took "
        f"{wall['precomputed'] - wall['copy']:+.1f} s of whole-run wall time against the copy here (median). LoRA's "
        f"reference, the same model with its adapters disabled, costs {above['adapters disabled (LoRA)']:+.2f} GiB "
        "(the adapters and their optimizer states). Training time per run is in the table; on this shared machine "
        "differences under ~30 % are noise (the per-run numbers are in the JSON and CSV)."
    )
    markdown = [
        "# The DPO reference model: memory and time of each way to hold it",
        "",
        f"`python benchmarks/preference_reference.py --repeats {args.repeats}`: SmolLM2-135M, recipes/hh-dpo-smollm2.yaml "
        "with pairs cut to 128 tokens, 6 steps of 4 pairs; each run a fresh `ftl run` process; medians of "
        f"{args.repeats} repeats, contenders alternating.",
        "",
        *table,
        "",
        verdict,
    ]
    report = {"machine": info, "planned_reference_gib": planned, "samples": samples}
    write_results("preference_reference", report, markdown, run_rows(samples))


if __name__ == "__main__":
    main()
