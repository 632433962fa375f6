"""Chaos run: a real coordinator process killed with SIGKILL (at random moments and at named
crash points, `AILO_CRASH_AT`) and restarted on the same state, while real clients keep going:
`ailo worker` processes, an `ailo node` serving an inference room, a stream of signed
transfers and of signed generation requests. Used by tests/test_chaos.py (short) and
bench/chaos.py (long). `check_invariants` reads the state directory and the served chain.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from ailo.backoff import Backoff, Unavailable
from ailo.chunks import Manifest
from ailo.inference.auth import sign_request
from ailo.ledger.client import LedgerClient, LedgerHTTPError
from ailo.ledger.tx import register_tx, transfer_tx
from ailo.ledger.verify import now_ms, verify_chain
from ailo.wallet import Wallet
from tests.procs import ROOT, free_port, wait_healthy

TRANSFER = 1_000_000  # 0.01 ALC


@dataclass
class ChaosConfig:
    workers: int = 2
    random_kills: int = 1                   # SIGKILLs from outside at random moments
    crash_points: tuple[str, ...] = ("close_aggregate", "after_publish")  # armed one per start, in order
    gap: tuple[float, float] = (3.0, 9.0)   # seconds between random kills
    restart_delay: tuple[float, float] = (0.0, 1.0)
    rounds_after_first_kill: int = 2        # keep running until this many rounds closed after kill 1
    round_seconds: float = 6.0
    local_steps: int = 2
    batch_size: int = 4
    room: bool = True
    transfers: bool = True
    timeout: float = 150.0                  # wall-clock budget for the whole run
    seed: int = 0


@dataclass
class ChaosResult:
    kills: int = 0
    crash_point_kills: list[str] = field(default_factory=list)
    rounds_closed: int = 0
    rounds_closed_after_first_kill: int = 0
    client_exits: int = 0
    transfers_acked: int = 0
    requests_completed: int = 0
    requests_after_last_restart: int = 0
    invariant_failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict:
        d = dict(self.__dict__)
        d["invariant_failures"] = len(self.invariant_failures)
        d["failures"] = self.invariant_failures[:20]
        return d


class Chaos:
    def __init__(self, base: Path, cfg: ChaosConfig):
        self.base, self.cfg = Path(base), cfg
        self.rng = random.Random(cfg.seed)
        self.state = self.base / "coord"
        self.logs = self.base / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.coord: subprocess.Popen | None = None
        self.clients: dict[str, subprocess.Popen] = {}
        self.stop = threading.Event()
        self.acked_transfers: list[str] = []
        self.acked_requests: list[tuple[str, list[str]]] = []   # (request id, payees)
        self.result = ChaosResult()
        self.starts = 0
        self.last_start = 0.0
        self.armed: list[str] = list(cfg.crash_points)
        self.env = {**os.environ, "AILO_HOME": str(ROOT), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
                    "PYTHONPATH": str(ROOT), "AILO_WALLET": "/nonexistent/ailo-wallet.json"}
        self.env.pop("AILO_CRASH_AT", None)

    # -- processes --------------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str], env: dict | None = None) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")
        return subprocess.Popen([sys.executable, "-m", "ailo.cli.main", *args], cwd=ROOT, env=env or self.env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def start_coordinator(self) -> None:
        env = dict(self.env)
        if self.armed:
            env["AILO_CRASH_AT"] = self.armed[0]
        c = self.cfg
        self.coord = self._spawn("coordinator", [
            "coordinator", "--state", str(self.state), "--port", str(self.port), "--min-updates", str(c.workers),
            "--round-seconds", str(c.round_seconds), "--quorum", "1", "--local-steps", str(c.local_steps),
            "--batch-size", str(c.batch_size), "--registrations-per-hour", "1000", "--allow-private-node-urls"], env)
        self.starts += 1
        self.last_start = time.monotonic()

    def wait_ready(self, timeout: float = 90.0) -> None:
        wait_healthy(self.url, self.coord, timeout, path="/v1/ready", log=self.logs / "coordinator.log")

    def kill(self) -> None:
        if self.coord.poll() is None:
            os.killpg(self.coord.pid, signal.SIGKILL)
        self.coord.wait()
        self.result.kills += 1

    def restart(self) -> None:
        """Start again on the same state; a start that dies at its armed crash point (e.g.
        `mid_settle` while start-up pays a round left unpaid) counts as a kill and restarts."""
        while True:
            time.sleep(self.rng.uniform(*self.cfg.restart_delay))
            self.start_coordinator()
            try:
                self.wait_ready()
                return
            except RuntimeError:
                if not self.armed or self.coord.returncode != -signal.SIGKILL:
                    raise
                self.result.kills += 1
                self.result.crash_point_kills.append(self.armed.pop(0))

    # -- clients ----------------------------------------------------------------------------
    def _wallet(self, name: str) -> tuple[Wallet, Path]:
        w = Wallet.generate().with_username(name)
        path = self.base / "wallets" / f"{name}.json"
        path.parent.mkdir(exist_ok=True)
        w.save(path)
        return w, path

    def start_clients(self) -> None:
        self.worker_wallets = []
        for k in range(self.cfg.workers):
            w, path = self._wallet(f"worker{k}")
            self.worker_wallets.append(w)
            self.clients[f"worker{k}"] = self._spawn(f"worker{k}", [
                "worker", "--coordinator", self.url, "--shard", str(k), "--num-shards", str(self.cfg.workers),
                "--client-id", f"worker{k}", "--cache", str(self.base / f"cache{k}"), "--quiet",
                "--wallet", str(path)])
        if self.cfg.room:
            self._start_room()

    def _start_room(self) -> None:
        from ailo.inference.checkpoints import make_hf_checkpoint
        model_dir = self.base / "llama"
        make_hf_checkpoint(model_dir, "llama", vocab=256, hidden=32, layers=2, heads=2, kv_heads=1,
                           intermediate=64, max_positions=128)
        self.node_wallet, node_path = self._wallet("node0")
        self.asker = self.worker_wallets[-1]        # earns ALC by training and from the transfers; pays requests
        ledger = LedgerClient(self.url, policy=Backoff(base=0.2, cap=2.0, max_elapsed=60))
        ledger.register(register_tx(self.node_wallet, self.node_wallet.username, now_ms()).to_json())
        token = (self.state / "operator-token").read_text().strip()
        body = {"id": "chaos", "slots": 1, "model": json.loads((model_dir / "config.json").read_text())}
        r = httpx.post(f"{self.url}/v1/rooms", json=body, headers={"authorization": f"Bearer {token}"}, timeout=30)
        assert r.status_code == 201, r.text
        self.clients["node0"] = self._spawn("node0", [
            "node", "--room", "chaos", "--model-dir", str(model_dir), "--coordinator", self.url,
            "--port", str(free_port()), "--memory", "1GB", "--wallet", str(node_path)])

    def transfer_loop(self) -> None:
        """Signed transfers from worker 0's wallet (it earns) to worker 1's; every acknowledged
        one is recorded. Retries go through LedgerClient (same tx; found on the chain if it landed)."""
        client = LedgerClient(self.url, timeout=10.0, policy=Backoff(base=0.2, cap=2.0, max_elapsed=60))
        payer, payee = self.worker_wallets[0], self.worker_wallets[-1]
        while not self.stop.wait(0.7):
            try:
                bal = client.balance(payer.address)
                if bal["spendable"] < 3 * TRANSFER:
                    continue
                tx = transfer_tx(payer, payee.address, TRANSFER, bal["next_nonce"], now_ms())
                self.acked_transfers.append(client.transfer(tx.to_json())["txid"])
            except (Unavailable, LedgerHTTPError, httpx.HTTPError) as exc:
                print(f"transfer: {exc}", file=sys.stderr)

    def ask_loop(self) -> None:
        """Signed, paid (PAY_INFERENCE), non-streamed generation requests to the room, from the
        last worker's wallet once it has earned enough; completed ones are recorded."""
        from ailo.ledger.tx import pay_inference_tx
        path = "/v1/rooms/chaos/generate"
        while not self.stop.wait(1.0):
            try:
                price = httpx.get(f"{self.url}/v1/rooms/chaos", timeout=10).json().get("price") or 0
                spendable = httpx.get(f"{self.url}/v1/balance/{self.asker.address}", timeout=10).json()["spendable"]
                if spendable < price + 2 * TRANSFER:
                    continue
                payment = pay_inference_tx(self.asker, os.urandom(16).hex(), price, now_ms()).to_json() if price else None
                body = json.dumps({"input_ids": [5, 17, 42], "max_new_tokens": 3, "stream": False,
                                   "payment": payment}).encode()
                headers = {"content-type": "application/json", **sign_request(self.asker, "POST", path, body)}
                r = httpx.post(self.url + path, content=body, headers=headers, timeout=30)
            except (httpx.HTTPError, ValueError, KeyError):
                continue
            if r.status_code == 200 and r.json().get("type") == "done":
                done = r.json()
                self.acked_requests.append((done["request_id"], [p for p in done.get("payees", [])]))
                if time.monotonic() > self.last_start:
                    self.result.requests_after_last_restart += 1

    # -- the run ----------------------------------------------------------------------------
    def rounds_closed(self) -> int:
        try:
            db = sqlite3.connect(f"file:{self.state / 'state.db'}?mode=ro", uri=True, timeout=5)
            n = db.execute("SELECT COUNT(*) FROM rounds WHERE status = 'closed'").fetchone()[0]
            db.close()
            return n
        except sqlite3.Error:
            return -1

    def run(self) -> ChaosResult:
        t0 = time.monotonic()
        end = t0 + self.cfg.timeout
        self.restart()
        self.start_clients()
        threads = []
        if self.cfg.transfers:
            threads.append(threading.Thread(target=self.transfer_loop, daemon=True))
        if self.cfg.room:
            threads.append(threading.Thread(target=self.ask_loop, daemon=True))
        for t in threads:
            t.start()
        first_kill_rounds = None
        random_left = self.cfg.random_kills
        next_kill = time.monotonic() + self.rng.uniform(*self.cfg.gap)
        try:
            while time.monotonic() < end:
                time.sleep(0.25)
                if self.coord.poll() is not None:           # died at an armed crash point
                    self.result.kills += 1
                    self.result.crash_point_kills.append(self.armed.pop(0))
                    if first_kill_rounds is None:
                        first_kill_rounds = self.rounds_closed()
                    self.restart()
                    next_kill = time.monotonic() + self.rng.uniform(*self.cfg.gap)
                    continue
                if not self.armed and random_left and time.monotonic() >= next_kill:
                    if first_kill_rounds is None:
                        first_kill_rounds = self.rounds_closed()
                    self.kill()
                    random_left -= 1
                    self.restart()
                    next_kill = time.monotonic() + self.rng.uniform(*self.cfg.gap)
                    continue
                if not self.armed and not random_left and first_kill_rounds is not None:
                    closed = self.rounds_closed()
                    if closed - first_kill_rounds >= self.cfg.rounds_after_first_kill and (
                            not self.cfg.room or self.result.requests_after_last_restart > 0):
                        break
        finally:
            self.stop.set()
            for t in threads:
                t.join(timeout=40)
            self.result.client_exits = sum(p.poll() is not None for p in self.clients.values())
            for p in self.clients.values():
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGTERM)
            for p in self.clients.values():
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
        self.result.rounds_closed = self.rounds_closed()
        self.result.rounds_closed_after_first_kill = (self.result.rounds_closed - first_kill_rounds
                                                      if first_kill_rounds is not None else 0)
        self.result.transfers_acked = len(self.acked_transfers)
        self.result.requests_completed = len(self.acked_requests)
        self.result.invariant_failures = self.check_invariants()
        self.result.seconds = round(time.monotonic() - t0, 1)
        return self.result

    def close(self) -> None:
        if self.coord is not None and self.coord.poll() is None:
            os.killpg(self.coord.pid, signal.SIGTERM)
            try:
                self.coord.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.coord.pid, signal.SIGKILL)
        for p in self.clients.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)

    # -- invariants -------------------------------------------------------------------------
    def check_invariants(self) -> list[str]:
        bad: list[str] = []
        if self.coord.poll() is not None:      # one last clean start: a crash leaves a startable state
            self.armed.clear()
            self.restart()
        client = LedgerClient(self.url, policy=Backoff(base=0.2, cap=2.0, max_elapsed=60))
        blocks = client.fetch_chain()
        report = verify_chain(blocks)
        if not report.ok:
            bad.append(f"chain does not verify: {report}")
        txs = [(b["height"], t) for b in blocks for t in b["txs"]]
        info = client.info()
        if info["supply"] != info["minted"] - info["burned"]:
            bad.append(f"supply {info['supply']} != minted {info['minted']} - burned {info['burned']}")
        minted = sum(t["amount"] for _, t in txs if t["type"].startswith("MINT"))
        if minted != info["minted"]:
            bad.append(f"mints on the chain sum to {minted}, ledger says {info['minted']}")
        refs: dict[str, int] = {}
        for _, t in txs:
            if t["type"].startswith("MINT"):
                refs[t["ref"]] = refs.get(t["ref"], 0) + 1
        bad += [f"ref {r} minted {n} times" for r, n in refs.items() if n != 1]

        db = sqlite3.connect(f"file:{self.state / 'state.db'}?mode=ro", uri=True)
        versions = db.execute("SELECT version, manifest, round_id FROM versions ORDER BY version").fetchall()
        if [v[0] for v in versions] != list(range(len(versions))):
            bad.append(f"versions not consecutive: {[v[0] for v in versions]}")
        rounds = db.execute("SELECT id, status, base_version FROM rounds ORDER BY id").fetchall()
        if [r[0] for r in rounds] != list(range(1, len(rounds) + 1)):
            bad.append("round ids not consecutive")
        if [r[1] for r in rounds].count("open") != 1 or rounds[-1][1] != "open":
            bad.append("exactly the last round must be open")
        for v, _, rid in versions[1:]:
            if rid != v:
                bad.append(f"version {v} published by round {rid}")
        for v, manifest, _ in versions:
            for c in Manifest.from_json(manifest).chunks:
                p = self.state / "chunks" / c.sha256
                if not p.exists() or hashlib.sha256(p.read_bytes()).hexdigest() != c.sha256:
                    bad.append(f"chunk {c.sha256[:12]} of version {v} missing or corrupt")
        closed = {r[0] for r in rounds if r[1] == "closed"}
        accepted = db.execute("SELECT id, round_id, address, sha256 FROM updates WHERE status='accepted'").fetchall()
        for uid, rid, address, sha in accepted:
            p = self.state / "updates" / sha
            if not p.exists() or hashlib.sha256(p.read_bytes()).hexdigest() != sha:
                bad.append(f"update {uid} blob missing or corrupt")
            n = refs.get(f"update:{uid}", 0)
            if rid in closed and address and n != 1:
                bad.append(f"accepted update {uid} of closed round {rid} minted {n} times")
            if rid not in closed and n:
                bad.append(f"update {uid} of the open round already paid")
        ids = {u[0] for u in accepted}
        bad += [f"mint {r} for an update that is not accepted" for r in refs
                if r.startswith("update:") and int(r.split(":")[1]) not in ids]
        per_round = db.execute("SELECT round_id, client_id, COUNT(*) FROM updates WHERE status='accepted' "
                               "GROUP BY round_id, client_id HAVING COUNT(*) > 1").fetchall()
        bad += [f"client {c} has {n} accepted updates in round {r}" for r, c, n in per_round]
        db.close()
        leftovers = [p.name for d in ("chunks", "updates") for p in (self.state / d).glob(".*.tmp")]
        if leftovers and self.coord.poll() is None:
            ready = httpx.get(f"{self.url}/v1/ready", timeout=10).json()
            bad.append(f"temporary files after start-up: {leftovers} (ready: {ready})")

        on_chain = {}
        from ailo.ledger.tx import Transaction
        for _, t in txs:
            if t["type"] == "TRANSFER":
                txid = Transaction.from_json(t).txid
                on_chain[txid] = on_chain.get(txid, 0) + 1
        bad += [f"acknowledged transfer {x[:12]} on the chain {on_chain.get(x, 0)} times"
                for x in self.acked_transfers if on_chain.get(x, 0) != 1]
        if len(set(self.acked_transfers)) != len(self.acked_transfers):
            bad.append("a transfer was acknowledged twice")
        for rid, payees in self.acked_requests:
            for addr in payees:
                n = refs.get(f"request:{rid}:{addr}", 0)
                if n != 1:
                    bad.append(f"completed request {rid} paid {n} times to {addr[:14]}")
        return bad
