"""`ailo coordinator --db postgresql://...` with real processes and a real PostgreSQL: a signed
worker's round is published and rewarded, nothing but blobs lands in the state directory,
a restarted coordinator resumes from the database, and `ailo export --db` reads it."""
import json
import subprocess
import sys

import httpx
import psycopg
import pytest

from ailo.ledger import verify_chain
from tests.procs import ROOT, ailo, free_port, stop, wait_healthy

pytestmark = pytest.mark.slow


def test_coordinator_on_postgres_round_restart_export(tmp_path, pg_url):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    state = tmp_path / "state"
    args = ["coordinator", "--state", str(state), "--port", str(port), "--db", pg_url, "--rounds", "2",
            "--min-updates", "1", "--local-steps", "10"]
    coord = ailo(*args, log=tmp_path / "coord.log")
    try:
        wait_healthy(url, coord)
        w = ailo("worker", "--coordinator", url, "--client-id", "pg-worker", "--cache", str(tmp_path / "cache"),
                 "--wallet", str(tmp_path / "wallet.json"), "--rounds", "1", "--quiet", log=tmp_path / "w.log")
        assert w.wait(timeout=300) == 0, (tmp_path / "w.log").read_text()
        status = httpx.get(f"{url}/v1/status").json()
        assert status["version"] == 1 and status["round"] == 2, (tmp_path / "coord.log").read_text()
        address = json.loads((tmp_path / "wallet.json").read_text())["address"]
        balance = httpx.get(f"{url}/v1/balance/{address}").json()["spendable"]
        assert balance > 0
    finally:
        stop(coord)
    assert not (state / "state.db").exists() and not (state / "ledger.db").exists()
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT COUNT(*) FROM versions").fetchone()[0] == 2
        assert conn.execute("SELECT status FROM updates").fetchall() == [("accepted",)]
        chain = [json.loads(r[0]) for r in conn.execute("SELECT json FROM blocks ORDER BY height")]
    assert verify_chain(chain).ok and any(tx["type"] == "MINT_TRAINING" for b in chain for tx in b["txs"])

    coord = ailo(*args, log=tmp_path / "coord2.log")              # restart: resumes from PostgreSQL
    try:
        wait_healthy(url, coord)
        status = httpx.get(f"{url}/v1/status").json()
        assert (status["version"], status["round"], status["clients"]) == (1, 2, ["pg-worker"])
        assert httpx.get(f"{url}/v1/balance/{address}").json()["spendable"] == balance
    finally:
        stop(coord)

    r = subprocess.run([sys.executable, "-m", "ailo.cli.main", "export", "--state", str(state), "--db", pg_url,
                        "--format", "ailo"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads((state / "exports" / "v1-ailo" / "export.json").read_text())["version"] == 1

    bad = subprocess.run([sys.executable, "-m", "ailo.cli.main", "coordinator", "--state", str(tmp_path / "x"),
                          "--db", "mysql://nope"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unsupported --db" in bad.stderr


def test_unreachable_database_is_a_cli_error_without_the_password(tmp_path):
    url = f"postgresql://bob:s3cret@127.0.0.1:{free_port()}/ailo"
    r = subprocess.run([sys.executable, "-m", "ailo.cli.main", "coordinator", "--state", str(tmp_path / "s"),
                        "--db", url], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "cannot use the database postgresql://bob:***@" in r.stderr
    assert "s3cret" not in r.stderr + r.stdout
