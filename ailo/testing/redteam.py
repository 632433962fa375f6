"""Red-team clients and a campaign driver (tests/test_poc_attacks.py, bench/poc_attacks.py).

Each attacker is a real client of the coordinator's HTTP API: it registers its own wallets,
downloads the published model, asks for tasks and submits signed updates exactly as an honest
worker does, only the Δ it sends is a cheat:
- `sybil`     — one real training run, sent from several wallets with tiny noise;
- `gamer`     — trains on the public corpus's holdout split, the old fixed-seed PoC batches;
- `copycat`   — sends the last published global change M_{v−1} − M_v (zero compute);
- `lazy`      — trains 1 step instead of the task's steps, claims the full sample count;
- `booster`   — an honest Δ scaled ×`factor` to pull the model towards itself;
- `sign_flip` — an honest Δ negated;  `noise` — Gaussian noise with an honest Δ's norm;
- `early`     — honest work, but trains before asking for its task (speed-bonus gaming).
Two more (`EXTRA_KINDS`, not in the bench's default eight) make zero-compute updates from the
last global change G that slip under the 0.99 copy limit:
- `diluted`   — G scaled to the task's learning rate plus Gaussian noise of `dilution`·‖G‖;
- `sign_global` — sign(G), scaled to ‖G‖ (AdamW-like: every coordinate the same size).

A wallet the coordinator is cooling down (after refusals in a row, docs/REWARDS.md) does what a
rational cheater does: it waits up to `patience` seconds, else sits the round out (outcome
`cooling_down`, nothing trained or sent) instead of blocking on 429 answers until the
cool-down ends (up to 600 s, which kept the 10-round bench from finishing).
"""
from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import httpx
import torch

from ailo.backoff import Backoff, Unavailable
from ailo.chunks import ChunkStore, Manifest
from ailo.data import TokenDataset
from ailo.federation.core.codecs import CodecSpec
from ailo.federation.core.signing import sign_update
from ailo.federation.core.update_format import UpdateMeta, encode_update
from ailo.federation.client.uploader import submit_update
from ailo.federation.client.worker import Worker
from ailo.ledger.tx import register_tx
from ailo.ledger.verify import now_ms
from ailo.model import build_model
from ailo.training import TrainConfig, train_local
from ailo.wallet import Wallet

KINDS = ("sybil", "gamer", "copycat", "lazy", "booster", "sign_flip", "noise", "early")
EXTRA_KINDS = ("diluted", "sign_global")
FROM_GLOBAL = ("copycat", "diluted", "sign_global")  # zero compute: built from the last global change


class _HTTPSource:
    def __init__(self, http):
        self.http = http

    def fetch(self, sha: str) -> bytes:
        r = self.http.get(f"/v1/chunks/{sha}")
        r.raise_for_status()
        return r.content


