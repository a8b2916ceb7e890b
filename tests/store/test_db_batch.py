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


@pytest.fixture
def round_trips(db: Database):
    """Counts the round trips of this thread's PostgreSQL connection (each one ends with the
    server's ReadyForQuery, which libpq's protocol trace records)."""
    import tempfile

    from psycopg import pq

    conn = db.connection()
    trace = tempfile.TemporaryFile()

    def start() -> None:
        conn.pgconn.trace(trace.fileno())
        conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)

    def count() -> int:
        conn.pgconn.untrace()  # flushes libpq's buffered trace
        trace.seek(0)
        n = trace.read().count(b"\tReadyForQuery")
        trace.seek(0)
        trace.truncate()
        start()
        return n

    start()

    yield count
    conn.pgconn.untrace()
    trace.close()


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_write_transaction_sends_its_begin_with_its_first_statement(db: Database, round_trips) -> None:
    round_trips()
    with db.transaction() as tx:
        tx.execute("INSERT INTO batch_probe (id, v) VALUES (?, ?)", (1, 1))
    assert round_trips() == 2  # BEGIN with the INSERT, then COMMIT
    with db.transaction(durable=False) as tx:
        tx.batch([("UPDATE batch_probe SET v = 2 WHERE id = ?", (1,)), ("SELECT v FROM batch_probe", ())])
    assert round_trips() == 2  # BEGIN and SET LOCAL with the batch, then COMMIT
    with db.transaction():
        pass
    assert round_trips() == 0  # nothing ran: nothing to begin or commit
    with db.transaction(write=False) as tx:
        assert tx.scalar("SELECT v FROM batch_probe WHERE id = 1") == 2


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_transaction_is_one_whatever_runs_first_in_it(db: Database) -> None:
    class Stop(Exception):
        pass

    # A savepoint opened before the outer transaction ran anything is still inside it: the
    # outer rollback takes the inner's released work along.
    with pytest.raises(Stop):
        with db.transaction():
            with db.transaction() as inner:
                inner.execute("INSERT INTO batch_probe (id, v) VALUES (?, ?)", (1, 1))
            assert db.connection().info.transaction_status != 0
            raise Stop
    # So is a statement sent straight to the driver's connection (a migration's function body).
    with pytest.raises(Stop):
        with db.transaction() as tx:
            tx._conn.execute("INSERT INTO batch_probe (id, v) VALUES (2, 2)")
            raise Stop
    with db.transaction(write=False) as tx:
        assert tx.scalar("SELECT count(*) AS n FROM batch_probe") == 0
    assert db.connection().info.transaction_status == 0


def test_a_last_batch_commits_with_it_and_nothing_runs_after(db: Database) -> None:
    class Stop(Exception):
        pass

    with pytest.raises(Stop):
        with db.transaction() as tx:
            tx.batch([("INSERT INTO batch_probe (id, v) VALUES (?, ?)", (1, 1))], last=True)
            with pytest.raises(RuntimeError):
                tx.execute("INSERT INTO batch_probe (id, v) VALUES (?, ?)", (2, 2))
            raise Stop  # too late to roll back: the batch committed
    # A failing last batch rolls everything back, the statements before it included.
    with pytest.raises(db.integrity_errors):
        with db.transaction() as tx:
            tx.execute("INSERT INTO batch_probe (id, v) VALUES (?, ?)", (3, 3))
            tx.batch([("INSERT INTO batch_probe (id, v) VALUES (?, ?)", (1, 9))], last=True)
    # In a savepoint it is an ordinary batch: the outer transaction still decides.
    with pytest.raises(Stop):
        with db.transaction():
            with db.transaction() as inner:
                inner.batch([("INSERT INTO batch_probe (id, v) VALUES (?, ?)", (4, 4))], last=True)
            raise Stop
    with db.transaction(write=False) as tx:
        assert [r["id"] for r in tx.all("SELECT id FROM batch_probe ORDER BY id")] == [1]
    with db.transaction() as tx:  # the connection is usable again
        tx.batch([("UPDATE batch_probe SET v = 5 WHERE id = ?", (1,))], last=True)
    with db.transaction(write=False) as tx:
        assert tx.scalar("SELECT v FROM batch_probe WHERE id = 1") == 5


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_last_batch_sends_its_commit_in_the_same_round_trip(db: Database, round_trips) -> None:
    round_trips()
    with db.transaction() as tx:
        tx.batch([("INSERT INTO batch_probe (id, v) VALUES (?, ?)", (1, 1))], last=True)
    assert round_trips() == 1
    with db.transaction(durable=False) as tx:
        assert tx.scalar("SELECT v FROM batch_probe WHERE id = 1") == 1
        tx.batch([("UPDATE batch_probe SET v = 2 WHERE id = ?", (1,))], last=True)
    assert round_trips() == 2
    assert db.connection().info.transaction_status == 0
