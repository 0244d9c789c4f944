"""How often a recipe whose base model exists in no file (built from `model.config`) with `lora:` trains on two
ZeRO-3 workers: the run that used to fail in about half of the tries, when rank 1 read <run>/base_model/ while
rank 0 was still writing it. Now every rank builds its own seeded copy and rank 0 saves it for later, so no rank
reads another's file.

    python benchmarks/shared_files.py [--runs 20]

Results: benchmarks/results/shared_files.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, machine  # noqa: E402

SETTINGS = [
    "model.config={model_type: llama, hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 4, "
    "num_key_value_heads: 4, intermediate_size: 128, max_position_embeddings: 128}",
    "lora={r: 8, target_modules: [q_proj, v_proj]}",
    "distributed.workers=2",
    "distributed.zero_stage=3",
    "train.batch_size=4",
    "train.max_steps=2",
    "eval.every_steps=2",
    "eval.before_training=false",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    from tests.conftest import write_lm_recipe

    work = Path(tempfile.mkdtemp(prefix="ftl-shared-files-"))
    recipe = write_lm_recipe(work)
    outcomes = []
    for index in range(args.runs):
        started = time.monotonic()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "ftl.launcher.cli",
                "run",
                str(recipe),
                *SETTINGS,
                "--output",
                str(work / f"run-{index}"),
            ],
            capture_output=True,
            text=True,
        )
        error = next((line for line in done.stderr.splitlines() if line.startswith("error:")), "")
        outcomes.append(
            {
                "run": index,
                "ok": done.returncode == 0,
                "seconds": round(time.monotonic() - started, 1),
                "error": error,
            }
        )
        print(outcomes[-1], flush=True)
    succeeded = sum(o["ok"] for o in outcomes)
    result = {"machine": machine(), "settings": SETTINGS, "runs": outcomes, "succeeded": succeeded}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "shared_files.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# A from-config base model with LoRA on two ZeRO-3 workers",
        "",
        f"{succeeded} of {len(outcomes)} runs succeeded (`{' '.join(SETTINGS)}`).",
        "",
        *(f"- run {o['run']}: {'ok' if o['ok'] else o['error']} ({o['seconds']} s)" for o in outcomes),
        "",
        f"Machine: {result['machine']}",
    ]
    (RESULTS / "shared_files.md").write_text("\n".join(lines) + "\n")
    print(f"{succeeded} of {len(outcomes)} succeeded")


if __name__ == "__main__":
    main()
