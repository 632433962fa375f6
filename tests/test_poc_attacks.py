"""Attack catalog (SPEC R6/R7/R10): honest workers beside attackers on one coordinator.

Every attack must be refused with its reason and never paid; every honest update accepted
and paid exactly the reward formula (recomputed here independently); loss still falls.
"""
import dataclasses
import hashlib
from fractions import Fraction

import pytest
import torch
from fastapi.testclient import TestClient

from ailo.chunks import Manifest
from ailo.federation.coordinator.coordinator import CoordinatorConfig
from ailo.federation.core.signing import sign_update
from ailo.federation.core.update_format import UpdateMeta, encode_update
from ailo.federation.core.validate import ValidationConfig
from ailo.federation.client.worker import Worker
from ailo.ledger.tx import register_tx
from ailo.ledger.verify import now_ms, verify_chain
from ailo.server.services import ServiceConfig, build_app
from ailo.training import TrainConfig, train_local
from ailo.wallet import Wallet
from tests.verdicts import resolve

UNIT = 10**8


def expected_reward(n, task_samples, reduction, median, seconds):
    """R7 written out again, independently of ailo.federation.core.rewards."""
    base = Fraction(UNIT, 10) * Fraction(min(n, task_samples), task_samples)
    ratio = Fraction(reduction).limit_denominator(10**9) / Fraction(median).limit_denominator(10**9)
    bonus = min(Fraction(1, 2), Fraction(1, 2) * max(Fraction(0), ratio - 1))
    speed = 0
    if seconds is not None and 0 <= seconds < 5:
        speed = int(Fraction(UNIT, 20) * (1 - Fraction(seconds).limit_denominator(10**6) / 5))
    return int(base * (1 + bonus)) + speed


@pytest.fixture()
def network(tmp_path):
    cfg = CoordinatorConfig(min_updates=3, local_steps=10, batch_size=8, max_rounds=2, val_batches=2)
    svc = ServiceConfig(validation=ValidationConfig(registrations_per_hour=12))
    app = build_app(cfg, tmp_path / "coord", svc)
    with TestClient(app) as client:
        yield app, client


def _register(client, wallet, name):
    return client.post("/v1/register", json=register_tx(wallet, name, now_ms()).to_json())


def _attack_body(client, kind):
    """A real local training run on the current model, then corrupted as `kind`."""
    manifest = Manifest.from_json(client.get("/v1/model").content)
    from ailo.chunks import ChunkStore
    from ailo.model import build_model

    class Src:
        def fetch(self, sha):
            return client.get(f"/v1/chunks/{sha}").content
    model = build_model(manifest.preset)
    model.load_state_dict(ChunkStore(manifest, Src()).state_dict())
    gen = torch.Generator().manual_seed(7)
    batches = [(torch.randint(0, 50257, (8, 64), generator=gen),) * 2 for _ in range(10)]
    delta = train_local(model, batches, TrainConfig(steps=10, lr=3e-3)).delta
    if kind == "sign_flip":
        delta = {k: -v for k, v in delta.items()}
    elif kind == "scaled":
        delta = {k: 100 * v for k, v in delta.items()}
    elif kind == "noise":
        norm = torch.sqrt(sum((v.double() ** 2).sum() for v in delta.values()))
        noise = {k: torch.randn(v.shape, generator=gen) for k, v in delta.items()}
        nn = torch.sqrt(sum((v.double() ** 2).sum() for v in noise.values()))
        delta = {k: (v * norm / nn).float() * 0.02 for k, v in noise.items()}  # small, plausible coordinates
    elif kind == "nan":
        delta = dict(delta)
        delta["ln_f.weight"] = delta["ln_f.weight"].clone().fill_(float("nan"))
    return manifest, encode_update(delta)


def _submit(client, wallet, body, round_id, version, client_id, **overrides):
    meta = UpdateMeta(client_id, round_id, version, 80, 6.0)
    meta = sign_update(wallet, meta, hashlib.sha256(body).hexdigest())
    meta = dataclasses.replace(meta, **overrides)
    return resolve(client, client.post("/v1/updates", content=body, headers=meta.to_headers())), meta


