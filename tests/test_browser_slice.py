"""The contributor page trains a slice (issue 26 part 3): a real `ailo coordinator` process,
Debian's Chromium on wasm, the page declaring a memory budget too small for the full task.

The page sees that the model's training state exceeds its budget, so it only verifies the
chunks into IndexedDB (nothing assembled in memory); its task request carries the budget; the
coordinator answers with a slice; the page trains the slice's tensors with frozen blocks read
from IndexedDB one at a time (ailo/web/src/slice.js, frozen.js) and uploads a signed update of
exactly the slice's tensors; the update is accepted and paid by the slice's share, and the chain
verifies in Python and in the page.

CI runs `ailo-tiny` at sequence 32 (budget = one block's slice state). The flagship runs the
same test with AILO_SLICE_PRESET=ailo-1b (the page's own wasm budget, 1.5 GiB; bench/RESULTS.md,
"The page trains an ailo-1b slice", says what that costs on the 2-core box).
"""
from __future__ import annotations

import os
import time

import httpx
import pytest

from ailo.federation.core.slices import HEADROOM, make_slice, slice_state_bytes
from ailo.ledger import verify_chain
from ailo.model import build_model, count_parameters, get_preset
from ailo.testing.harness import chromium, ensure_built
from tests.pages import READY, coordinator_process, register

pytestmark = pytest.mark.slow

PRESET = os.environ.get("AILO_SLICE_PRESET", "ailo-tiny")
SEQ = 32
STEPS = int(os.environ.get("AILO_SLICE_STEPS", "8"))
ONE_B = PRESET == "ailo-1b"
BATCH = int(os.environ.get("AILO_SLICE_BATCH", "1" if ONE_B else "4"))


def budget_for_one_block(preset: str) -> int:
    """A budget that holds the slice state of one block (micro-batch 1) and nothing more."""
    cfg = get_preset(preset)
    shapes = {n: tuple(t.shape) for n, t in build_model(preset, device="meta").state_dict().items()}
    need = slice_state_bytes(cfg, shapes, make_slice(shapes, cfg.n_layer, 1, 2), "adamw", 1, SEQ)
    return int(need / (1 - HEADROOM)) + (1 << 20)


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory):
    ensure_built()
    flags = ["--preset", PRESET, "--seq-len", str(SEQ), "--batch-size", str(BATCH), "--local-steps", str(STEPS),
             "--min-updates", "1", "--round-seconds", "900", "--device", "cpu"]
    if ONE_B:  # ~50 MB chunks (bf16) so the page streams a block without a 400 MB chunk in memory
        flags += ["--chunks", "64", "--holdout-sequences", "8"]
    with coordinator_process(tmp_path_factory.mktemp("coord"), *flags, timeout=900 if ONE_B else 120) as url:
        yield url


def test_page_trains_a_slice_accepted_and_paid(coordinator):
    url = coordinator
    # ailo-1b: the page's own wasm budget (1.5 GiB); a small preset: a budget that only a slice fits.
    query = "?backend=wasm&askAboveMB=100000" + ("" if ONE_B else f"&budget={budget_for_one_block(PRESET)}")
    with chromium() as ctx:
        t0 = time.time()
        errors: list[str] = []
        page = ctx.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{url}/{query}")
        page.wait_for_function(READY, timeout=(1200 if ONE_B else 120) * 1000)  # ailo-1b: 3.3 GB into IndexedDB
        st = page.evaluate("window.ailoPage")
        assert st["backend"] == "wasm" and st["budget"] < 20 * count_parameters(build_model(PRESET, device="meta"))
        assert st["model"]["via"] == "stream", st["model"]  # too large for the budget: only verified into IndexedDB
        assert st["model"]["downloadedBytes"] == st["model"]["totalBytes"] > 0
        t_load = time.time() - t0
        address = register(page, "slice_page")

        page.click("#train")
        deadline = time.time() + (1800 if ONE_B else 240)
        while not page.evaluate("window.ailoPage.rounds.length > 0"):
            assert time.time() < deadline, page.evaluate("window.ailoPage.errors")
            if ONE_B:  # a long run: say where it is
                print(time.strftime("%H:%M:%S"), page.inner_text("#train-status"), "|", page.inner_text("#throughput"),
                      flush=True)
            time.sleep(30 if ONE_B else 1)
        r = page.evaluate("window.ailoPage.rounds[0]")
        assert "error" not in r, (r, page.evaluate("window.ailoPage.errors"), errors)
        assert r["reply"]["status"] == "accepted", r
        sl = r["slice"]
        assert sl and 0 < sl["share"] < 1 and sl["units"], r
        assert r["steps"] == STEPS and r["tokens"] == STEPS * BATCH * SEQ
        print(f"{PRESET} slice {sl['units']} ({sl['params']:,} params, share {sl['share']}, micro-batch {sl['microBatch']}): "
              f"page ready {t_load:.1f} s, {r['steps']} steps in {r['seconds']:.1f} s, update {r['bytes']:,} B, "
              f"round wall {r['wallSeconds']:.1f} s, losses {r['losses'][0]:.3f} → {r['losses'][-1]:.3f}")

        # The coordinator recorded the slice, and the upload carried only its tensors.
        verdict = httpx.get(f"{url}/v1/updates/{r['reply']['update_id']}").json()
        assert verdict["status"] == "accepted", verdict
        full_bytes = sum(c["size"] for c in httpx.get(f"{url}/v1/model").json()["chunks"])
        assert r["bytes"] < full_bytes * max(0.5, 2 * sl["share"])

        # Paid once the round settles: the full formula × the slice's share, so less than a full update.
        deadline = time.time() + (600 if ONE_B else 120)
        while (bal := httpx.get(f"{url}/v1/balance/{address}").json())["spendable"] == 0 and time.time() < deadline:
            time.sleep(1)
        assert bal["spendable"] > 0, bal
        chain = httpx.get(f"{url}/v1/chain").json()
        mints = [tx for b in chain["blocks"] for tx in b["txs"] if tx["type"] == "MINT_TRAINING"]
        assert [(t["to"], t["amount"]) for t in mints] == [(address, bal["spendable"])]
        assert verify_chain(chain["blocks"]).ok
        page.click("#verify-chain")
        page.wait_for_function("window.ailoPage.chain && window.ailoPage.chain.height === %d" % chain["height"],
                               timeout=60_000)
        assert page.evaluate("window.ailoPage.chain.ok") is True
        assert not errors, errors
