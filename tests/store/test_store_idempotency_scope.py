"""Idempotency keys per caller on both databases: anonymous visitors' keys are told apart by
address, registered users' hold from any address, and 0006 carries older anonymous keys over."""

from __future__ import annotations

from kakumei.fairness.cost import request_cost
from kakumei.schemas import GenerationRequest
from kakumei.store import migrate as migrate_module
from kakumei.store.db import Database
from kakumei.store.jobs import NewJob
from kakumei.store.migrate import migrate

REQUEST = GenerationRequest(prompt="a fox", width=64, height=64, steps=2)


def _new(user_id: int, key: str, scope: str, addr: str) -> NewJob:
    return NewJob(user_id, REQUEST, "m", request_cost(REQUEST, "m"), idempotency_key=key,
                  idempotency_scope=scope, client_addr=addr)


def test_one_key_in_two_scopes_is_two_jobs(stores) -> None:
    anon = stores.users.anonymous()
    first, created = stores.jobs.submit(_new(anon.id, "k", "10.0.0.1", "10.0.0.1"))
    second, created_too = stores.jobs.submit(_new(anon.id, "k", "10.0.0.2", "10.0.0.2"))
    assert created and created_too and first.id != second.id
    replay, again = stores.jobs.submit(_new(anon.id, "k", "10.0.0.1", "10.0.0.1"))
    assert not again and replay.id == first.id


def test_0006_keeps_older_anonymous_keys_for_their_address(database_url, monkeypatch, tmp_path) -> None:
    from kakumei.store.images import ImageStore
    from kakumei.store.jobs import JobStore

    db = Database(database_url)
    try:
        files = migrate_module.migration_files()
        migrate(db, target=5)
        with db.transaction(write=False) as tx:  # the users table as 0005 left it
            anon_id = int(tx.scalar("SELECT id FROM users WHERE name = 'anonymous'"))
        with db.transaction() as tx:  # as 0005's JobStore queued it: no scope column yet
            tx.execute(
                "INSERT INTO jobs (id, user_id, client_addr, state, request, request_hash, idempotency_key, "
                "model, pixels, steps, image_count, cost, max_attempts, created_at) "
                "VALUES ('old', ?, '10.0.0.1', 'queued', ?, 'h', 'k', 'm', 4096, 2, 1, 1.0, 3, 1.0)",
                (anon_id, REQUEST.model_dump_json()),
            )
        assert migrate(db) == [v for v, _, _ in files if v > 5]
        jobs = JobStore(db, ImageStore(db, tmp_path / "images"))
        with db.transaction(write=False) as tx:
            assert tx.scalar("SELECT idempotency_scope FROM jobs WHERE id = 'old'") == "10.0.0.1"
        stranger, created = jobs.submit(_new(anon_id, "k", "10.0.0.2", "10.0.0.2"))
        assert created and stranger.id != "old"
    finally:
        db.close()