@dataclass
class Attacker:
    kind: str
    http: httpx.Client
    data_dir: Path | None
    shard: int = 0
    num_shards: int = 1
    clones: int = 3
    factor: float = 2.0
    dilution: float = 0.3    # diluted: noise norm ÷ ‖G‖ (cos(Δ, G) ≈ 0.96 < 0.99)
    seed: int = 0
    patience: float = 5.0    # seconds it will wait out a cool-down before sitting a round out
    wallets: list[Wallet] = field(default_factory=list)
    outcomes: list[dict] = field(default_factory=list)   # one per submission: round, status, reason

    def __post_init__(self) -> None:
        n = self.clones if self.kind == "sybil" else 1
        self.wallets = [Wallet.generate().with_username(f"{self.kind.replace('_', '-')}-{i}") for i in range(n)]
        if self.kind == "gamer":  # what the old coordinator scored on: public text, fixed seed 99
            self.data = TokenDataset.from_dir(self.data_dir, "holdout")
        else:
            self.data = TokenDataset.from_dir(self.data_dir, "train", self.shard, self.num_shards)
        self.previous: dict[str, torch.Tensor] | None = None  # copycat: last model it saw
        self.previous_lr: float | None = None                  # ...and its task's learning rate
        self.gen = torch.Generator().manual_seed(self.seed + 17)

    @property
    def addresses(self) -> list[str]:
        return [w.address for w in self.wallets]

    def register(self) -> None:
        for w in self.wallets:
            r = self.http.post("/v1/register", json=register_tx(w, w.username, now_ms()).to_json())
            assert r.status_code == 200, r.text

    def cooling_down(self, wallet: Wallet) -> float:
        """Seconds until the coordinator looks at this wallet's next update (its public
        reputation record: last refusal + cool-down), 0 when it may submit now."""
        for rec in self.http.get("/v1/status").json().get("reputation", []):
            if rec["address"] == wallet.address and rec.get("streak"):
                return max(0.0, rec["last_refused_ms"] / 1000.0 + rec["cooldown_s"] - time.time())
        return 0.0

    def ready(self, wallet: Wallet, rnd: int | None = None) -> bool:
        """Waits out a short cool-down; a long one costs the round (recorded as an outcome)."""
        wait = self.cooling_down(wallet)
        if wait > self.patience:
            self.outcomes.append({"round": rnd, "wallet": wallet.address, "status": "skipped",
                                  "reason": "cooling_down", "wait_s": round(wait, 1)})
            return False
        time.sleep(wait)
        return True

    def _model(self):
        manifest = Manifest.from_json(self.http.get("/v1/model").content)
        model = build_model(manifest.preset)
        model.load_state_dict(ChunkStore(manifest, _HTTPSource(self.http)).state_dict())
        return manifest, model

    def _train(self, model, task: dict, steps: int | None = None) -> dict[str, torch.Tensor]:
        rnd = task["round"]
        if self.kind == "gamer":
            batches = iter(self.data.fixed_batches(2, task["batch_size"], task["seq_len"], seed=99) * task["steps"])
        else:
            batches = self.data.random_batches(task["batch_size"], task["seq_len"], seed=1000 * rnd + self.seed)
        cfg = TrainConfig(steps=steps or task["steps"], batch_size=task["batch_size"], lr=task["lr"],
                          optimizer=task["optimizer"])
        return train_local(model, batches, cfg).delta

    def _task(self, client_id: str) -> dict:
        return self.http.post("/v1/tasks", json={"client_id": client_id}).json()

    def _submit(self, wallet: Wallet, client_id: str, task: dict, delta: dict[str, torch.Tensor],
                raw: bool = False) -> dict:
        """Signed submission; `raw`: one POST and its immediate answer (no back-off, no polling)."""
        body = encode_update(delta, CodecSpec.from_task(task))  # the round's codec, no error feedback
        meta = UpdateMeta(client_id, task["round"], task["version"], task["steps"] * task["batch_size"], 5.0,
                          task_id=task.get("task_id", ""))
        meta = sign_update(wallet, meta, hashlib.sha256(body).hexdigest())
        if raw:
            r = self.http.post("/v1/updates", content=body, headers=meta.to_headers())
            verdict = {"http_status": r.status_code, **r.json()}
        else:  # the same client path as an honest worker: 202 + verdict polling, back-off on 429
            try:   # ...but a 429 is not waited out for longer than its patience
                verdict = submit_update(self.http, body, meta, max_resign=0,
                                        policy=Backoff(base=0.5, cap=2.0, max_elapsed=self.patience))
            except Unavailable as exc:
                verdict = {"status": "refused", "reason": "rate_limited", "http_status": 429, "detail": str(exc)}
        out = {"round": task["round"], "http": verdict.get("http_status"), "wallet": wallet.address, **verdict}
        self.outcomes.append(out)
        return out

    def _from_global(self, g: dict[str, torch.Tensor], lr_ratio: float) -> dict[str, torch.Tensor]:
        """A zero-compute update from the last global change G (its norm matched to this task)."""
        if self.kind == "copycat":
            return g
        norm = math.sqrt(sum(float((v.double() ** 2).sum()) for v in g.values()))
        if self.kind == "diluted":
            noise = {k: torch.randn(v.shape, generator=self.gen) for k, v in g.items()}
            nn = math.sqrt(sum(float((v.double() ** 2).sum()) for v in noise.values()))
            return {k: lr_ratio * (v + self.dilution * norm / nn * noise[k]) for k, v in g.items()}
        count = sum(v.numel() for v in g.values())  # sign_global
        return {k: torch.sign(v) * lr_ratio * norm / math.sqrt(count) for k, v in g.items()}

    def act(self) -> None:
        """One round's worth of cheating."""
        rnd = self.http.get("/v1/status").json()["round"]
        if self.kind != "sybil" and not self.ready(self.wallets[0], rnd):
            return
        if self.kind == "early":  # train first, ask for the task (and its clock) afterwards
            manifest, model = self._model()
            st = self.http.get("/v1/status").json()
            c = st["config"]
            guess = {"round": st["round"], "steps": c["local_steps"], "batch_size": c["batch_size"],
                     "seq_len": c["seq_len"] or model.cfg.n_ctx, "optimizer": c["optimizer"],
                     "lr": c["lr"] * c["lr_decay"] ** (st["round"] - 1)}
            delta = self._train(model, guess)
            task = self._task("early-0")
            if task.get("status") == "train" and task["version"] == manifest.version:
                self._submit(self.wallets[0], "early-0", task, delta)
            return
        task = self._task(f"{self.kind}-0")
        if task.get("status") != "train":
            return
        manifest, model = self._model()
        state = {k: v.clone() for k, v in model.state_dict().items()}
        if self.kind in FROM_GLOBAL:
            prev, self.previous = self.previous, state
            prev_lr, self.previous_lr = self.previous_lr, task["lr"]
            if prev is None:
                return  # nothing published to copy yet
            self._submit(self.wallets[0], f"{self.kind}-0", task, self._from_global(
                {k: prev[k] - state[k] for k in state}, task["lr"] / prev_lr if prev_lr else 1.0))
            return
        delta = self._train(model, task, steps=1 if self.kind == "lazy" else None)
        if self.kind == "sybil":
            norm = math.sqrt(sum(float((v.double() ** 2).sum()) for v in delta.values()))
            for i, w in enumerate(self.wallets):
                noise = {k: torch.randn(v.shape, generator=self.gen) for k, v in delta.items()}
                nn = math.sqrt(sum(float((v.double() ** 2).sum()) for v in noise.values()))
                clone = {k: v + 1e-3 * norm / nn * noise[k] for k, v in delta.items()}
                if not self.ready(w, task["round"]):
                    continue
                t = task if i == 0 else self._task(f"sybil-{i}")
                if t.get("status") == "train":
                    self._submit(w, f"sybil-{i}", t, clone)
            return
        if self.kind == "booster":
            delta = {k: self.factor * v for k, v in delta.items()}
        elif self.kind == "sign_flip":
            delta = {k: -v for k, v in delta.items()}
        elif self.kind == "noise":
            norm = math.sqrt(sum(float((v.double() ** 2).sum()) for v in delta.values()))
            noise = {k: torch.randn(v.shape, generator=self.gen) for k, v in delta.items()}
            nn = math.sqrt(sum(float((v.double() ** 2).sum()) for v in noise.values()))
            delta = {k: v * norm / nn for k, v in noise.items()}
        self._submit(self.wallets[0], f"{self.kind}-0", task, delta)


