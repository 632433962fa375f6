"""Wallets: address checksum, key files, signatures, usernames, and the wallet CLI."""
from __future__ import annotations

import json
import os
import stat

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from ailo.cli import wallet as wallet_cli
from ailo.cli.main import main
from ailo.ledger.client import LedgerClient
from ailo.ledger.params import FEE, UNIT
from ailo.server.errors import install_error_handlers
from ailo.server.ledger_api import make_ledger_router
from ailo.wallet import (ADDRESS_LENGTH, AddressError, Wallet, address_from_public_key,
                         is_valid_address, is_valid_username, normalize_address,
                         public_key_from_address, verify_signature)

from ledger_helpers import FakeClock, join, service, wallet


def test_address_roundtrip_and_format() -> None:
    w = Wallet.from_label("alice")
    assert w.address.startswith("ailo1") and len(w.address) == ADDRESS_LENGTH == 77
    assert public_key_from_address(w.address) == w.public_key
    assert address_from_public_key(w.public_key) == w.address
    assert Wallet.from_label("alice").address == w.address          # deterministic
    assert Wallet.generate().address != w.address


def test_every_single_character_typo_is_detected() -> None:
    address = Wallet.from_label("typo").address
    for i in range(5, len(address)):
        for c in "0123456789abcdef":
            if c != address[i]:
                typo = address[:i] + c + address[i + 1:]
                assert not is_valid_address(typo), (i, c)


@pytest.mark.parametrize("bad", ["", "ailo1", "ailo2" + "0" * 72, "ailo1" + "g" * 72,
                                 None, 42, "ailo1" + "0" * 70])
def test_malformed_addresses_are_rejected(bad) -> None:
    assert not is_valid_address(bad)
    with pytest.raises(AddressError):
        public_key_from_address(bad)


def test_normalize_accepts_case_and_whitespace_but_not_typos() -> None:
    address = Wallet.from_label("n").address
    assert normalize_address("  " + address.upper() + "\n") == address
    assert not is_valid_address(address.upper())                 # the canonical form is lowercase
    with pytest.raises(AddressError, match="checksum"):
        normalize_address(address[:-1] + ("1" if address[-1] == "0" else "0"))


def test_signatures() -> None:
    w, other = Wallet.from_label("s1"), Wallet.from_label("s2")
    sig = w.sign(b"hello")
    assert verify_signature(w.address, b"hello", sig)
    assert not verify_signature(w.address, b"hellO", sig)
    assert not verify_signature(other.address, b"hello", sig)
    assert not verify_signature(w.address, b"hello", "zz")


def test_key_file_is_0600_and_roundtrips(tmp_path) -> None:
    path = tmp_path / "sub" / "wallet.json"
    w = Wallet.generate().with_username("alice")
    w.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = Wallet.load(path)
    assert loaded.address == w.address and loaded.username == "alice"
    with pytest.raises(FileExistsError):
        Wallet.generate().save(path)                               # never clobbered silently
    os.chmod(path, 0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        Wallet.load(path)


def test_usernames() -> None:
    assert is_valid_username("alice_01") and is_valid_username("x-y")
    for bad in ("ab", "Alice", "-abc", "a" * 33, "al ice", "ålice", ""):
        assert not is_valid_username(bad), bad
    with pytest.raises(ValueError):
        Wallet.generate().with_username("A")


@pytest.fixture
def coordinator(monkeypatch):
    """The wallet CLI talking to an in-process coordinator."""
    svc = service(clock=FakeClock(1_700_000_000_000))
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(make_ledger_router(svc))
    client = TestClient(app)
    monkeypatch.setattr(wallet_cli, "client_for", lambda url: LedgerClient(url, client))
    monkeypatch.setattr(wallet_cli, "_now", svc.clock)
    return svc


def test_wallet_cli_new_show_register_balance_send(tmp_path, capsys, coordinator) -> None:
    path = str(tmp_path / "w.json")
    assert main(["wallet", "new", "--wallet", path]) == 0
    address = json.loads(capsys.readouterr().out)["address"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert main(["wallet", "new", "--wallet", path]) == 2          # refuses to overwrite
    capsys.readouterr()
    assert main(["wallet", "register", "carol", "--wallet", path]) == 0
    assert coordinator.username(address) == "carol"
    assert main(["wallet", "show", "--wallet", path]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["username"] == "carol"
    coordinator.mint_training(address, UNIT // 2, "update:cli")
    bob = wallet("bob")
    assert main(["wallet", "send", bob.address, "0.1", "--wallet", path]) == 0
    capsys.readouterr()
    assert coordinator.balance(address).spendable == UNIT // 2 - UNIT // 10 - FEE
    assert coordinator.balance(bob.address).pending == UNIT // 10
    assert main(["wallet", "balance", "--wallet", path]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["spendable"] == UNIT // 2 - UNIT // 10 - FEE and out["next_nonce"] == 2


def test_wallet_cli_user_errors(tmp_path, capsys, coordinator) -> None:
    path = str(tmp_path / "w.json")
    assert main(["wallet", "show", "--wallet", path]) == 2          # no wallet yet
    main(["wallet", "new", "--wallet", path])
    typo = wallet("bob").address[:-1] + "0"
    typo = typo if typo != wallet("bob").address else typo[:-1] + "1"
    capsys.readouterr()
    assert main(["wallet", "send", typo, "1", "--wallet", path]) == 2
    assert "checksum" in capsys.readouterr().err
    assert main(["wallet", "send", wallet("bob").address, "0.000000001", "--wallet",
                 path]) == 2                                        # 9 decimals
    assert main(["wallet", "send", wallet("bob").address, "5", "--wallet", path]) == 2
    assert "insufficient_funds" in capsys.readouterr().err
    join(coordinator, wallet("dana"), mint=0)
    assert main(["wallet", "register", "dana", "--wallet", path]) == 2
    assert "username_taken" in capsys.readouterr().err


def test_trailing_newline_is_not_a_valid_address_or_username():
    """`$` in a regex also matches before a final newline; the rules must not (docs/LEDGER.md)."""
    from ailo.ledger.tx import REF_RE
    from ailo.wallet import Wallet, is_valid_address, is_valid_username

    address = Wallet.from_label("newline").address
    assert is_valid_address(address) and not is_valid_address(address + "\n")
    assert is_valid_username("bob") and not is_valid_username("bob\n")
    assert REF_RE.match("update:1") and not REF_RE.match("update:1\n")
