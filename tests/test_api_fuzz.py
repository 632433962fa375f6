"""Property-based API test (schemathesis over the app's own OpenAPI document, in-process).

Every operation the document lists — including routes other modules add later — gets
schema-valid and schema-violating requests. For each response: no 5xx (except an availability
answer the operation declares: 503 from generate while its room is forming), the status, content
type and body match what the document declares, and a refused request (4xx) changed nothing (ledger
tip and balances, round, model version, accepted updates). Rooms requests are signed by a
registered wallet and operator routes carry the operator token, so the fuzzer reaches the logic
behind authentication. The default run makes ≥ 1,000 requests (a couple of minutes on a
2-core box); `AILO_FUZZ_EXAMPLES=N` sets the per-operation count and `AILO_FUZZ_SEED` the seed;
bench/api_fuzz.py is the long run.
"""
from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from urllib.parse import unquote, urlsplit

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,  # noqa: E402
                                               status_code_conformance)
from starlette.testclient import TestClient  # noqa: E402

from ailo.federation.coordinator.coordinator import CoordinatorConfig  # noqa: E402
from ailo.federation.core.validate import ValidationConfig  # noqa: E402
from ailo.inference.auth import load_operator_token, sign_request  # noqa: E402
from ailo.inference.plan import PRESETS  # noqa: E402
from ailo.ledger.tx import register_tx  # noqa: E402
from ailo.ledger.verify import now_ms  # noqa: E402
from ailo.server.services import ServiceConfig, build_app  # noqa: E402
from ailo.wallet import Wallet  # noqa: E402

MIN_REQUESTS = 1000
CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance]
ROOM = "fuzzroom"   # exists (forming, no nodes): half of the generated room ids are replaced by it
SIGNED = ("/join", "/heartbeat", "/leave", "/generate")


@pytest.fixture()
def coordinator(tmp_path):
    """A started coordinator (lifespan run: ready, ticker on; rounds last an hour, so nothing
    changes state behind the fuzzer's back) and a registered wallet for signed requests."""
    svc = ServiceConfig(validation=ValidationConfig(registrations_per_hour=1e6), ip_updates_per_minute=1e6,
                        ip_update_burst=10**6, ip_junk_per_minute=1e6, ip_junk_burst=10**6)
    app = build_app(CoordinatorConfig(min_updates=2, val_batches=1, round_seconds=3600), tmp_path, svc)
    with TestClient(app, raise_server_exceptions=False) as client:
        preset = next(iter(PRESETS.values()))
        app.state.rooms.create_room(ROOM, preset.model, preset.nodes, tokenizer="gpt2")
        wallet = Wallet.from_label("fuzz/requester")
        assert client.post("/v1/register", json=register_tx(wallet, "fuzzer", now_ms()).to_json()).status_code == 200
        yield app, client, wallet, load_operator_token(tmp_path)


def state(app) -> tuple:
    s, coord = app.state.ledger.state(), app.state.coordinator
    return (s.height, s.tip_hash, tuple(sorted(s.spendable.items())), tuple(sorted(s.pending_in.items())),
            tuple(sorted(s.nonces.items())), tuple(sorted(s.names.items())), coord.current_round().id, coord.version,
            len(coord.store.updates(status="accepted")))


def send(client: TestClient, case, wallet: Wallet, operator_token: str):
    """The case as one HTTP request through the app, signed where the route wants a signature."""
    kw = case.as_transport_kwargs(base_url="http://testserver")
    headers = {k: v for k, v in kw.get("headers", {}).items() if k.lower() not in ("accept-encoding", "connection")}
    content = kw.get("data")
    if "json" in kw:
        content = json.dumps(kw["json"]).encode()
        headers.setdefault("Content-Type", "application/json")
    elif isinstance(content, str):
        content = content.encode()
    path = unquote(urlsplit(kw["url"]).path)
    method = kw["method"].upper()
    if path.startswith("/v1/rooms") and (method == "DELETE" or (method == "POST" and path == "/v1/rooms")):
        headers["Authorization"] = f"Bearer {operator_token}"
    if method == "POST" and path.startswith("/v1/rooms/") and path.endswith(SIGNED):
        headers = {k: v for k, v in headers.items() if not k.lower().startswith("x-ailo-")}
        signed_path = path if path.isascii() else urlsplit(kw["url"]).path   # still signed: reach the checks
        headers.update(sign_request(wallet, method, signed_path, content or b""))
    return client.request(method, kw["url"], params=kw.get("params"), headers=headers, content=content,
                          cookies=kw.get("cookies") or None)


