"""Connections of the per-thread scheme: one per live thread, closed when its thread ends,
and a claim that waits for a busy group instead of answering "nothing to run"."""

from __future__ import annotations

import gc
import sqlite3
import threading
import time

import psycopg
import pytest

from kakumei.fairness.cost import request_cost
from kakumei.schemas import GenerationRequest
from kakumei.store.jobs import NewJob

REQUEST = GenerationRequest(prompt="a fox", width=64, height=64, steps=2)


def is_closed(conn: object) -> bool:
    if isinstance(conn, sqlite3.Connection):
        try:
            conn.execute("SELECT 1")
        except sqlite3.ProgrammingError:
            return True
        return False
    return bool(conn.closed)  # type: ignore[attr-defined]


def test_a_finished_thread_closes_its_connection(stores) -> None:
    # A server's thread pool ends idle threads and starts new ones: a connection left open
    # by each ended thread would pile up until PostgreSQL refuses more clients.
    opened: list[object] = []

    def use() -> None:
        stores.db.ping()
        opened.append(stores.db.connection())

    for _ in range(5):
        t = threading.Thread(target=use)
        t.start()
        t.join()
    gc.collect()
    assert len(opened) == 5 and all(is_closed(conn) for conn in opened)
    stores.db.ping()  # this thread's own connection is still there
    assert not is_closed(stores.db.connection())


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_claim_waits_for_a_group_another_transaction_holds(stores, database_url: str) -> None:
    # A submit holds its group's row until it commits; a claimer that skipped the row would
    # tell a worker there is nothing to run while the group has queued jobs.
    alice, _ = stores.users.add("alice")
    job = stores.jobs.submit(NewJob(alice.id, REQUEST, "m", request_cost(REQUEST, "m")))[0]
    leases: list[object] = []
    with psycopg.connect(database_url) as other:
        other.execute("SELECT id FROM fair_groups WHERE queued_jobs > 0 FOR UPDATE")
        claimer = threading.Thread(target=lambda: leases.append(stores.jobs.claim("w")))
        claimer.start()
        with psycopg.connect(database_url, autocommit=True) as watch:
            while claimer.is_alive() and not watch.execute(
                "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
            ).fetchone():
                time.sleep(0.01)
        other.commit()
    claimer.join()
    assert leases and leases[0] is not None and leases[0].job.id == job.id
