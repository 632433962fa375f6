"""CLI start-up: what `ailo --help` (and every command's parser) costs in imports and wall time,
against the same parser built with torch imported beside it (`import ailo.model`: what every
`ailo` call paid before the presets moved to ailo/presets.py), in fresh interpreters launched
by this process, alternately. `python -X importtime` gives the imports; the floor is a bare
`python -c pass`. Prints one JSON line (target: help imports < 0.5 s on an idle box).

    .venv/bin/python bench/cli_startup.py [--repeat 5]
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time

from common import ROOT, add_out, emit

CASES = {
    "help": ["-m", "ailo.cli.main", "--help"],
    "with_torch": ["-c", "import ailo.model, ailo.cli.main as m; m.build_parser().format_help()"],
    "floor": ["-c", "pass"],
}
LINE = re.compile(r"import time:\s+\d+ \|\s+(\d+) \| (\s*)(\S+)")


def once(args: list[str]) -> tuple[float, float, bool]:
    """(wall s, imports s = the sum of top-level modules' cumulative times, torch imported?)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AILO_HOME": os.environ.get("AILO_HOME", str(ROOT))}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-X", "importtime", *args], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=300)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{args}: exit {r.returncode}: {r.stderr[-2000:]}")
    top = [LINE.match(ln) for ln in r.stderr.splitlines()]
    imports = sum(int(m.group(1)) for m in top if m and not m.group(2)) / 1e6
    torch = any(m and m.group(3) == "torch" for m in top)
    return wall, imports, torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=5, help="runs per case (medians reported)")
    add_out(ap)
    args = ap.parse_args()
    runs: dict[str, list[tuple[float, float, bool]]] = {k: [] for k in CASES}
    for _ in range(args.repeat):  # interleaved: a load change hits every case alike
        for name, argv in CASES.items():
            runs[name].append(once(argv))
    med = {k: (statistics.median(w for w, _, _ in v), statistics.median(i for _, i, _ in v)) for k, v in runs.items()}
    result = {
        "bench": "cli_startup", "repeat": args.repeat, "load1": round(os.getloadavg()[0], 1),
        "help_imports_s": round(med["help"][1], 3), "help_wall_s": round(med["help"][0], 3),
        "help_imports_torch": any(t for _, _, t in runs["help"]),
        "with_torch_imports_s": round(med["with_torch"][1], 3), "with_torch_wall_s": round(med["with_torch"][0], 3),
        "python_floor_wall_s": round(med["floor"][0], 3),
        "wall_speedup": round(med["with_torch"][0] / med["help"][0], 1),
        "target_help_imports_s": 0.5,
    }
    emit(result, args)


if __name__ == "__main__":
    main()
