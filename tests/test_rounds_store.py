"""Round store on SQLite and on PostgreSQL (same tests, real servers): genesis, atomic
publish (a failure mid-publish leaves the old version and the open round), one accepted
update per client and round, 64-bit counters, float timestamps, restart."""
from __future__ import annotations

import time

import pytest

from storage_backends import backend  # noqa: F401  (fixture: sqlite | postgresql)


class InjectedFault(Exception):
    pass


def genesis(store, deadline: float | None = None) -> float:
    deadline = deadline or time.time() + 123.456789
    store.start('{"version": 0}', 5.5, {"steps": 3, "lr": 0.001}, 2, deadline)
    return deadline


def test_genesis_updates_and_newest_order(backend) -> None:
    store = backend.rounds()
    assert store.latest_version() is None and store.open_round() is None
    deadline = genesis(store)
    v = store.latest_version()
    assert (v.version, v.manifest, v.val_loss, v.round_id) == (0, '{"version": 0}', 5.5, None)
    rnd = store.open_round()
    assert (rnd.id, rnd.base_version, rnd.status, rnd.min_updates, rnd.task) == (1, 0, "open", 2, {"steps": 3, "lr": 0.001})
    assert rnd.deadline == deadline                              # double precision, not float4
    ids = [store.record_update(1, f"c{i}", f"ailo1{i}", 10 + i, 2.5, f"{i:064x}", 100 * i, "accepted",
                               extra={"cosine": 0.5}) for i in range(5)]
    assert ids == sorted(ids) and len(set(ids)) == 5
    assert [u.id for u in store.updates(limit=2)] == ids[:2]
    assert [u.id for u in store.updates(limit=2, newest=True)] == ids[-2:]
    u = store.updates(1, "accepted")[3]
    assert (u.client_id, u.address, u.n_samples, u.size, u.extra) == ("c3", "ailo13", 13, 300, {"cosine": 0.5})
    store.record_update(1, "c0", None, 1, 1.0, None, 0, "refused", "duplicate", "again")
    assert store.clients() == [f"c{i}" for i in range(5)]
    assert len(store.updates(1)) == 6 and len(store.updates(1, "refused")) == 1


def test_one_accepted_update_per_client_and_round(backend) -> None:
    store = backend.rounds()
    genesis(store)
    store.record_update(1, "alice", None, 1, 1.0, None, 0, "accepted")
    with pytest.raises(Exception):                                # the partial unique index holds
        store.record_update(1, "alice", None, 1, 1.0, None, 0, "accepted")
    store.record_update(1, "alice", None, 1, 1.0, None, 0, "refused", "duplicate")  # refusals are fine
    assert [u.status for u in store.updates(1)] == ["accepted", "refused"]
    store.record_update(1, "bob", None, 1, 1.0, None, 0, "accepted")  # the store still works after the error


def test_publish_is_atomic(backend) -> None:
    class FailingRounds(backend.rounds_cls):
        fail = False

        def _insert_round(self, *a, **kw):
            if self.fail:
                raise InjectedFault("crash between closing round 1 and opening round 2")
            return super()._insert_round(*a, **kw)

    store = backend.rounds(FailingRounds)
    genesis(store)
    store.fail = True
    with pytest.raises(InjectedFault):
        store.publish(1, 1, '{"version": 1}', 4.0, {"steps": 3}, 2, time.time() + 60)
    assert store.latest_version().version == 0                   # no half-published version
    assert store.open_round().id == 1 and store.round(1).status == "open"
    assert len(store.rounds()) == 1
    store.fail = False
    store.publish(1, 1, '{"version": 1}', 4.0, {"steps": 4}, 2, time.time() + 60)
    assert [v.version for v in store.versions()] == [0, 1]
    assert [(r.id, r.status) for r in store.rounds()] == [(1, "closed"), (2, "open")]
    assert store.open_round().task == {"steps": 4} and store.versions()[1].round_id == 1


def test_counters_are_64_bit_and_survive_restart(backend) -> None:
    store = backend.rounds()
    genesis(store)
    store.bump_counter("chunk_bytes_served", 3 * 2**31)
    store.bump_counter("chunk_bytes_served", 7)
    store.set_counter("gauge", 5)
    store.set_counter("gauge", 9)
    store.extend_deadline(1, 1e10 + 0.25)
    store.put_chunk("ab" * 32, b"chunk bytes")
    store.close()
    again = backend.rounds()                                      # the coordinator restarts
    assert again.counters() == {"chunk_bytes_served": 3 * 2**31 + 7, "gauge": 9}
    assert again.open_round().deadline == 1e10 + 0.25
    assert again.chunk_path("ab" * 32).read_bytes() == b"chunk bytes"  # blobs stay files in the state dir
    assert again.latest_version().version == 0


def test_pg_backend_keeps_rows_out_of_the_state_dir(backend) -> None:
    store = backend.rounds()
    genesis(store)
    assert (backend.state_dir / "state.db").exists() == (backend.name == "sqlite")
    assert backend.sql("SELECT COUNT(*) FROM versions", db="rounds") == [(1,)]


def test_postgres_store_reconnects_after_the_server_drops_it(tmp_path, pg_url) -> None:
    import psycopg

    from ailo.storage.postgres import PostgresRoundStore
    store = PostgresRoundStore(tmp_path / "s", pg_url)
    genesis(store)

    def kill_connections():
        with psycopg.connect(pg_url, autocommit=True) as c:
            c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    kill_connections()
    assert store.latest_version().version == 0                    # a read: reconnected and retried
    kill_connections()
    with pytest.raises(psycopg.OperationalError):                 # a write is never repeated blindly
        store.bump_counter("x", 1)
    store.bump_counter("x", 1)                                    # the next statement reconnects
    assert store.counters() == {"x": 1}
