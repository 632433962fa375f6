"""Storage backends for operators: the same round-store and ledger-store operations on
PostgreSQL (a throw-away local cluster from Debian's binaries, as in the tests) against the
SQLite default in the same process. Operations: `record_update` (one row per submission),
`publish` (one version + close round + open next, one transaction), `append_block` (a block
with 50 tx rows and 50 account upserts, one transaction). Prints one JSON line with ops/s per
backend and PostgreSQL/SQLite ratios. No target: it tells an operator what --db costs.

    .venv/bin/python bench/storage.py [--updates 2000] [--publishes 200] [--blocks 200]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ailo.storage.ledger_store import AccountRow, BlockRecord, SQLiteLedgerStore, TxRow  # noqa: E402
from ailo.storage.rounds_store import SQLiteRoundStore  # noqa: E402
from tests.servers import pg_available, postgres_server  # noqa: E402

MANIFEST = json.dumps({"chunks": [{"index": i, "sha256": f"{i:064x}", "size": 1 << 20} for i in range(35)],
                       "tensors": {f"blocks.{i}.w": {"shape": [1600, 1600]} for i in range(100)}})


def rate(n: int, fn) -> float:
    t = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - t)


def run(rounds, ledger, args) -> dict:
    rounds.start(MANIFEST, 5.0, {"steps": 20}, 3, time.time() + 300)
    out = {"record_update_per_s": rate(args.updates, lambda i: rounds.record_update(
        1, f"client-{i}", f"ailo1{i:040d}", 64, 3.2, f"{i:064x}", 4 << 20, "accepted", extra={"cosine": 0.1}))}
    out["publish_per_s"] = rate(args.publishes, lambda i: rounds.publish(
        i + 1, i + 1, MANIFEST, 4.0, {"steps": 20}, 3, time.time() + 300))

    def block(h: int) -> None:
        ledger.append_block(BlockRecord(
            h, f"{h:064x}", h, {"height": h, "txs": [{"n": j} for j in range(50)]},
            txs=[TxRow(f"{h:032x}{j:032x}", j, "TRANSFER") for j in range(50)],
            accounts=[AccountRow(f"ailo1{j:040d}", 10**9 + h, 0, h, None) for j in range(50)]))
    out["append_block_per_s"] = rate(args.blocks, block)
    return {k: round(v, 1) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--updates", type=int, default=2000)
    ap.add_argument("--publishes", type=int, default=200)
    ap.add_argument("--blocks", type=int, default=200)
    args = ap.parse_args()
    result = {"bench": "storage", "machine": platform.machine(), "python": platform.python_version(),
              "args": vars(args)}
    with tempfile.TemporaryDirectory() as tmp:
        result["sqlite"] = run(SQLiteRoundStore(Path(tmp) / "s"), SQLiteLedgerStore(Path(tmp) / "s" / "ledger.db"), args)
    if pg_available():
        import psycopg

        from ailo.storage.postgres import PostgresLedgerStore, PostgresRoundStore
        with postgres_server(fsync=True) as admin, tempfile.TemporaryDirectory() as tmp:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute("CREATE DATABASE bench")
            url = admin.rsplit("/", 1)[0] + "/bench"
            result["postgresql"] = run(PostgresRoundStore(Path(tmp), url), PostgresLedgerStore(url), args)
        result["ratio_pg_over_sqlite"] = {k: round(result["postgresql"][k] / result["sqlite"][k], 3)
                                         for k in result["sqlite"]}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
