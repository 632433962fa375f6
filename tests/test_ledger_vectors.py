"""Replay the JSON test vectors (the portable spec of docs/LEDGER.md) through the Python
verifier, check they are reproducible, and drive `ailo chain verify --file`."""
from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest

from ailo.cli.main import main
from ailo.ledger import verify_chain
from ailo.ledger.codec import canonical_json, merkle_root
from ailo.ledger.tx import Transaction
from ailo.wallet import Wallet, is_valid_address

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "tests" / "vectors" / "ledger"
CHAIN_VECTORS = sorted(p for p in VECTORS.glob("*.json") if p.stem != "primitives")


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_vector_set_covers_the_required_tampering() -> None:
    names = {p.stem for p in CHAIN_VECTORS}
    assert {"valid_basic", "tampered_amount", "tampered_removed_tx",
            "tampered_reordered_blocks", "tampered_forged_signature"} <= names
    assert len(names) >= 20


@pytest.mark.parametrize("path", CHAIN_VECTORS, ids=lambda p: p.stem)
def test_vector(path: Path) -> None:
    vector = load(path)
    report = verify_chain(vector["chain"], now=vector["now_ms"])
    expect = vector["expect"]
    assert report.ok is expect["ok"]
    if expect["ok"]:
        got = report.to_json()
        for key in ("height", "blocks", "tx_count", "minted", "burned", "supply"):
            assert got[key] == expect[key], key
        state = report.state
        for address, bal in expect["balances"].items():
            assert state.spendable.get(address, 0) == bal["spendable"]
            assert state.pending_in.get(address, 0) == bal["pending"]
    else:
        v = report.violation
        assert (v.block, v.tx, v.code) == (expect["block"], expect["tx"], expect["code"])


def test_primitives() -> None:
    p = load(VECTORS / "primitives.json")
    for w in p["wallets"]:
        wallet = Wallet.from_seed(bytes.fromhex(w["seed"]))
        assert hashlib.sha256(w["label"].encode()).hexdigest() == w["seed"]
        assert wallet.public_key.hex() == w["public_key"] and wallet.address == w["address"]
    assert not any(is_valid_address(a) for a in p["bad_addresses"])
    t = p["transfer"]
    tx = Transaction.from_json(t["tx"])
    assert canonical_json(tx.body).decode() == t["canonical_body"]
    assert tx.txid == t["txid"] == hashlib.sha256(t["canonical_body"].encode()).hexdigest()
    assert tx.leaf().hex() == t["merkle_leaf"]
    assert bytes.fromhex(t["signing_bytes_hex"]) == b"AILO-TX-V1\n" + t["canonical_body"].encode()
    for case in p["merkle"]:
        assert merkle_root(bytes.fromhex(x) for x in case["leaves"]) == case["root"]


def test_generator_is_deterministic_and_matches_committed_vectors() -> None:
    script = ROOT / "scripts" / "make_ledger_vectors.py"
    spec = importlib.util.spec_from_file_location("make_ledger_vectors", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    built = module.build()
    assert set(built) == {p.stem for p in VECTORS.glob("*.json")}
    for name, vector in built.items():
        assert json.loads(json.dumps(vector)) == load(VECTORS / f"{name}.json"), name


def test_cli_chain_verify_file_ok(capsys) -> None:
    path = VECTORS / "valid_basic.json"
    now = str(load(path)["now_ms"])
    assert main(["chain", "verify", "--file", str(path), "--now", now]) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK: height 7, 8 blocks, 15 transactions")
    assert "supply 0.33000000 ALC" in out  # the paid inference request burned 0.05 + half its fee


@pytest.mark.parametrize("name,where", [
    ("tampered_amount", "block 3, tx 0: bad_signature"),
    ("tampered_removed_tx", "block 2: bad_merkle_root"),
    ("tampered_reordered_blocks", "block 2: bad_height"),
    ("tampered_forged_signature", "block 7, tx 0: bad_signature"),
])
def test_cli_chain_verify_file_reports_first_violation(name, where, capsys) -> None:
    path = VECTORS / f"{name}.json"
    assert main(["chain", "verify", "--file", str(path), "--now",
                 str(load(path)["now_ms"])]) == 1
    assert capsys.readouterr().out.startswith(f"FAIL: {where}")


def test_cli_chain_verify_json_and_user_errors(tmp_path, capsys) -> None:
    path = VECTORS / "invalid_overspend.json"
    assert main(["chain", "verify", "--file", str(path), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["violation"] == {"block": 3, "tx": 0, "code": "insufficient_funds",
                                "message": out["violation"]["message"]}
    assert out["height"] == 2                                 # last fully verified block
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["chain", "verify", "--file", str(bad)]) == 2
    assert main(["chain", "verify", "--file", str(tmp_path / "missing.json")]) == 2
    other = Wallet.from_label("someone-else").address
    assert main(["chain", "verify", "--file", str(VECTORS / "valid_basic.json"),
                 "--expect-coordinator", other]) == 1
    assert "unexpected_coordinator" in capsys.readouterr().out
