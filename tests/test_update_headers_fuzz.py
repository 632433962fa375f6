"""Crafted safetensors headers against the real POST /v1/updates over real HTTP (hypothesis).

Every malformed header — a `data_offsets` end that is a string or a list, a bool or float where an
integer belongs, offsets out of range or overlapping, a 5000-deep JSON array, metadata of the
wrong type, a header length past the body — is answered 4xx with {"detail", "reason"}: never a
5xx, the keep-alive connection stays open for the next request, and nothing but the refusal row
is written (no pending or accepted update, no stored body, model version 0). On the code before
the shared header reader (`ailo/federation/core/safetensors_header.py`) the first string offset was
a 500 (TypeError) and uvicorn closed the connection."""
import http.client
import json
import struct
from urllib.parse import urlparse

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ailo.federation.coordinator.config import CoordinatorConfig
from ailo.federation.core.update_format import UpdateMeta
from ailo.server.services import ServiceConfig
from tests.live import live_coordinator

BAD_VALUES = st.one_of(st.text(max_size=8), st.lists(st.integers(-5, 5), max_size=3), st.booleans(),
                       st.floats(allow_nan=False, allow_infinity=False), st.none(), st.integers(-2**70, -1),
                       st.integers(2**63, 2**80), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    svc = ServiceConfig(proof_of_contribution=False, ip_junk_burst=10**6, ip_update_burst=10**6)
    with live_coordinator(tmp_path_factory.mktemp("fuzz") / "state", CoordinatorConfig(min_updates=2, val_batches=1),
                          svc) as (app, url, _):
        u = urlparse(url)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        conn.connect()
        yield app.state.coordinator, conn
        conn.close()


def _valid_header(coord) -> dict:
    header, at = {}, 0
    for name, t in coord.manifest.tensors.items():
        n = 4
        for d in t.shape:
            n *= d
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [at, at + n]}
        at += n
    return header


@st.composite
def crafted(draw, template: dict) -> bytes:
    kind = draw(st.sampled_from(["field", "offsets", "deep", "metadata", "raw", "length", "entry"]))
    header = json.loads(json.dumps(template))
    names = sorted(header)
    name = draw(st.sampled_from(names))
    if kind == "field":
        field = draw(st.sampled_from(["dtype", "shape", "data_offsets"]))
        header[name][field] = draw(BAD_VALUES)
    elif kind == "offsets":
        i = draw(st.integers(0, 1))
        header[name]["data_offsets"][i] = draw(st.one_of(BAD_VALUES, st.integers(-10, 10**9),
                                                         st.lists(st.integers(), min_size=1, max_size=2)))
    elif kind == "deep":
        depth = draw(st.integers(4, 5000))
        opener = draw(st.sampled_from(["[", '{"a":']))
        closer = "]" if opener == "[" else "}"
        header[name]["shape"] = "@@"
        text = json.dumps(header).replace('"@@"', opener * depth + "1" + closer * depth)
        return _body(text.encode(), draw(st.integers(0, 64)))
    elif kind == "metadata":
        header["__metadata__"] = draw(st.one_of(BAD_VALUES, st.dictionaries(st.text(max_size=4), BAD_VALUES,
                                                                              min_size=1, max_size=2)))
    elif kind == "entry":
        header[name] = draw(BAD_VALUES)
    elif kind == "raw":
        return _body(draw(st.binary(max_size=200)), draw(st.integers(0, 64)))
    else:  # a header length that lies
        raw = json.dumps(header).encode()
        claim = draw(st.integers(0, 2**64 - 1))
        return struct.pack("<Q", claim) + raw
    return _body(json.dumps(header).encode(), draw(st.integers(0, 4096)))


def _body(raw: bytes, data: int) -> bytes:
    return struct.pack("<Q", len(raw)) + raw + b"\0" * data


def test_crafted_headers_get_4xx_keep_the_connection_and_write_nothing(live):
    coord, conn = live
    template = _valid_header(coord)
    headers = {**UpdateMeta("fuzzer", 1, 0, 8, 5.0).to_headers(), "Content-Type": "application/octet-stream"}
    sock = conn.sock
    seen: dict[str, int] = {}

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(crafted(template))
    def attack(body):
        conn.request("POST", "/v1/updates", body=body, headers=headers)
        r = conn.getresponse()
        payload = json.loads(r.read())
        seen[payload.get("reason")] = seen.get(payload.get("reason"), 0) + 1
        assert 400 <= r.status < 500, (r.status, payload, body[:200])
        assert payload.get("reason") and payload.get("detail"), payload
        assert not r.will_close and conn.sock is sock, "the server closed the keep-alive connection"

    attack()
    conn.request("GET", "/healthz")
    r = conn.getresponse()
    assert r.status == 200 and json.loads(r.read())["version"] == 0 and conn.sock is sock
    store = coord.store
    assert store.updates(status="pending") == [] and store.updates(status="accepted") == []
    assert coord.version == 0 and coord.current_round().id == 1
    assert not any(p.is_file() for p in store.update_blob_path("0" * 64).parent.rglob("*")), "a body was stored"
    assert sum(seen.values()) >= 100 and seen.get("malformed", 0) >= 50, seen


def test_the_issue_s_headers_exactly(live):
    """The three bodies of issue 25: data_offsets[1] a string, a list, a 5000-deep array."""
    coord, conn = live
    template = _valid_header(coord)
    name = sorted(template)[0]
    headers = UpdateMeta("fuzzer", 1, 0, 8, 5.0).to_headers()
    for bad in ("12", [1, 2]):
        h = json.loads(json.dumps(template))
        h[name]["data_offsets"][1] = bad
        conn.request("POST", "/v1/updates", body=_body(json.dumps(h).encode(), 16), headers=headers)
        r = conn.getresponse()
        assert (r.status, json.loads(r.read())["reason"]) == (422, "malformed")
    deep = b"[" * 5000 + b"]" * 5000
    conn.request("POST", "/v1/updates", body=_body(deep, 0), headers=headers)
    r = conn.getresponse()
    assert (r.status, json.loads(r.read())["reason"]) == (422, "malformed") and not r.will_close
