"""Run the page's own modules in Node on WebGPU (Dawn): `ailo/web/node/runner.mjs`, the bundle
`ailo/web/build.mjs` makes of `ailo/web/src/runner/main.js`. Used by the WebGPU tests and
`bench/webgpu.py`.

On a CPU-only machine Dawn's adapter is Mesa's lavapipe (`make setup` installs it from
bookworm-backports); on a GPU machine, the GPU's Vulkan driver. A missing adapter is an error
(`WebGPUUnavailable`): CI must install lavapipe, not skip the tests. Only `AILO_SKIP_WEBGPU=1`
(a developer's machine without it) lets the tests skip.
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

RUNNER = Path(__file__).resolve().parent.parent / "web" / "node" / "runner.mjs"
SKIP_ENV = "AILO_SKIP_WEBGPU"


class WebGPUUnavailable(RuntimeError):
    pass


class RunnerError(RuntimeError):
    pass


def node_binary() -> str:
    return os.environ.get("AILO_NODE", "node")


def run(command: str, job: dict[str, Any] | None = None, *, timeout: float = 600, env: dict[str, str] | None = None,
        build: bool = True) -> dict:
    """`node runner.mjs COMMAND JOB.json` → its JSON answer; RunnerError with its stderr on failure.
    `build=False` uses the runner as it is (a machine that got a built copy and has no esbuild)."""
    if build:
        from ailo.testing.harness import ensure_built  # the build check (its module needs the server's packages)
        ensure_built()
    with tempfile.TemporaryDirectory(prefix="ailo-runner-") as tmp:
        path = Path(tmp) / "job.json"
        path.write_text(json.dumps(job or {}))
        proc = subprocess.run([node_binary(), str(RUNNER), command, str(path)], capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, **(env or {})})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RunnerError(f"runner {command}: no answer (exit {proc.returncode})\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    out = json.loads(lines[-1])
    if not out.get("ok"):
        raise RunnerError(f"runner {command}: {out.get('error')}\n{proc.stderr[-4000:]}")
    out["stderr"] = proc.stderr
    return out


def webgpu_info(timeout: float = 120) -> dict:
    """The runner's backend and adapter; WebGPUUnavailable when Dawn finds no adapter."""
    try:
        info = run("info", {"backend": "webgpu"}, timeout=timeout)
    except RunnerError as e:
        raise WebGPUUnavailable(
            "WebGPU (Dawn) found no adapter: install Mesa's lavapipe >= 24 (`make setup` runs "
            f"scripts/install-lavapipe.sh) or set {SKIP_ENV}=1 on a machine that cannot\n{e}") from e
    return info