@pytest.mark.slow  # > 20 s on the 2-core box (make test runs it; make test-fast skips it)
def test_every_operation_survives_generated_requests(coordinator) -> None:
    app, client, wallet, token = coordinator
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    per_operation = int(os.environ.get("AILO_FUZZ_EXAMPLES", math.ceil(2 * MIN_REQUESTS / len(operations))))
    requests, failures, statuses = Counter(), [], Counter()
    started = time.monotonic()
    for op in operations:
        for mode, share in ((GenerationMode.POSITIVE, 0.6), (GenerationMode.NEGATIVE, 0.4)):
            @seed(int(os.environ.get("AILO_FUZZ_SEED", 20261129)))
            @given(case=op.as_strategy(generation_mode=mode))
            @settings(max_examples=max(1, int(per_operation * share)), deadline=None, database=None,
                      suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
            def exercise(case) -> None:
                if "room_id" in (case.path_parameters or {}) and sum(requests.values()) % 2:
                    case.path_parameters["room_id"] = ROOM
                before = state(app)
                response = send(client, case, wallet, token)
                requests[op.label] += 1
                statuses[response.status_code // 100] += 1
                documented = op.definition.raw.get("responses", {})
                if response.status_code >= 500 and str(response.status_code) not in documented:
                    failures.append(f"{op.label} [{mode.value}] server error {response.status_code}: {response.text[:300]}")
                try:
                    case.validate_response(response, checks=CHECKS)
                except BaseException as exc:  # schemathesis raises a FailureGroup (a BaseExceptionGroup)
                    if not isinstance(exc, (Exception, BaseExceptionGroup)):
                        raise
                    failures.append(f"{op.label} [{mode.value}] {response.status_code}: "
                                    f"{' '.join(str(exc).split())[:300]}")
                if response.status_code >= 400:
                    assert state(app) == before, f"{op.label}: refused with {response.status_code} but state changed"

            try:
                exercise()
            except Exception as exc:
                if type(exc).__name__ != "Unsatisfiable":   # e.g. no way to violate an operation without inputs
                    raise
    took = time.monotonic() - started
    print("\nfuzz: " + json.dumps({"requests": sum(requests.values()), "operations": len(operations),
                                  "seconds": round(took, 1), "by_status_class": dict(sorted(statuses.items())),
                                  "violations": len(failures)}))
    assert not failures, f"{len(failures)} contract violations:\n" + "\n".join(sorted(set(failures))[:40])
    assert set(requests) == {op.label for op in operations}, "every operation must be exercised"
    assert sum(requests.values()) >= MIN_REQUESTS, requests


def test_openapi_declares_every_body_header_and_reply(coordinator) -> None:
    app, client, _, _ = coordinator
    doc = client.get("/openapi.json").json()
    schemathesis.openapi.from_dict(doc).validate()      # against the OpenAPI 3.1 meta-schema
    ops = {(m.upper(), p): op for p, item in doc["paths"].items() for m, op in item.items()}
    for (method, path), op in ops.items():
        assert "4XX" in op["responses"], (method, path)
        assert "200" in op["responses"] or "201" in op["responses"], (method, path)
        if method == "POST":
            assert "requestBody" in op, f"{method} {path} declares no request body"
    update = ops[("POST", "/v1/updates")]
    headers = {p["name"] for p in update["parameters"] if p["in"] == "header"}
    assert {"X-Ailo-Client", "X-Ailo-Round", "X-Ailo-Samples", "X-Ailo-Nonce", "X-Ailo-Signature"} <= headers
    assert "application/octet-stream" in update["requestBody"]["content"]
    for path in ("/v1/register", "/v1/transfers", "/v1/reports"):
        body = ops[("POST", path)]["requestBody"]["content"]["application/json"]["schema"]
        assert body["additionalProperties"] is False and "signature" in body["required"], path
