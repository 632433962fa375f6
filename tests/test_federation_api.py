"""Bad input to POST /v1/updates: each refused with a 4xx naming the problem, nothing changed.

Cheap problems (headers, identity, safetensors header) are refused by the POST itself; the
rest (NaN/Inf, PoC checks) by the validation pipeline, whose verdict GET /v1/updates/{id}
reports with the same reason and the status code the refusal carries (`code`)."""
import dataclasses
import struct

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save as st_save

from ailo.federation.coordinator.coordinator import Coordinator, CoordinatorConfig
from ailo.federation.core.update_format import UpdateMeta, encode_update
from ailo.server.app import create_app
from tests.verdicts import resolve


@pytest.fixture()
def api(tmp_path):
    coord = Coordinator(CoordinatorConfig(min_updates=2, val_batches=1), tmp_path / "state")
    with TestClient(create_app(coord)) as client:
        yield coord, client


def _delta(coord, scale=1e-3):
    return {k: torch.full_like(v, scale) for k, v in coord.model.state_dict().items()}


def _post(client, body, round_id=1, version=0, client_id="alice", samples=8, **extra):
    meta = UpdateMeta(client_id, round_id, version, samples, 5.0)
    headers = {**meta.to_headers(), **extra}
    out = resolve(client, client.post("/v1/updates", content=body, headers=headers), wait=30)
    assert out.payload.get("status") != "pending", out.payload
    return out


def _unchanged(coord, client, before_weights):
    status = client.get("/v1/status").json()
    assert status["version"] == 0 and status["accepted_in_round"] == 0
    for k, v in coord.model.state_dict().items():
        assert torch.equal(v, before_weights[k])


