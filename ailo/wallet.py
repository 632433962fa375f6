"""Wallets: Ed25519 keys, checksummed addresses, key files, usernames.

Address format (see docs/LEDGER.md, "Addresses"):

    address = "ailo1" + lowercase_hex(public_key[32] || sha256(public_key)[:4])

77 characters. The whole public key is inside the address, so anyone can check a signature
from the chain alone (no key registry needed to verify, R11), and the 4-byte checksum makes a
mistyped address fail with probability 1 - 2**-32 instead of silently sending funds nowhere.

Identity (R5) is only a username bound to an address by a self-signed REGISTER transaction:
no e-mail, no personal data.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

ADDRESS_PREFIX = "ailo1"
ADDRESS_LENGTH = len(ADDRESS_PREFIX) + 2 * (32 + 4)
_ADDRESS_RE = re.compile(r"^ailo1[0-9a-f]{72}\Z")
USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{2,31}\Z")
KEY_FILE_VERSION = 1


class AddressError(ValueError):
    """An address that is malformed or whose checksum does not match (a typo)."""


def _checksum(public_key: bytes) -> bytes:
    return hashlib.sha256(public_key).digest()[:4]


def address_from_public_key(public_key: bytes) -> str:
    if len(public_key) != 32:
        raise AddressError("an Ed25519 public key is 32 bytes")
    return ADDRESS_PREFIX + (public_key + _checksum(public_key)).hex()


def public_key_from_address(address: str) -> bytes:
    """Decode and check an address; raises AddressError naming what is wrong."""
    if not isinstance(address, str) or not _ADDRESS_RE.match(address):
        raise AddressError(
            f"address must be {ADDRESS_PREFIX!r} followed by 72 lowercase hex digits")
    raw = bytes.fromhex(address[len(ADDRESS_PREFIX):])
    public_key, check = raw[:32], raw[32:]
    if _checksum(public_key) != check:
        raise AddressError("address checksum mismatch (mistyped address?)")
    return public_key


def is_valid_address(address: object) -> bool:
    try:
        public_key_from_address(address)  # type: ignore[arg-type]
    except AddressError:
        return False
    return True


def normalize_address(text: str) -> str:
    """User input → canonical address (trims blanks, lower-cases) or AddressError."""
    address = text.strip().lower()
    public_key_from_address(address)
    return address


def is_valid_username(name: object) -> bool:
    """3–32 chars of [a-z0-9_-], starting with a letter or digit (ASCII only so the
    canonical JSON of a REGISTER transaction is identical in every language)."""
    return isinstance(name, str) and bool(USERNAME_RE.match(name))


def verify_signature(address: str, message: bytes, signature_hex: str) -> bool:
    """True when `signature_hex` is a valid Ed25519 signature of `message` by the key
    inside `address`. Never raises for bad input: a bad signature is just False."""
    try:
        key = VerifyKey(public_key_from_address(address))
        key.verify(message, bytes.fromhex(signature_hex))
    except (AddressError, BadSignatureError, ValueError, TypeError):
        return False
    return True


@dataclass(frozen=True)
class Wallet:
    """An Ed25519 key pair plus the optional username it was registered with."""

    signing_key: SigningKey
    username: str | None = None

    @classmethod
    def generate(cls) -> "Wallet":
        return cls(SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes, username: str | None = None) -> "Wallet":
        """Deterministic wallet (test vectors, benchmarks): the 32-byte Ed25519 seed."""
        return cls(SigningKey(seed), username)

    @classmethod
    def from_label(cls, label: str, username: str | None = None) -> "Wallet":
        """Deterministic wallet whose seed is sha256(label); never use for real funds."""
        return cls.from_seed(hashlib.sha256(label.encode()).digest(), username)

    @property
    def public_key(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    @property
    def address(self) -> str:
        return address_from_public_key(self.public_key)

    def sign(self, message: bytes) -> str:
        """Detached Ed25519 signature, hex encoded (128 chars)."""
        return self.signing_key.sign(message).signature.hex()

    def with_username(self, username: str) -> "Wallet":
        if not is_valid_username(username):
            raise ValueError(f"invalid username {username!r}: 3-32 chars of a-z 0-9 _ -")
        return Wallet(self.signing_key, username)

    # ---- key file -------------------------------------------------------------------
    def to_json(self) -> dict:
        return {"version": KEY_FILE_VERSION, "seed": bytes(self.signing_key).hex(),
                "address": self.address, "username": self.username}

    def save(self, path: Path | str, overwrite: bool = False) -> Path:
        """Write the key file with mode 0600 from the start (created with O_EXCL unless
        `overwrite`, so an existing wallet is never clobbered by accident)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
        fd = os.open(path, flags, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, (json.dumps(self.to_json(), indent=2) + "\n").encode())
        finally:
            os.close(fd)
        return path

    @classmethod
    def load(cls, path: Path | str) -> "Wallet":
        """Read a key file; refuses files other users can read (like ssh does)."""
        path = Path(path)
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise PermissionError(
                f"{path} is readable by others (mode {mode:o}); run: chmod 600 {path}")
        data = json.loads(path.read_text())
        wallet = cls(SigningKey(bytes.fromhex(data["seed"])), data.get("username"))
        if data.get("address") not in (None, wallet.address):
            raise ValueError(f"{path}: stored address does not match the key")
        return wallet


def default_wallet_path() -> Path:
    """$AILO_WALLET, else ~/.ailo/wallet.json."""
    env = os.environ.get("AILO_WALLET")
    return Path(env) if env else Path.home() / ".ailo" / "wallet.json"
