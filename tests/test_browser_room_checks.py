"""The dashboard shows spot-check verdicts (issue 10): a garbage node is caught through the real
generate route, and the page's room tables (the dashboard's code, in headless Chromium) show the
mismatches and the eviction read from GET /v1/rooms."""
from __future__ import annotations

import httpx
import pytest

from ailo.server import devserver
from ailo.inference.checkpoints import make_hf_checkpoint
from ailo.inference.node import NodeService
from ailo.server.node_app import build_node_app
from ailo.inference.rooms import RoomRegistry
from ailo.inference.serving import ThreadedServer
from ailo.inference.families import read_spec
from ailo.inference.verify import ReferenceSpans
from ailo.wallet import Wallet
from ailo.testing.harness import chromium, ensure_built
from tests.room_helpers import signed

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]  # a browser (Chromium) against a dev coordinator


def test_dashboard_room_tables_show_mismatches_and_evictions(tmp_path):
    ensure_built()
    make_hf_checkpoint(tmp_path, "llama", layers=2, init_std=0.05)
    reg = RoomRegistry(clock=lambda: 0.0)
    reg.create_room("r", read_spec(tmp_path), 2)
    ref = ReferenceSpans(tmp_path)
    server = devserver.serve(reg, verify_p=1.0, references=lambda room: ref, web=True)
    nodes = []
    try:
        for i, attack in enumerate([None, "zeros"]):
            svc = NodeService(tmp_path, attack=attack)
            srv = ThreadedServer(build_node_app(svc)).start()
            rec = reg.join("r", url=srv.url, memory=10 ** 9, fingerprint=svc.spec.fingerprint(),
                           address=Wallet.from_label(f"dash-node-{i}").address)
            nodes.append((svc, srv, rec))
        for svc, _, rec in nodes:
            span = reg.get("r").span_of(rec)
            svc.load(span.start, span.end)
            reg.heartbeat("r", rec.node_id, (span.start, span.end))
        cheat = nodes[1][2]
        with httpx.Client(base_url=server.url, timeout=60) as http:
            for _ in range(3):  # one audit per span per request (p = 1): three strikes evict
                done = signed(http, "/v1/rooms/r/generate", Wallet.from_label("dash-asker"),
                              {"input_ids": [1, 2, 3], "max_new_tokens": 3, "stream": False}).json()
                assert cheat.address not in done["payees"]
        with chromium() as ctx:
            page = ctx.new_page()
            page.goto(server.url + "/harness")
            page.wait_for_function("window.ailoReady === true", timeout=60_000)
            html = page.evaluate("async () => ailo.roomChecksTable(await (await fetch('/v1/rooms')).json())")
        assert 'id="room-checks"' in html and "mismatch 3" in html and "ok 3" in html
        assert 'id="room-events"' in html and html.count('<td class="bad">mismatch</td>') == 3
        assert '<td class="bad">evicted</td>' in html and cheat.node_id[:12] in html
    finally:
        for _, srv, _ in nodes:
            srv.stop()
        server.stop()
