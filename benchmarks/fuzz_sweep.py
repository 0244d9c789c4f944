"""The long fuzzing sweep (`make fuzz`): tests/reliability/test_fuzz.py with fresh random inputs and many
examples per property. CI runs the same properties seeded and bounded; a finding here becomes a case in
tests/reliability/bad_inputs.yaml (hypothesis prints the falsifying input).

    python benchmarks/fuzz_sweep.py --examples 500
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=500, help="Examples per property.")
    args = parser.parse_args()
    env = {**os.environ, "FTL_FUZZ_EXAMPLES": str(args.examples), "FTL_FUZZ_RANDOM": "1"}
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-q",
        "tests/reliability/test_fuzz.py",
    ]
    return subprocess.run(command, cwd=REPO, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
