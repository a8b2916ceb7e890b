"""Database.transaction's round-trip savers, on both databases: statements in one batch, reads
without BEGIN/COMMIT, and commits that do not wait for the disk (PostgreSQL)."""

from __future__ import annotations

import pytest

from kakumei.store.db import Database
from kakumei.store.migrate import migrate


@pytest.fixture
def db(database_url: str):
    database = Database(database_url)
    migrate(database)
    with database.transaction() as tx:
        tx.execute("CREATE TABLE batch_probe (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)")
    yield database
    database.close()


def test_a_batch_runs_in_order_and_returns_rows_and_counts(db: Database) -> None:
    with db.transaction() as tx:
        results = tx.batch([
            ("INSERT INTO batch_probe (id, v) VALUES (?, ?)", (1, 10)),
            ("INSERT INTO batch_probe (id, v) VALUES (?, ?) RETURNING v", (2, 20)),
            ("UPDATE batch_probe SET v = v + 1 WHERE id <= ?", (2,)),
            ("UPDATE batch_probe SET v = 0 WHERE id = ?", (99,)),
            ("SELECT v FROM batch_probe WHERE id = ?", (1,)),  # sees the update before it
        ])
    assert results[0].rows == [] and results[0].rowcount == 1
    assert results[1].one() == {"v": 20}
    assert results[2].rowcount == 2 and results[3].rowcount == 0
    assert results[4].scalar() == 11


def test_an_error_in_a_batch_rolls_the_transaction_back(db: Database) -> None:
    with pytest.raises(db.integrity_errors):
        with db.transaction() as tx:
            tx.batch([
                ("INSERT INTO batch_probe (id, v) VALUES (?, ?)", (1, 1)),
                ("INSERT INTO batch_probe (id, v) VALUES (?, ?)", (1, 2)),  # the same key
                ("INSERT INTO batch_probe (id, v) VALUES (?, ?)", (3, 3)),
            ])
    with db.transaction(write=False) as tx:
        assert tx.scalar("SELECT count(*) AS n FROM batch_probe") == 0
    with db.transaction() as tx:  # the connection is usable again
        tx.batch([("INSERT INTO batch_probe (id, v) VALUES (?, ?)", (1, 1))])
    with db.transaction(write=False) as tx:
        assert tx.scalar("SELECT v FROM batch_probe WHERE id = 1") == 1


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_reads_run_without_a_transaction_and_writes_within_one(db: Database) -> None:
    with db.transaction(write=False) as tx:
        tx.scalar("SELECT 1 AS one")
        assert db.connection().info.transaction_status == 0  # idle: no BEGIN was sent
    with db.transaction() as tx:
        tx.scalar("SELECT 1 AS one")
        assert db.connection().info.transaction_status != 0
        with db.transaction(write=False) as inner:  # nested: stays in the outer transaction
            inner.scalar("SELECT 1 AS one")
            assert db.connection().info.transaction_status != 0


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_only_an_outermost_transaction_gives_up_waiting_for_the_disk(db: Database) -> None:
    db.connection().execute("SET synchronous_commit TO on")  # the session's (the test database turns it off)

    def setting(tx) -> str:
        return tx.scalar("SHOW synchronous_commit")

    with db.transaction(durable=False) as tx:
        assert setting(tx) == "off"
    with db.transaction() as tx:
        assert setting(tx) == "on"  # SET LOCAL ended with the transaction
        with db.transaction(durable=False) as inner:
            # inside a durable transaction a savepoint must not change the outer commit
            assert setting(inner) == "on"
    with db.transaction(durable=False) as tx:
        tx.batch([("INSERT INTO batch_probe (id, v) VALUES (?, ?)", (1, 1))])  # SET rides with a batch too
        assert setting(tx) == "off"
    with db.transaction(write=False) as tx:
        assert tx.scalar("SELECT v FROM batch_probe WHERE id = 1") == 1