def _bad_bodies(coord):
    good = _delta(coord)
    name = "blocks.0.attn.qkv.weight"
    wrong_shape = dict(good, **{name: good[name][:, :5].contiguous()})
    wrong_dtype = {k: v.to(torch.float16) for k, v in good.items()}
    missing = {k: v for k, v in good.items() if k != "ln_f.bias"}
    renamed = dict(missing, **{"ln_f.b": good["ln_f.bias"]})
    nan = dict(good, **{name: good[name].clone().index_fill_(0, torch.tensor([3]), float("nan"))})
    inf = dict(good, **{"wpe.weight": good["wpe.weight"].clone().fill_(float("inf"))})
    full = encode_update(good)
    return {
        "shape": (encode_update(wrong_shape), 422, "shape"),
        "dtype": (st_save(wrong_dtype), 422, "float16, expected float32"),
        "missing": (encode_update(missing), 422, "missing ['ln_f.bias']"),
        "renamed": (encode_update(renamed), 422, "unexpected ['ln_f.b']"),
        "nan": (encode_update(nan), 422, "NaN or Inf"),
        "inf": (encode_update(inf), 422, "NaN or Inf"),
        "truncated": (full[: len(full) // 2], 400, "truncated"),
        "garbage": (struct.pack("<Q", 5) + b"{oops", 422, "unreadable safetensors header"),
        "too_large": (full + b"\0" * (64 * 1024 + 200_000), 413, "exceeds the limit"),
    }


def test_each_bad_body_is_refused_and_changes_nothing(api):
    coord, client = api
    before = {k: v.clone() for k, v in coord.model.state_dict().items()}
    for label, (body, status, message) in _bad_bodies(coord).items():
        r = _post(client, body)
        assert r.status_code == status, (label, r.text)
        assert message in r.json()["detail"], (label, r.json())
        _unchanged(coord, client, before)
    refused = coord.store.updates(1, "refused")
    assert {u.reason for u in refused} >= {"shape", "dtype", "tensor_names", "non_finite", "truncated", "malformed"}


def test_stale_unknown_round_version_and_duplicates(api):
    coord, client = api
    body = encode_update(_delta(coord))
    before = {k: v.clone() for k, v in coord.model.state_dict().items()}
    r = _post(client, body, round_id=7)
    assert r.status_code == 409 and "unknown round 7" in r.json()["detail"]
    r = _post(client, body, version=3)
    assert r.status_code == 409 and "version 3" in r.json()["detail"]
    _unchanged(coord, client, before)
    first = _post(client, body)
    assert first.status_code == 200
    again = _post(client, body)  # the same update resent (lost reply): the original verdict, counted once
    assert again.status_code == 200 and again.json()["replayed"] is True
    assert again.json()["update_id"] == first.json()["update_id"] and again.json()["accepted_in_round"] == 1
    r = _post(client, encode_update(_delta(coord, 2e-3)))  # another update from the same client
    assert r.status_code == 409 and "already has an accepted or pending update" in r.json()["detail"]
    assert _post(client, body, client_id="bob").json()["aggregated"] is True
    r = _post(client, body, client_id="carol", round_id=1)  # one round late: the delayed rule takes it (issue 27)
    assert r.status_code == 200 and r.json()["round"] == 2 and r.json()["status"] == "accepted", r.text
    coord.config = dataclasses.replace(coord.config, max_staleness=0)  # the strict rule: only the open round
    r = _post(client, body, client_id="dave", round_id=1)
    assert r.status_code == 409 and "stale round 1" in r.json()["detail"]


def test_missing_and_malformed_headers(api):
    coord, client = api
    body = encode_update(_delta(coord))
    r = client.post("/v1/updates", content=body, headers={"X-Ailo-Client": "a"})
    assert r.status_code == 400 and "X-Ailo-Round" in r.json()["detail"]
    r = _post(client, body, **{"X-Ailo-Samples": "-4"})
    assert r.status_code == 400 and "positive sample count" in r.json()["detail"]
    r = _post(client, body, **{"X-Ailo-Train-Loss": "nan"})
    assert r.status_code == 400 and "finite" in r.json()["detail"]


def test_round_closes_with_fedavg_and_new_chunks_served(api):
    coord, client = api
    base = {k: v.clone() for k, v in coord.model.state_dict().items()}
    d1, d2 = _delta(coord, 1e-3), _delta(coord, -2e-3)
    r = _post(client, encode_update(d1), client_id="a", samples=10)
    assert r.status_code == 200 and (r.json()["accepted_in_round"], r.json()["needed_in_round"]) == (1, 2)
    assert client.get("/v1/status").json()["needed_in_round"] == 2  # the number the CLI and dashboard show
    r = _post(client, encode_update(d2), client_id="b", samples=30)
    assert r.json()["aggregated"] and r.json()["version"] == 1
    manifest = client.get("/v1/model").json()
    assert manifest["version"] == 1
    for k in base:
        expected = base[k] - (0.25 * d1[k] + 0.75 * d2[k])
        assert torch.allclose(coord.model.state_dict()[k], expected, atol=1e-6)
    sha = manifest["chunks"][0]["sha256"]
    chunk = client.get(f"/v1/chunks/{sha}")
    assert chunk.status_code == 200 and chunk.headers["etag"] == f'"{sha}"'
    assert client.get(f"/v1/chunks/{sha}", headers={"If-None-Match": f'"{sha}"'}).status_code == 304
    assert client.get("/v1/chunks/" + "0" * 64).status_code == 404
    assert client.get("/v1/chunks/nothex").status_code == 400
    status = client.get("/v1/status").json()
    assert [h["version"] for h in status["history"]] == [0, 1] and status["round"] == 2
    assert "/v1/updates" in client.get("/openapi.json").json()["paths"]


def test_client_learning_rate_decays_per_round_and_survives_restart(tmp_path):
    cfg = CoordinatorConfig(min_updates=1, val_batches=1, lr=4e-3, lr_decay=0.5)
    coord = Coordinator(cfg, tmp_path / "state")
    with TestClient(create_app(coord)) as client:
        assert client.post("/v1/tasks", json={"client_id": "a"}).json()["lr"] == pytest.approx(4e-3)
        assert _post(client, encode_update(_delta(coord))).json()["aggregated"] is True
        task = client.post("/v1/tasks", json={"client_id": "a"}).json()
        assert task["round"] == 2 and task["lr"] == pytest.approx(2e-3)
    coord.store.close()
    again = Coordinator(cfg, tmp_path / "state")
    assert again.current_round().task["lr"] == pytest.approx(2e-3)


def test_store_returns_newest_updates_in_id_order(tmp_path):
    from ailo.storage.rounds_store import SQLiteRoundStore
    store = SQLiteRoundStore(tmp_path / "s")
    ids = [store.record_update(1, f"c{i}", None, 1, 1.0, None, 0, "accepted") for i in range(5)]
    assert [u.id for u in store.updates(limit=2)] == ids[:2]
    assert [u.id for u in store.updates(limit=2, newest=True)] == ids[-2:]