@dataclass
class Campaign:
    """Honest workers and attackers sharing rounds on one coordinator (in order, rotated per
    round); each round ends at its deadline, which the driver brings forward once everyone has
    acted, so a run does not wait out real deadlines."""
    http: httpx.Client
    coordinator: object            # ailo.federation.coordinator.coordinator.Coordinator (for the deadline)
    data_dir: Path
    honest: int = 3
    kinds: tuple[str, ...] = KINDS
    cache_dir: Path = Path("data/redteam-cache")
    workers: list[Worker] = field(default_factory=list)
    attackers: list[Attacker] = field(default_factory=list)
    earnings: list[dict[str, int]] = field(default_factory=list)  # per round: participant → units

    def __post_init__(self) -> None:
        shards = self.honest + 1  # the attackers' own text is one more shard
        self.workers = [Worker("http://testserver", f"honest-{k}", self.data_dir, k, shards, progress=False,
                               http=self.http, wallet=Wallet.generate().with_username(f"honest-{k}"),
                               cache_dir=self.cache_dir / f"honest-{k}") for k in range(self.honest)]
        self.attackers = [Attacker(kind, self.http, self.data_dir, self.honest, shards, seed=i)
                          for i, kind in enumerate(self.kinds)]
        for w in self.workers:
            w.ensure_registered()
        for a in self.attackers:
            a.register()

    def balances(self) -> dict[str, int]:
        def bal(addr):
            return self.http.get(f"/v1/balance/{addr}").json()["spendable"]
        out = {w.client_id: bal(w.wallet.address) for w in self.workers}
        out.update({a.kind: sum(bal(x) for x in a.addresses) for a in self.attackers})
        return out

    def honest_round(self, w: Worker) -> None:
        while True:
            report = w.run_round()
            if report is None or report.response.get("status") == "accepted":
                return

    def play(self, rounds: int, progress: Callable[[str], None] | None = None) -> None:
        """`progress` gets one line per closed round (time per actor, earnings)."""
        before = self.balances()
        for r in range(rounds):
            t_round = time.time()
            actors = [("h", w) for w in self.workers] + [("a", a) for a in self.attackers]
            shift = r % len(actors)
            took: dict[str, float] = {}
            for tag, actor in actors[shift:] + actors[:shift]:
                t0 = time.time()
                self.honest_round(actor) if tag == "h" else actor.act()
                took[actor.client_id if tag == "h" else actor.kind] = time.time() - t0
            coord = self.coordinator
            rnd = coord.current_round()
            coord.store.extend_deadline(rnd.id, time.time() - 1)  # the validation pipeline's tick closes it
            deadline = time.time() + 120
            while coord.settled_round < rnd.id and time.time() < deadline:  # published, then paid
                time.sleep(0.2)
            assert coord.current_round().id == rnd.id + 1, "round did not close (no accepted update?)"
            assert coord.settled_round == rnd.id, "round closed but its rewards were not minted in time"
            after = self.balances()
            self.earnings.append({k: after[k] - before[k] for k in after})
            before = after
            if progress is not None:
                earned = " ".join(f"{k}={v / 1e8:.3f}" for k, v in self.earnings[-1].items())
                slow = " ".join(f"{k}={v:.0f}s" for k, v in sorted(took.items(), key=lambda kv: -kv[1])[:4])
                progress(f"round {r + 1}/{rounds} closed in {time.time() - t_round:.0f} s "
                         f"(slowest: {slow}); ALC earned: {earned}")

    def honest_refusals(self) -> tuple[int, int]:
        rows = [u for u in self.coordinator.store.updates(limit=100000) if u.client_id.startswith("honest-")]
        return sum(u.status == "refused" for u in rows), len(rows)
