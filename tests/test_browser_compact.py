"""Compact downloads in the contributor page (issue 16 follow-up; served.py / patching.py in the
browser), against a real `ailo coordinator --compact-downloads` process, in Debian's Chromium.

First visit: the page loads the bf16 served model (½ of the fp32 bytes). It trains a round; the
round closes and the page moves to version 1 by fetching only the int8 patch (≈ ¼ of fp32),
rebuilding W_1 bit for bit (every chunk's sha256 matches the bf16 manifest) — zero chunk bytes
from the coordinator. A reload reads version 1 from IndexedDB. A patch altered in transit is
refused by the hash check and the page downloads the bf16 chunks instead. After a round trained
elsewhere (a native worker) while the tab was closed, the next visit patches from the version
it kept in IndexedDB + localStorage.
"""
from __future__ import annotations

import httpx
import pytest

from ailo.federation.client.worker import Worker
from ailo.wallet import Wallet
from ailo.testing.harness import chromium, ensure_built
from tests.pages import coordinator_process, open_page, register

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory):
    ensure_built()
    with coordinator_process(tmp_path_factory.mktemp("coord"), "--compact-downloads", "--min-updates", "1",
                             "--local-steps", "2", "--batch-size", "4", "--chunks", "4", "--round-seconds", "600") as url:
        yield url


def served(url: str) -> int:
    return httpx.get(f"{url}/v1/status").json()["counters"].get("chunk_bytes_served", 0)


def model(page) -> dict:
    return page.evaluate("window.ailoPage.model")


def train_round(page, version: int) -> None:
    """Click Train; the round is accepted and closes; the page then loads `version`."""
    n = page.evaluate("window.ailoPage.rounds.length") + 1
    page.click("#train")
    page.wait_for_function(f"window.ailoPage.rounds.length >= {n}", timeout=180_000)
    r = page.evaluate(f"window.ailoPage.rounds[{n - 1}]")
    assert "error" not in r, (r, page.evaluate("window.ailoPage.errors"))
    assert r["reply"]["status"] == "accepted" and r["reply"]["aggregated"] is True
    page.wait_for_function(f"window.ailoPage.model.version === {version}", timeout=120_000)


def test_page_loads_bf16_then_only_patches(coordinator, tmp_path):
    url = coordinator
    fp32 = httpx.get(f"{url}/v1/model").json()
    fp32_total = sum(c["size"] for c in fp32["chunks"])

    def bf16_total() -> int:
        return sum(c["size"] for c in httpx.get(f"{url}/v1/model?format=bf16").json()["chunks"])

    with chromium() as ctx:
        page, errors = open_page(ctx, url)
        m = model(page)
        assert (m["format"], m["via"], m["version"]) == ("bf16", "chunks", 0)
        assert m["downloadedBytes"] == m["totalBytes"] == bf16_total() and 0.45 * fp32_total < m["totalBytes"] < 0.55 * fp32_total
        assert "(bf16)" in page.inner_text("#model-status")
        register(page, "bea_bf16")

        # Round 1 closes: version 1 arrives as the int8 patch alone, rebuilt and hash-verified.
        before = served(url)
        train_round(page, 1)
        m = model(page)
        moved = served(url) - before  # the coordinator counts patch bytes with chunk bytes
        patch = httpx.get(f"{url}/v1/patches/1").content
        assert (m["format"], m["via"]) == ("bf16", "patch"), m
        assert moved == m["downloadedBytes"] == m["patchBytes"] == len(patch) < fp32_total / 3.5  # not one chunk
        assert "int8 patch" in page.inner_text("#model-status")

        # A reload: version 1 from this browser's cache.
        page.reload()
        page.wait_for_function("window.ailoPage && window.ailoPage.ready", timeout=120_000)
        m = model(page)
        assert (m["version"], m["format"], m["downloadedBytes"], m["cacheHits"]) == (1, "bf16", 0, m["chunks"])

        # A patch altered in transit: refused by the chunk hashes, the bf16 chunks are fetched.
        def corrupt(route):
            body = bytearray(route.fetch().body())
            body[-1] ^= 0x01  # the last scale's top byte ... or the last code: either way W_2 changes
            route.fulfill(status=200, body=bytes(body), headers={"content-type": "application/octet-stream"})
        page.route("**/v1/patches/*", corrupt)
        before = served(url)
        train_round(page, 2)
        m = model(page)
        assert (m["format"], m["via"]) == ("bf16", "chunks"), m
        patch2 = len(httpx.get(f"{url}/v1/patches/2").content)  # fetched once by the page's route, counted
        assert m["downloadedBytes"] > 0 and served(url) - before == m["downloadedBytes"] + 2 * patch2
        assert any("patch to v2" in n for n in m["notes"]), m["notes"]
        page.unroute("**/v1/patches/*")
        assert not errors, errors
        page.close()

        # The tab is closed while a native worker trains round 3; the next visit holds v2 (IndexedDB
        # chunks + localStorage manifest) and patches to v3.
        w = Worker(url, "nat_worker", progress=False, cache_dir=tmp_path / "worker",
                   wallet=Wallet.from_label("compact-native").with_username("nat_worker"))
        reports = w.run(1)
        assert reports and reports[0].response["status"] == "accepted" and reports[0].version == 2
        before = served(url)
        page, _ = open_page(ctx, url, errors)
        m = model(page)
        assert (m["version"], m["format"], m["via"]) == (3, "bf16", "patch"), m
        moved = served(url) - before
        assert moved == m["downloadedBytes"] == len(httpx.get(f"{url}/v1/patches/3").content)
        assert not errors, errors
