"""The update upload: pieces under a Content-Length, the same bytes again on a retry."""
import hashlib
import json

import httpx

from ailo.backoff import Backoff
from ailo.federation.client import uploader
from ailo.federation.core.update_format import UpdateMeta


def test_a_large_body_goes_out_in_pieces_and_a_retry_resends_every_byte(monkeypatch):
    monkeypatch.setattr(uploader.BodyPieces, "PIECE", 1000)
    body = bytes(range(256)) * 40 + b"tail"                 # 10,244 bytes: 11 pieces
    seen: list[tuple[int, int, str, str]] = []               # (pieces, bytes, sha256, Content-Length)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json={"status": "accepted", "update_id": 7})
        pieces = list(request.stream)                       # what the transport was handed to send
        sent = b"".join(pieces)
        seen.append((len(pieces), len(sent), hashlib.sha256(sent).hexdigest(), request.headers["content-length"]))
        assert "transfer-encoding" not in request.headers   # a declared length, not chunked framing
        if len(seen) == 1:
            return httpx.Response(503, json={"detail": "busy"})
        return httpx.Response(202, content=json.dumps({"status": "queued", "update_id": 7}))

    class Transport(httpx.BaseTransport):                  # unlike MockTransport, does not read() first
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            return handler(request)

    http = httpx.Client(base_url="http://coordinator", transport=Transport())
    meta = UpdateMeta("alice", 1, 0, 16, 1.0)
    out = uploader.submit_update(http, body, meta, policy=Backoff(base=0.01, cap=0.01), poll=0.01)
    assert out["status"] == "accepted" and out["update_id"] == 7
    digest = hashlib.sha256(body).hexdigest()
    assert seen == [(11, len(body), digest, str(len(body)))] * 2
