"""Long property-based API run (issue 14): tests/test_api_fuzz.py with many more examples per
operation and a fresh seed, beside the default CI run measured in the same invocation.

    .venv/bin/python bench/api_fuzz.py [EXAMPLES_PER_OPERATION] [SEED]   # prints one JSON line
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(examples: int | None, seed: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AILO_FUZZ_SEED": str(seed)}
    if examples is not None:
        env["AILO_FUZZ_EXAMPLES"] = str(examples)
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                          "tests/test_api_fuzz.py::test_every_operation_survives_generated_requests"],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    line = next((l for l in out.stdout.splitlines() if l.startswith("fuzz: ")), None)
    result = json.loads(line[len("fuzz: "):]) if line else {}
    return {**result, "seed": seed, "passed": out.returncode == 0,
            **({} if out.returncode == 0 else {"tail": out.stdout[-2000:]})}


def main() -> None:
    examples = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else random.randrange(2**32)
    default, long = run(None, 20261129), run(examples, seed)
    print(json.dumps({"bench": "api_fuzz", "examples_per_operation": examples, "long": long,
                      "baseline_default_ci_run": default}))


if __name__ == "__main__":
    main()