@pytest.mark.slow  # > 20 s on the 2-core box (make test runs it; make test-fast skips it)
def test_attack_catalog(network, corpus_dir):
    app, client = network
    coord, ledger = app.state.coordinator, app.state.ledger
    honest = [Worker("http://testserver", f"honest-{k}", corpus_dir, k, 3, progress=False, http=client,
                     wallet=Wallet.generate().with_username(f"honest-{k}"),
                     cache_dir=coord.store.dir.parent / f"cache{k}") for k in range(3)]
    for w in honest:
        w.ensure_registered()
    attackers = {k: Wallet.generate() for k in ("sign_flip", "scaled", "noise", "nan", "forger", "thief")}
    for name, wallet in attackers.items():
        assert _register(client, wallet, f"mallory-{name.replace('_', '-')}").status_code == 200

    # Round 1: two honest updates, then every attack, then the third honest update closes it.
    captured = []  # what an eavesdropper on the wire would see
    client.event_hooks["request"].append(lambda req: captured.append(req) if req.url.path == "/v1/updates" else None)
    reports = [honest[0].run_round(), honest[1].run_round()]
    assert all(r.response.get("status") == "accepted" for r in reports), [r.response for r in reports]
    honest_request = captured[-1]  # honest-1's signed submission, as seen on the wire
    outcomes = {}
    for kind in ("sign_flip", "scaled", "noise", "nan"):
        _, body = _attack_body(client, kind)
        r, _ = _submit(client, attackers[kind], body, 1, 0, f"mallory-{kind}")
        outcomes[kind] = (r.status_code, r.json().get("reason", r.json()))
    _, body = _attack_body(client, "honest")
    r, _ = _submit(client, attackers["forger"], body, 1, 0, "forger", signature="ab" * 64)
    outcomes["forged_signature"] = (r.status_code, r.json()["reason"])
    r, _ = _submit(client, attackers["thief"], body, 1, 0, "thief", address=honest[2].wallet.address)
    outcomes["stolen_address"] = (r.status_code, r.json()["reason"])
    r, _ = _submit(client, Wallet.generate(), body, 1, 0, "ghost")
    outcomes["unregistered"] = (r.status_code, r.json()["reason"])
    replay_headers = {k: v for k, v in honest_request.headers.items() if k.lower().startswith("x-ailo-")}
    r = client.post("/v1/updates", content=honest_request.content, headers=replay_headers)
    assert r.status_code == 200 and r.json()["replayed"] is True  # a byte-exact replay: the original verdict, no new row
    r = client.post("/v1/updates", content=honest_request.content, headers={**replay_headers, "X-Ailo-Client": "replayer"})
    assert r.status_code == 200 and r.json()["replayed"] is True  # re-labelled: still that wallet's one update
    reports.append(honest[2].run_round())
    assert reports[2].response.get("aggregated") is True

    # Round 2: replaying an old signed update only answers its old verdict; a fresh honest round completes.
    r = client.post("/v1/updates", content=honest_request.content, headers={**replay_headers, "X-Ailo-Client": "replayer-2"})
    assert r.status_code == 200 and r.json()["replayed"] is True and r.json()["round"] == 1  # its old verdict only
    for w in honest:
        assert w.run_round().response["status"] == "accepted"

    # Random noise is nearly orthogonal to the gradient: refused by direction or by loss.
    assert outcomes.pop("noise") in {(422, "wrong_direction"), (422, "no_loss_reduction")}
    assert outcomes == {
        "sign_flip": (422, "wrong_direction"), "scaled": (422, "implausible_norm"), "nan": (422, "non_finite"),
        "forged_signature": (401, "bad_signature"), "stolen_address": (401, "bad_signature"),
        "unregistered": (403, "unregistered"),
    }, outcomes

    # Registration burst from one network address: capped, refused ones leave no trace.
    names = [f"sybil-{i}" for i in range(12)]
    codes = [_register(client, Wallet.generate(), n).status_code for n in names]
    assert codes.count(429) >= 1 and 200 not in codes[codes.index(429):]
    assert all(ledger.address_of(n) is None for n, c in zip(names, codes) if c == 429)

    # Payments: attackers unpaid; honest paid exactly the formula per accepted update.
    for name, wallet in attackers.items():
        assert client.get(f"/v1/balance/{wallet.address}").json()["spendable"] == 0, name
    accepted = coord.store.updates(status="accepted")
    for rnd in (1, 2):
        rows = [u for u in accepted if u.round_id == rnd]
        reductions = sorted(u.extra["reduction"] for u in rows)
        median = reductions[len(reductions) // 2] if len(reductions) % 2 else (reductions[len(reductions) // 2 - 1] + reductions[len(reductions) // 2]) / 2
        for u in rows:
            u.extra["expected"] = expected_reward(u.n_samples, 80, u.extra["reduction"], median, u.extra["seconds"])
    for w in honest:
        mine = [u for u in accepted if u.address == w.wallet.address]
        assert len(mine) == 2
        balance = client.get(f"/v1/balance/{w.wallet.address}").json()
        assert balance["spendable"] == sum(u.extra["expected"] for u in mine)
        assert balance["spendable"] >= 2 * UNIT // 10

    # Refusals are recorded with reasons; the global loss still fell; the chain verifies.
    refused = {u.reason for u in coord.store.updates(status="refused")}
    assert {"wrong_direction", "implausible_norm", "non_finite", "bad_signature"} <= refused
    losses = [h["val_loss"] for h in client.get("/v1/status").json()["history"]]
    assert losses[2] < losses[1] < losses[0]
    ledger.seal_block()
    report = verify_chain(client.get("/v1/chain").json()["blocks"])
    assert report.ok, report
