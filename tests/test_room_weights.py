"""A room's checkpoint served in verified pieces (ailo/inference/weights.py, room_weights_api.py)."""
from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors import safe_open

from ailo.server import devserver
from ailo.inference.checkpoints import make_hf_checkpoint
from ailo.inference.loader import load_span
from ailo.inference.rooms import RoomRegistry
from ailo.inference.families import read_spec
from ailo.inference.weights import CheckpointIndex

_NP = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    make_hf_checkpoint(root / "qwen", "qwen2", layers=3, heads=4, kv_heads=2, max_shard_size="40KB")
    make_hf_checkpoint(root / "llama", "llama", layers=2, tie=True)
    return root


TOKEN = "room-weights-operator-token"


@pytest.fixture()
def client(lib):
    rooms = RoomRegistry()
    app = devserver.build_app(rooms, policy=devserver.dev_policy(operator_token=TOKEN), checkpoints=lib)
    with TestClient(app, headers={"authorization": f"Bearer {TOKEN}"}) as c:  # operator: may create rooms
        c.rooms = rooms
        for rid, folder in (("q", "qwen"), ("l", "llama")):
            body = {"id": rid, "slots": 2, "model": json.loads((lib / folder / "config.json").read_text())}
            assert c.post("/v1/rooms", json=body).status_code == 201
        yield c


@pytest.mark.parametrize("span", [(0, 1), (1, 4), (4, 6), (0, 6)])
def test_manifest_lists_exactly_the_span_tensors_and_pieces_rebuild_them(lib, client, span):
    m = client.get(f"/v1/rooms/q/weights?start={span[0]}&end={span[1]}").json()
    loaded = load_span(lib / "qwen", *span)
    assert sorted(m["tensors"]) == sorted(loaded.tensor_names)
    assert m["fingerprint"] == read_spec(lib / "qwen").fingerprint() and m["span"] == {"start": span[0], "end": span[1]}
    index = json.loads((lib / "qwen" / "model.safetensors.index.json").read_text())["weight_map"]
    sizes = {c["sha256"]: c["size"] for c in m["chunks"]}
    for name, t in m["tensors"].items():
        raw = b""
        for sha in t["pieces"]:
            r = client.get(f"/v1/rooms/q/chunks/{sha}")
            assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == sha and len(r.content) == sizes[sha]
            raw += r.content
        with safe_open(lib / "qwen" / index[name], framework="pt") as f:
            want = f.get_tensor(name)
        got = torch.frombuffer(bytearray(raw), dtype=_NP[t["dtype"]]).reshape(t["shape"])
        assert torch.equal(got, want), name
    assert m["total_bytes"] == sum(sizes.values())


def test_pieces_are_bounded_and_a_tied_head_serves_the_embedding(lib):
    idx = CheckpointIndex(lib / "llama", piece_bytes=4096)
    assert max(p.size for p in idx.pieces.values()) <= 4096
    assert len(idx.tensors["model.embed_tokens.weight"].pieces) == 512 * 64 * 4 // 4096
    last = idx.span_manifest(3, 4)
    assert "model.embed_tokens.weight" in last["tensors"] and "lm_head.weight" not in last["tensors"]
    assert "model.norm.weight" in last["tensors"]


def test_refusals_name_the_problem(lib, client, tmp_path):
    bad = client.get("/v1/rooms/q/chunks/XYZ")
    assert bad.status_code == 400 and bad.json()["reason"] == "bad_hash"
    missing = client.get("/v1/rooms/q/chunks/" + "0" * 64)
    assert missing.status_code == 404 and missing.json()["reason"] == "no_piece"
    span = client.get("/v1/rooms/q/weights?start=4&end=9")
    assert span.status_code == 400 and span.json()["reason"] == "bad_span"
    assert client.get("/v1/rooms/q/weights?start=-1&end=2").status_code == 422
    nobody = client.get("/v1/rooms/zz/weights?start=0&end=1")
    assert nobody.status_code == 404 and nobody.json()["reason"] == "no_room"
    # a room of a model this coordinator holds no checkpoint of
    other = json.loads((lib / "llama" / "config.json").read_text())
    other["num_hidden_layers"] = 5
    assert client.post("/v1/rooms", json={"id": "x", "slots": 2, "model": other}).status_code == 201
    r = client.get("/v1/rooms/x/weights?start=0&end=1")
    assert r.status_code == 404 and r.json()["reason"] == "no_checkpoint"
    # a named checkpoint of another model
    body = {"id": "y", "slots": 2, "model": other, "checkpoint": "qwen"}
    assert client.post("/v1/rooms", json=body).status_code == 201
    assert client.get("/v1/rooms/y/weights?start=0&end=1").status_code == 409
    # a name that tries to leave the folder is refused at creation
    assert client.post("/v1/rooms", json=dict(body, id="z", checkpoint="../etc")).status_code == 422


def test_two_checkpoints_of_one_model_need_a_name(lib, tmp_path):
    root = tmp_path / "lib"
    shutil.copytree(lib / "llama", root / "a")
    shutil.copytree(lib / "llama", root / "b")
    rooms = RoomRegistry()
    app = devserver.build_app(rooms, policy=devserver.dev_policy(operator_token=TOKEN), checkpoints=root)
    with TestClient(app, headers={"authorization": f"Bearer {TOKEN}"}) as c:
        cfg = json.loads((root / "a" / "config.json").read_text())
        c.post("/v1/rooms", json={"id": "r", "slots": 2, "model": cfg})
        c.post("/v1/rooms", json={"id": "s", "slots": 2, "model": cfg, "checkpoint": "b"})
        amb = c.get("/v1/rooms/r/weights?start=0&end=1")
        assert amb.status_code == 409 and "several checkpoints" in amb.json()["detail"]
        assert c.get("/v1/rooms/s/weights?start=0&end=1").status_code == 200
