"""End to end: a real coordinator on loopback, Debian's Chromium driven by Playwright.

The contributor page registers a username (an Ed25519 wallet made in the page), downloads and
caches the model, trains `ailo-tiny` for one round on a public sample text, signs and submits
its update; the coordinator validates it (Proof-of-Contribution), closes the round and pays;
the test reads the new balance through the API. A reload downloads zero chunk bytes; the chain
verifies in the page; a screenshot of the dashboard is saved under artifacts/browser/.
"""
from __future__ import annotations

import time

import httpx
import pytest

from ailo.ledger import verify_chain
from ailo.testing.harness import chromium, ensure_built
from procs import ROOT
from tests.pages import coordinator_process

pytestmark = pytest.mark.slow

ARTIFACTS = ROOT / "artifacts" / "browser"
USERNAME = "ada_browser"


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory):
    ensure_built()
    with coordinator_process(tmp_path_factory.mktemp("coord"), "--min-updates", "1", "--local-steps", "6",
                             "--batch-size", "8", "--chunks", "8", "--round-seconds", "600") as url:
        yield url


def wait_page(page, expr: str, timeout_s: float = 120):
    page.wait_for_function(expr, timeout=timeout_s * 1000)
    return page.evaluate("window.ailoPage || window.ailoDashboard")


def served(url: str) -> int:
    return httpx.get(f"{url}/v1/status").json()["counters"].get("chunk_bytes_served", 0)


def test_contributor_page_end_to_end(coordinator):
    url = coordinator
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with chromium() as ctx:
        page = ctx.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))

        # First visit: the model is downloaded, verified and cached.
        page.goto(f"{url}/?backend=wasm")
        st = wait_page(page, "window.ailoPage && window.ailoPage.ready")
        assert st["backend"] == "wasm" and page.inner_text("#backend").startswith("wasm")
        m = st["model"]
        assert m["version"] == 0 and m["downloadedBytes"] == m["totalBytes"] > 0 and m["cacheHits"] == 0
        assert st["chain"]["ok"], st

        # Register: the wallet is created in the page, the REGISTER tx signed there.
        page.fill("#username", USERNAME)
        page.click("#register")
        st = wait_page(page, "window.ailoPage.wallet && window.ailoPage.wallet.registered")
        address = st["wallet"]["address"]
        assert st["wallet"]["kind"] == "webcrypto" and st["webcryptoEd25519"]
        bal = httpx.get(f"{url}/v1/balance/{address}").json()
        assert bal["username"] == USERNAME and bal["spendable"] == 0

        # Second visit: same wallet from IndexedDB, zero chunk bytes from the coordinator.
        before = served(url)
        page.reload()
        st = wait_page(page, "window.ailoPage && window.ailoPage.ready")
        assert st["wallet"]["address"] == address and st["wallet"]["registered"]
        assert st["model"]["downloadedBytes"] == 0 and st["model"]["cacheHits"] == st["model"]["chunks"]
        assert served(url) == before
        assert "0.00 MB downloaded" in page.inner_text("#model-status")

        # One round: train on a public sample in the page, sign, submit; accepted and paid.
        assert page.input_value("#text-source")  # a sample is pre-selected
        t0 = time.time()
        page.click("#train")
        st = wait_page(page, "window.ailoPage.rounds.length > 0", timeout_s=300)
        r = st["rounds"][0]
        assert "error" not in r, (r, st["errors"])
        assert r["reply"]["status"] == "accepted" and r["reply"]["aggregated"] is True
        assert r["backend"] == "wasm" and r["steps"] == 6 and r["tokens"] == 6 * 8 * 64
        assert r["losses"][-1] < r["losses"][0]
        print(f"browser round: {r['steps']} steps in {r['seconds']:.1f} s ({r['tokens'] / r['seconds']:.0f} tok/s), "
              f"update {r['bytes']} B, wall {time.time() - t0:.1f} s")

        # The reward, read through the API, and shown by the page.
        deadline = time.time() + 60
        while (bal := httpx.get(f"{url}/v1/balance/{address}").json())["spendable"] == 0 and time.time() < deadline:
            time.sleep(0.5)
        assert bal["spendable"] > 0, bal
        page.wait_for_function("window.ailoPage.balance && window.ailoPage.balance.spendable > 0", timeout=60_000)
        assert page.evaluate("window.ailoPage.balance.spendable") == bal["spendable"]
        alc = f"{bal['spendable'] // 10**8}.{bal['spendable'] % 10**8:08d} ALC"
        assert page.inner_text("#balance") == alc

        # The chain, verified in the page, includes the mint; Python agrees.
        chain = httpx.get(f"{url}/v1/chain").json()
        mints = [tx for b in chain["blocks"] for tx in b["txs"] if tx["type"] == "MINT_TRAINING"]
        assert [(t["to"], t["amount"]) for t in mints] == [(address, bal["spendable"])]
        assert verify_chain(chain["blocks"]).ok
        page.click("#verify-chain")
        page.wait_for_function("window.ailoPage.chain && window.ailoPage.chain.height === %d" % chain["height"], timeout=60_000)
        assert page.evaluate("window.ailoPage.chain.ok") is True
        assert "Chain OK" in page.inner_text("#chain-status")
        # After the round the page moved to model version 1, fetching only changed chunks.
        page.wait_for_function("window.ailoPage.model.version === 1", timeout=60_000)
        page.screenshot(path=str(ARTIFACTS / "contributor.png"), full_page=True)

        # An unsigned update from elsewhere is refused, with its reason, and never paid.
        status = httpx.get(f"{url}/v1/status").json()
        refused = httpx.post(f"{url}/v1/updates", content=b"x" * 64, headers={
            "X-Ailo-Client": "mallory", "X-Ailo-Round": str(status["round"]), "X-Ailo-Base-Version": str(status["version"]),
            "X-Ailo-Samples": "8", "X-Ailo-Train-Loss": "1.0"})
        assert refused.status_code == 401 and refused.json()["reason"] == "unsigned"

        # The dashboard: loss per round, the contributor and her reward, accepted/refused updates.
        dash = ctx.new_page()
        dash.on("pageerror", lambda e: errors.append(str(e)))
        dash.goto(f"{url}/dashboard")
        d = wait_page(dash, "window.ailoDashboard && window.ailoDashboard.ready")
        assert d["chain"]["ok"] and not d["errors"], d["errors"]
        assert [p["x"] for p in d["points"]] == [0, 1]
        who = {c["username"]: c for c in d["contributors"]}
        assert who[USERNAME]["rewards"] == bal["spendable"] and who[USERNAME]["address"] == address
        assert [(u["client"], u["status"], u["reason"]) for u in d["updates"]] == [
            (USERNAME, "accepted", None), ("mallory", "refused", "unsigned")]
        assert "unsigned" in dash.inner_text("#updates") and USERNAME in dash.inner_text("#contributors")
        assert dash.locator("#loss-svg circle").count() == 2
        rep = {r["address"]: r for r in d["reputation"]}  # per-wallet record of accepted/refused work
        assert rep[address]["accepted"] == 1 and rep[address]["refused"] == 0 and USERNAME in dash.inner_text("#reputation")
        dash.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
        assert not errors, errors
