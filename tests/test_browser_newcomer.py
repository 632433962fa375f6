"""The contributor page for a newcomer (issue 30), in Chromium against a real coordinator: it
asks before a large download (showing the size), shows an accepted update as pending with its
round's progress until the round closes, then paid; a wallet backup restores the same address
in a fresh browser profile; sample texts have readable names."""
from __future__ import annotations

import json

import httpx
import pytest

from ailo.testing.harness import chromium, ensure_built
from tests.pages import coordinator_process, open_page, register

pytestmark = pytest.mark.slow


def test_pending_reward_backup_and_download_consent(tmp_path):
    ensure_built()
    # min-updates 2 with one contributor: the page's update waits for the deadline rule (quorum 1 at 2 × 15 s).
    (tmp_path / "coord").mkdir()
    with coordinator_process(tmp_path / "coord", "--min-updates", "2", "--round-seconds", "15", "--local-steps", "3",
                             "--batch-size", "4", "--chunks", "4") as url:
        with chromium() as ctx:
            page, errors = open_page(ctx, url, query="?backend=wasm&askAboveMB=1")
            st = page.evaluate("window.ailoPage")
            assert st["modelConsent"]["asked"] and st["model"] is None, "nothing downloads before the click"
            assert httpx.get(f"{url}/v1/status").json()["counters"].get("chunk_bytes_served", 0) == 0
            assert "MB" in page.inner_text("#model-download")
            page.click("#model-download")
            page.wait_for_function("window.ailoPage.model && window.ailoPage.model.version === 0", timeout=120_000)
            label = page.inner_text("#text-source option:checked")
            assert "_gut" not in label and ".txt" not in label and "kB" in label, label

            # a non-ASCII name is refused in the page, before any REGISTER (client ids travel in headers)
            page.fill("#username", "jörg")
            page.click("#register")
            assert "a-z, 0-9" in page.inner_text("#register-status")
            assert not page.evaluate("window.ailoPage.wallet && window.ailoPage.wallet.registered")
            address = register(page, "newcomer_ann")
            page.click("#train")
            page.wait_for_function("window.ailoPage.rewards.length > 0 && window.ailoPage.rewards[0].progress", timeout=300_000)
            pending = page.inner_text("#reward-status")
            assert "pending" in pending and "1 of 2" in pending and "deadline" in pending, pending
            assert page.evaluate("window.ailoPage.balance.spendable") == 0
            page.wait_for_function("window.ailoPage.rewards[0].status === 'paid'", timeout=180_000)
            assert "Paid" in page.inner_text("#reward-status")
            spendable = httpx.get(f"{url}/v1/balance/{address}").json()["spendable"]
            assert spendable > 0 and page.evaluate("window.ailoPage.rewards[0].earned") == spendable

            page.click("#backup-section summary")
            page.fill("#backup-pass", "correct horse battery")
            with page.expect_download() as dl:
                page.click("#backup")
            backup_file = tmp_path / "backup.json"
            dl.value.save_as(backup_file)
            assert not errors, errors
            dash = ctx.new_page()  # the dashboard: round progress and who is active, one unit for losses
            dash.goto(f"{url}/dashboard")
            dash.wait_for_function("window.ailoDashboard && window.ailoDashboard.ready && window.ailoDashboard.status")
            assert " of 2 accepted" in dash.inner_text("#kpi-progress") and dash.inner_text("#kpi-active") == "1"
            assert "nats/token" in dash.inner_text("#updates thead")
        backup = json.loads(backup_file.read_text())
        assert backup["address"] == address and "seed" not in json.dumps(backup)

        with chromium() as fresh:  # another browser profile: no wallet until the backup is restored
            page, errors = open_page(fresh, url, query="?backend=wasm")
            assert page.evaluate("window.ailoPage.wallet") is None
            page.click("#backup-section summary")
            page.set_input_files("#restore-file", str(backup_file))
            page.fill("#restore-pass", "wrong passphrase")
            page.click("#restore")
            page.wait_for_function("document.querySelector('#backup-status').textContent.includes('failed')")
            assert "wrong passphrase" in page.inner_text("#backup-status")
            page.fill("#restore-pass", "correct horse battery")
            page.click("#restore")
            page.wait_for_function("window.ailoPage.wallet && window.ailoPage.wallet.registered", timeout=60_000)
            st = page.evaluate("window.ailoPage")
            assert st["wallet"]["address"] == address and st["wallet"]["username"] == "newcomer_ann"
            page.wait_for_function(f"window.ailoPage.balance && window.ailoPage.balance.spendable === {spendable}")
            page.reload()  # the restored wallet is the browser's wallet now
            page.wait_for_function("window.ailoPage && window.ailoPage.ready", timeout=120_000)
            assert page.evaluate("window.ailoPage.wallet.address") == address
            assert not errors, errors
