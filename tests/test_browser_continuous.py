"""The contributor page `/` against a real `ailo coordinator` process, in Debian's Chromium (issue 16).

Continuous contribution: the visitor registers and ticks "Keep contributing": with nobody
touching the page it trains at least three consecutive rounds, each accepted and aggregated,
shows the round, loss, ALC earned and bytes moved; hiding the tab (with "pause while hidden")
stops training until it is visible again; unticking stops the loop.

Serve inference: another visitor picks a room and clicks Serve; the page joins it over its
WebSocket (signed by its registered wallet), fetches its span from `--room-checkpoints`, and a
registered wallet is required; stopping leaves the room.
"""
from __future__ import annotations

import time

import json

import httpx
import pytest

from ailo.inference.checkpoints import make_hf_checkpoint
from ailo.testing.harness import chromium, ensure_built
from tests.pages import coordinator_process, open_page, register

pytestmark = pytest.mark.slow
USERNAME = "cora_continuous"


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory):
    ensure_built()
    state = tmp_path_factory.mktemp("coord")
    ckpts = tmp_path_factory.mktemp("ckpts")
    make_hf_checkpoint(ckpts / "tiny-llama", "llama", layers=2, heads=4, kv_heads=2, init_std=0.3)
    with coordinator_process(state, "--min-updates", "1", "--local-steps", "2", "--batch-size", "4", "--chunks", "4",
                             "--round-seconds", "600", "--room-checkpoints", str(ckpts)) as url:
        token = (state / "operator-token").read_text().strip()
        room = {"id": "pages", "slots": 1, "model": json.loads((ckpts / "tiny-llama" / "config.json").read_text()),
                "checkpoint": "tiny-llama"}
        assert httpx.post(f"{url}/v1/rooms", json=room, headers={"authorization": f"Bearer {token}"}).status_code == 201
        yield url


def cont(page) -> dict:
    return page.evaluate("window.ailoPage.continuous || null")


def set_visibility(page, state: str) -> None:
    page.evaluate("""(s) => {
      Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => s });
      document.dispatchEvent(new Event('visibilitychange'));
    }""", state)


def test_page_keeps_training_round_after_round(coordinator):
    url = coordinator
    with chromium() as ctx:
        page, errors = open_page(ctx, url)
        address = register(page, USERNAME)
        first_round = httpx.get(f"{url}/v1/status").json()["round"]

        assert page.is_checked("#pause-hidden")
        page.check("#continuous")
        page.wait_for_function("window.ailoPage.continuous && window.ailoPage.continuous.accepted >= 3", timeout=300_000)
        st = cont(page)
        rounds = st["rounds"][:3]
        assert [r["status"] for r in rounds] == ["accepted"] * 3, st
        assert [r["round"] for r in rounds] == [first_round, first_round + 1, first_round + 2]
        assert all(r["aggregated"] for r in rounds) and st["refused"] == 0
        assert st["bytesUp"] >= sum(r["bytes"] for r in rounds) and st["bytesDown"] > 0
        assert page.is_disabled("#train")  # one loop at a time
        assert page.inner_text("#cont-accepted").startswith(str(st["accepted"]))

        # Rewards minted at each close: the page shows what it earned since the toggle.
        page.wait_for_function("window.ailoPage.continuous.earned > 0", timeout=120_000)
        st = cont(page)
        bal = httpx.get(f"{url}/v1/balance/{address}").json()
        assert 0 < st["earned"] <= bal["spendable"] + bal.get("pending", 0)
        assert page.inner_text("#cont-earned").endswith("ALC") and page.inner_text("#cont-earned") != "0.00000000 ALC"
        server = [u for u in httpx.get(f"{url}/v1/dashboard/updates").json()["updates"] if u["client"] == USERNAME]
        assert len(server) >= 3 and {u["status"] for u in server} == {"accepted"}

        # Hidden tab: the loop finishes its round, then pauses; visible again: it resumes.
        set_visibility(page, "hidden")
        page.wait_for_function("window.ailoPage.continuous.phase === 'paused'", timeout=120_000)
        paused_at = cont(page)["accepted"]
        time.sleep(3)
        assert cont(page)["accepted"] == paused_at and cont(page)["phase"] == "paused"
        set_visibility(page, "visible")
        page.wait_for_function(f"window.ailoPage.continuous.accepted > {paused_at}", timeout=120_000)

        # Unticking stops the loop after the round in flight.
        page.uncheck("#continuous")
        page.wait_for_function("window.ailoPage.continuous.running === false", timeout=120_000)
        done = cont(page)["accepted"]
        time.sleep(2)
        assert cont(page)["accepted"] == done and cont(page)["phase"] == "stopped"
        assert not errors, errors
        backoff_rule(page)


