import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("AILO_HOME", str(ROOT))


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    from ailo.paths import corpus_dir as cd
    d = cd()
    assert (d / ".fetched").exists(), "run `make setup` first (fetches the corpus)"
    return d


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a shared 2-core box: intra-op threads only add contention."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def pg_server():
    """A real PostgreSQL cluster (Debian's binaries, initdb + pg_ctl on a free port) for the
    whole session; tests needing it skip when the binaries are not installed."""
    from tests.servers import pg_available, postgres_server
    if not pg_available():
        pytest.skip("PostgreSQL binaries not installed (make setup installs postgresql)")
    with postgres_server() as admin_url:
        yield admin_url


@pytest.fixture
def pg_url(pg_server):
    """A fresh, empty database on the session's PostgreSQL server."""
    import uuid

    import psycopg
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield pg_server.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
