"""`ailo` starts without PyTorch (issue 30's newcomer hour, issue 24's fast loop): building the
parser, every `--help`, the wallet and chain commands and argument/config errors import no
torch (nor the other heavy libraries), so they answer in a fraction of a second instead of the
3-10 s a torch import costs; commands that train or serve import it inside their handlers.

Each check runs in a fresh interpreter: the test process itself has long imported torch."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from ailo.federation.core.strategy_names import AGGREGATOR_NAMES, OUTER_OPTIMIZERS
from tests.procs import ROOT

HEAVY = ("torch", "numpy", "safetensors", "transformers", "fastapi", "uvicorn", "httpx")


def fresh_python(code: str) -> dict:
    """Run `code` in a new interpreter on this tree; it prints one JSON line (its last line)."""
    env = {**os.environ, "AILO_HOME": str(ROOT), "PYTHONPATH": str(ROOT)}
    env.pop("AILO_DEBUG", None)
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                       timeout=120, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_building_the_parser_imports_no_torch():
    out = fresh_python(f"""
        import json, sys
        import ailo.cli.main as m
        m.build_parser()
        print(json.dumps(sorted(x for x in {HEAVY!r} if x in sys.modules)))
    """)
    assert out == [], f"`import ailo.cli.main` + build_parser() imported {out}: move the import into the handler"


def test_help_wallet_chain_and_argument_errors_import_no_torch(tmp_path):
    bad_config = tmp_path / "coord.toml"
    bad_config.write_text("min-updtes = 5\n")
    chain = ROOT / "tests" / "vectors" / "ledger" / "valid_basic.json"
    wallet = tmp_path / "w.json"
    out = fresh_python(f"""
        import argparse, contextlib, io, json, sys
        from ailo.cli.main import build_parser, main

        def run(*argv):
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
                try:
                    return main(list(argv)), buf.getvalue()
                except SystemExit as exc:
                    return exc.code, buf.getvalue()

        def commands(parser, prefix=()):
            yield prefix
            for action in parser._actions:
                if isinstance(action, argparse._SubParsersAction):
                    for name, sub in action.choices.items():
                        yield from commands(sub, prefix + (name,))

        codes = {{}}
        for cmd in commands(build_parser()):
            codes[" ".join(("ailo",) + cmd + ("--help",))] = run(*cmd, "--help")[0]
        now = str(json.load(open({str(chain)!r}))["now_ms"])
        for argv in (["--version"], ["wallet", "new", "--wallet", {str(wallet)!r}],
                     ["wallet", "show", "--wallet", {str(wallet)!r}],
                     ["chain", "verify", "--file", {str(chain)!r}, "--now", now],
                     ["coordinator", "--config", {str(bad_config)!r}],
                     ["worker", "--coordinator", "ftp://x"], ["train", "--preset", "ailo-huge"]):
            codes[" ".join(["ailo", *argv])] = run(*argv)[0]
        print(json.dumps({{"codes": codes, "heavy": sorted(x for x in {HEAVY!r} if x in sys.modules)}}))
    """)
    codes = out["codes"]
    assert len([c for c in codes if c.endswith("--help")]) >= 15, codes  # every command and subcommand
    assert all(code == 0 for c, code in codes.items() if c.endswith("--help")), codes
    assert codes["ailo --version"] == 0 and codes["ailo wallet new --wallet " + str(wallet)] == 0
    assert codes["ailo wallet show --wallet " + str(wallet)] == 0
    assert codes[f"ailo chain verify --file {chain} --now " + str(json.loads(chain.read_text())["now_ms"])] == 0
    assert codes[f"ailo coordinator --config {bad_config}"] == 2  # unknown option: one-line error
    assert codes["ailo worker --coordinator ftp://x"] == 2 and codes["ailo train --preset ailo-huge"] == 2
    assert out["heavy"] == [], f"these commands imported {out['heavy']}: keep them out of parser-time imports"


def test_mirror_and_manifest_code_import_no_torch(tmp_path):
    """`ailo mirror sync` moves and verifies bytes: ailo.chunks loads torch and safetensors only
    where tensors are made or read."""
    out = fresh_python(f"""
        import contextlib, io, json, sys
        from ailo.chunks import ChunkStore, DirectorySource, Manifest
        from ailo.cli.main import main
        from ailo.mirrors import sync_mirror  # what `ailo mirror sync` runs
        with contextlib.redirect_stdout(io.StringIO()):
            code = main(["mirror", "nginx-conf", "--root", {str(tmp_path)!r}, "--prefix", {str(tmp_path)!r}])
        manifest = Manifest.from_json('{{"version": 1, "preset": "p", "chunks": [], "tensors": {{}}}}')
        ChunkStore(manifest, DirectorySource({str(tmp_path)!r})).prefetch()
        print(json.dumps([code, sorted(x for x in ("torch", "safetensors", "numpy") if x in sys.modules)]))
    """)
    assert out == [0, []], f"ailo mirror / ailo.chunks imported {out[1]}"


def test_parser_choices_name_exactly_the_strategies_the_coordinator_builds():
    """The CLI's torch-free name lists (strategy_names.py) and the registries that build the
    strategies are one set: a new aggregator or outer optimizer must be added to both."""
    from ailo.federation.core.outer import make_outer
    from ailo.federation.core.registry import AGGREGATORS

    assert set(AGGREGATOR_NAMES) == set(AGGREGATORS)
    for name in OUTER_OPTIMIZERS:
        make_outer(name, 1.0)  # raises ValueError for a name it does not build
