"""A server collects image chunks no row names (another server killed between writing a job's
bytes and committing it) once it has started, and leaves the named ones."""

from __future__ import annotations

import time

from kakumei.store.db import Database
from kakumei.store.images import ORPHAN_GRACE_SECONDS, blob_key, write_chunks
from kakumei.store.migrate import migrate
from tests.support import wait_for


def chunks(db: Database, key: str) -> int:
    with db.transaction(write=False) as tx:
        return int(tx.scalar("SELECT count(*) AS n FROM image_blobs WHERE blob_key = ?", (key,)))


def test_a_starting_server_collects_chunks_left_by_a_killed_one(make_server, database_url) -> None:
    db = Database(database_url)
    try:
        migrate(db)
        old = blob_key("0" * 32, at=time.time() - ORPHAN_GRACE_SECONDS - 60)  # the killed server's
        young = blob_key("1" * 32)  # being written right now: its row may still commit
        with db.transaction() as tx:
            write_chunks(tx, old, b"x" * 300_000)
            write_chunks(tx, young, b"y")
        assert chunks(db, old) == 2
        server = make_server(local_worker=False, image_store="database")
        wait_for(lambda: chunks(db, old) == 0, "the orphaned chunks to go", seconds=20, interval=0.1)
        assert chunks(db, young) == 1
        with server.client() as client:  # and it serves as usual
            assert client.get("/healthz").status_code == 200
    finally:
        db.close()
