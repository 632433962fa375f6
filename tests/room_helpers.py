"""Signed calls to the rooms API from tests (the same headers `ailo node` / `ailo ask` send)."""
from __future__ import annotations

import json

import httpx

from ailo.inference.auth import sign_request
from ailo.wallet import Wallet


def signed(http: httpx.Client, path: str, wallet: Wallet, payload: dict, **sign_kw) -> httpx.Response:
    body = json.dumps(payload).encode()
    headers = {"content-type": "application/json", **sign_request(wallet, "POST", path, body, **sign_kw)}
    return http.post(path, content=body, headers=headers)


def signed_stream(http: httpx.Client, path: str, wallet: Wallet, payload: dict):
    body = json.dumps(payload).encode()
    headers = {"content-type": "application/json", **sign_request(wallet, "POST", path, body)}
    return http.stream("POST", path, content=body, headers=headers)


def operator(server) -> dict[str, str]:
    return {"authorization": f"Bearer {server.operator_token}"}
