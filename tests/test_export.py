"""Model release: a trained tiny model exported to Hugging Face format gives transformers the
same logits as Ailo's own model; the plain format round-trips; the CLI and the read-only
exports routes behave."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from safetensors.torch import load_file

from ailo.chunks import split_state_dict
from ailo.export import ExportError, export_version, load_version
from ailo.model import build_model
from ailo.server.exports_api import make_exports_router
from ailo.storage.rounds_store import SQLiteRoundStore
from ailo.tokenizer import encode
from tests.procs import ROOT

TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer"


def trained_tiny(seed: int = 3) -> torch.nn.Module:
    """ailo-tiny after a few AdamW steps plus noise, so biases and LayerNorms are far from init."""
    torch.manual_seed(seed)
    model = build_model("ailo-tiny", seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = torch.tensor([encode(TEXT * 2)[:64]])
    for _ in range(3):
        opt.zero_grad()
        model(ids[:, :-1], ids[:, 1:]).backward()
        opt.step()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.eval()


def make_state(tmp_path, models: list[torch.nn.Module]) -> SQLiteRoundStore:
    """A coordinator state directory holding `models` as versions 0, 1, ..."""
    store = SQLiteRoundStore(tmp_path / "state")
    for v, m in enumerate(models):
        manifest, blobs = split_state_dict(m.state_dict(), 4, version=v, preset="ailo-tiny", config=m.cfg.to_dict())
        for sha, data in blobs.items():
            store.put_chunk(sha, data)
        task = {"steps": 1}
        if v == 0:
            store.start(manifest.to_json(), 10.0, task, 1, time.time() + 60)
        else:
            store.publish(v, v, manifest.to_json(), 10.0 - v, task, 1, time.time() + 60)
    return store


def test_hf_export_matches_ailo_logits(tmp_path, one_thread):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = trained_tiny()
    store = make_state(tmp_path, [build_model("ailo-tiny", seed=0), model])
    meta = export_version(load_version(store), tmp_path / "hf")
    assert meta["version"] == 1 and meta["format"] == "hf"
    hf, info = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert type(hf).__name__ == "GPT2LMHeadModel"
    hf.eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    ids = tok(TEXT, return_tensors="pt")["input_ids"]
    assert ids[0].tolist() == encode(TEXT)          # same GPT-2 BPE on both sides
    ids = torch.cat([ids, ids], dim=1)[:, :64]      # the full context
    with torch.no_grad():
        ours, theirs = model(ids), hf(ids).logits
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() < 1e-4
    # the untrained version 0 differs: the test would notice a wrong version being exported
    v0 = export_version(load_version(store, 0), tmp_path / "hf0")
    assert v0["version"] == 0
    with torch.no_grad():
        old = AutoModelForCausalLM.from_pretrained(tmp_path / "hf0").eval()(ids).logits
    assert (old - ours).abs().max().item() > 1e-2


def test_ailo_format_round_trips(tmp_path):
    model = trained_tiny()
    store = make_state(tmp_path, [model])
    meta = export_version(load_version(store, 0), tmp_path / "plain", "ailo")
    state = load_file(tmp_path / "plain" / "model.safetensors")
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    manifest = json.loads((tmp_path / "plain" / "manifest.json").read_text())
    assert manifest["version"] == 0 and manifest["preset"] == "ailo-tiny"
    assert set(meta["files"]) == {"model.safetensors", "manifest.json", "README.md"}
    card = (tmp_path / "plain" / "README.md").read_text()
    assert "version 0" in card and "Apache-2.0" in card and "Contributors" in card
    for f in (tmp_path / "plain").iterdir():  # a release is public: world-readable
        assert f.stat().st_mode & 0o044 == 0o044, f
    with pytest.raises(ExportError, match="already exists"):
        export_version(load_version(store, 0), tmp_path / "plain", "ailo")
    with pytest.raises(ExportError, match="no model version 7"):
        load_version(store, 7)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ailo.cli.main", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={"PYTHONPATH": str(ROOT), "AILO_HOME": str(ROOT),
                                                       "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})


@pytest.mark.slow  # > 20 s on the 2-core box (make test runs it; make test-fast skips it)
def test_cli_export_generate_and_dashboard_routes(tmp_path):
    store = make_state(tmp_path, [build_model("ailo-tiny", seed=0), trained_tiny()])
    store.close()
    state = tmp_path / "state"
    r = _cli("export", "--state", str(state))
    assert r.returncode == 0, r.stderr
    out = state / "exports" / "v1-hf"
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    g = _cli("generate", "--model", str(out), "--max-new-tokens", "8", "--seed", "1", "To be, or not")
    assert g.returncode == 0, g.stderr
    assert g.stdout.startswith("To be, or not") and len(g.stdout.strip()) > len("To be, or not")
    assert _cli("export", "--state", str(state), "--version", "0", "--format", "ailo").returncode == 0

    bad = _cli("export", "--state", str(state), "--version", "9")
    assert bad.returncode == 2 and "no model version 9" in bad.stderr
    assert _cli("export", "--state", str(tmp_path / "nope")).returncode == 2
    assert "not a Hugging Face model folder" in _cli("generate", "--model", str(tmp_path), "x").stderr

    (state / "exports" / ".v2-hf.123.tmp").mkdir()     # an export being written is not listed
    app = FastAPI()
    app.include_router(make_exports_router(state / "exports"))
    client = TestClient(app)
    listing = client.get("/v1/exports").json()
    assert [e["name"] for e in listing["exports"]] == ["v1-hf", "v0-ailo"]
    latest = listing["latest"]
    assert latest["version"] == 1 and latest["format"] == "hf"
    files = {f["name"]: f for f in latest["files"]}
    body = client.get(files["config.json"]["url"]).json()
    assert body["model_type"] == "gpt2"
    assert client.get("/exports/v1-hf/export.json").json()["version"] == 1
    assert client.get("/exports/v1-hf/..%2F..%2Fstate.db").status_code in (400, 404)
    assert client.get("/exports/v1-hf/state.db").status_code == 404
    assert client.get("/exports/.v2-hf.123.tmp/config.json").status_code in (400, 404)


@pytest.mark.slow
def test_running_coordinator_dashboard_links_latest_export(tmp_path):
    """`ailo export` beside a running coordinator; its dashboard (headless Chromium) links it."""
    import httpx

    from ailo.testing.harness import chromium, ensure_built
    from tests.procs import ailo, free_port, stop, wait_healthy

    ensure_built()
    state, port = tmp_path / "state", free_port()
    url = f"http://127.0.0.1:{port}"
    proc = ailo("coordinator", "--state", str(state), "--port", str(port), "--open", log=tmp_path / "coord.log")
    try:
        wait_healthy(url, proc)
        assert httpx.get(f"{url}/v1/exports").json() == {"exports": [], "latest": None}
        r = _cli("export", "--state", str(state))
        assert r.returncode == 0, r.stderr
        with chromium() as ctx:
            page = ctx.new_page()
            page.goto(f"{url}/dashboard")
            page.wait_for_function("window.ailoDashboard && window.ailoDashboard.ready", timeout=60_000)
            d = page.evaluate("window.ailoDashboard")
            assert not d["errors"], d["errors"]
            assert d["release"]["version"] == 0 and d["release"]["format"] == "hf"
            href = page.get_attribute("#release-link", "href")
            names = page.locator("#release a").all_inner_texts()
        assert href == "/exports/v0-hf/export.json"
        assert "model.safetensors" in names and "config.json" in names
        meta = httpx.get(url + href).json()
        weights = httpx.get(f"{url}/exports/v0-hf/model.safetensors")
        assert weights.status_code == 200 and len(weights.content) == meta["files"]["model.safetensors"]["size"]
    finally:
        stop(proc)


@pytest.mark.slow  # > 20 s on the 2-core box (make test runs it; make test-fast skips it)
def test_train_out_is_a_model_generate_loads(tmp_path):
    """`ailo train --out DIR` saves a Hugging Face folder that `ailo generate` samples from."""
    import os
    import subprocess
    import sys
    from tests.procs import ROOT
    env = {**os.environ, "AILO_HOME": os.environ.get("AILO_HOME", str(ROOT)), "OMP_NUM_THREADS": "1"}
    run = lambda *a: subprocess.run([sys.executable, "-m", "ailo.cli.main", *a], capture_output=True, text=True,
                                    cwd=ROOT, env=env, timeout=600)
    out = tmp_path / "trained"
    r = run("train", "--steps", "2", "--eval-every", "2", "--batch-size", "2", "--seq-len", "32", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert (out / "config.json").is_file() and "1 machine" not in (out / "README.md").read_text()
    r = run("generate", "--model", str(out), "--max-new-tokens", "5", "--seed", "1", "To be")
    assert r.returncode == 0 and r.stdout.startswith("To be"), r.stderr
    r = run("train", "--steps", "1", "--out", str(out))
    assert r.returncode == 2 and "already exists" in r.stderr