def backoff_rule(page) -> None:
    """Pure back-off rule in the page: doubling from 1 s, never below Retry-After, capped."""
    got = page.evaluate("""async () => {
      const { backoffSeconds, isTransient } = await import('/static/ailo.js');
      const api = await import('/static/ailo.js');
      const busy = new api.HttpError(429, 'rate_limited', 'rate_limited', 7);
      const down = new api.HttpError(503, 'x', null, null);
      const refused = new api.HttpError(409, 'stale', 'stale_round', null);
      return { seq: [backoffSeconds(0, down), backoffSeconds(1, down), backoffSeconds(2, down), backoffSeconds(32, down), backoffSeconds(60, down)],
               said: backoffSeconds(0, busy), ok: backoffSeconds(8, null),
               transient: [isTransient(busy), isTransient(down), isTransient(refused), isTransient(new TypeError('Failed to fetch'))] };
    }""")
    assert got["seq"] == [1, 2, 4, 60, 60]
    assert got["said"] == 7 and got["ok"] == 0
    assert got["transient"] == [True, True, False, True]


def test_page_serves_inference_from_the_ui(coordinator, tmp_path):
    url = coordinator
    # `ailo mirror sync` copies the room's checkpoint pieces beside the model's chunks
    from ailo.mirrors import sync_mirror
    rep = sync_mirror(url, tmp_path / "mirror")
    pieces = {c["sha256"] for c in httpx.get(f"{url}/v1/rooms/pages/weights").json()["chunks"]}
    assert pieces and pieces <= {f.name for f in (tmp_path / "mirror").iterdir()}
    assert pieces <= set(rep.downloaded)
    with chromium() as ctx:
        page, errors = open_page(ctx, url)
        assert page.is_disabled("#serve")  # a registered wallet first
        address = register(page, "sam_serves")
        page.select_option("#serve-room", "pages")
        page.click("#serve")
        page.wait_for_function("window.ailoPage.node && window.ailoPage.node.status === 'serving'", timeout=60_000)
        node = page.evaluate("window.ailoPage.node")
        assert node["address"] == address and node["loaded"] == [0, 4]
        view = httpx.get(f"{url}/v1/rooms/pages").json()
        assert view["state"] == "ready" and view["nodes"][0]["url"].startswith("browser://")

        # Generating here needs a PAY_INFERENCE from a funded requester (the real ledger);
        # that path (page + processes, paid on this chain, failover): tests/test_browser_room_paid.py.
        info = httpx.get(f"{url}/v1/rooms/pages/weights?start=0&end=4").json()
        assert node["weights"]["tensors"] == len(info["tensors"]) and node["weights"]["totalBytes"] == info["total_bytes"]
        # The dashboard lists the browser node with its span and requests served.
        dash = ctx.new_page()
        dash.on("pageerror", lambda e: errors.append(str(e)))
        dash.goto(f"{url}/dashboard")
        dash.wait_for_function("window.ailoDashboard && window.ailoDashboard.ready", timeout=60_000)
        rows = dash.evaluate("window.ailoDashboard.roomNodes")
        assert [(r["room"], r["kind"], r["span"], r["ready"], r["served"]) for r in rows] == [
            ("pages", "browser", view["plan"]["spans"][0]["label"], True, 0)]
        assert "browser" in dash.inner_text("#room-nodes") and "requests served" in dash.inner_text("#room-nodes")
        dash.close()
        page.click("#serve")  # stop: the page leaves the room
        deadline = time.time() + 10
        while httpx.get(f"{url}/v1/rooms/pages").json()["nodes"]:
            assert time.time() < deadline
            time.sleep(0.2)
        assert not errors, errors
