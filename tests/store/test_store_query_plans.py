"""The fair choice reads a handful of rows: checked on the query plans of both databases."""

from __future__ import annotations

from kakumei.fairness.cost import request_cost
from kakumei.schemas import GenerationRequest
from kakumei.store import jobs as q
from kakumei.store.jobs import Capabilities, NewJob, _with_caps

REQUEST = GenerationRequest(width=64, height=64, steps=2)


def seed(stores, users: int = 300, per_user: int = 20) -> None:
    ids = [stores.users.add(f"u{i}")[0].id for i in range(users)]
    cost = request_cost(REQUEST, "m")
    stores.jobs.submit_many([NewJob(ids[i % users], REQUEST, "m", cost) for i in range(users * per_user)])
    # History: finished jobs must not be read by the claim either.
    for _ in range(200):
        lease = stores.jobs.claim("w")
        stores.jobs.complete(lease.job.id, lease.lease_id, [])
    with stores.db.transaction() as tx:
        tx.execute("ANALYZE")


def plan(stores, sql: str, params: list) -> str:
    return stores.db.explain(sql, params)


def test_choosing_the_next_user_walks_the_backlog_index(stores) -> None:
    seed(stores)
    sql, params = _with_caps(q.SELECT_NEXT_USER, Capabilities(models=("m",), max_pixels=512 * 512))
    text = plan(stores, sql, params)
    if stores.db.dialect == "sqlite":
        assert "USING INDEX users_backlogged" in text, text
        assert "TEMP B-TREE" not in text, text  # no sort: the index gives counter order
        assert "SEARCH j USING INDEX jobs_queued_by_user" in text, text
    else:
        assert "Index Scan using users_backlogged" in text, text
        assert "Sort" not in text, text
        assert "jobs_queued_by_user" in text, text
        assert "Seq Scan on jobs" not in text, text
    assert "SCAN j" not in text and "Seq Scan on jobs" not in text


def test_choosing_the_users_job_uses_the_queued_index(stores) -> None:
    seed(stores)
    sql, params = _with_caps(q.SELECT_USER_NEXT_JOB, Capabilities())
    text = plan(stores, sql, [1, *params])
    assert "jobs_queued_by_user" in text, text
    assert "TEMP B-TREE" not in text and "Sort" not in text, text


def test_expiring_leases_reads_only_leased_jobs(stores) -> None:
    seed(stores)
    text = plan(stores, q.EXPIRED_LEASES, [0.0])
    assert "SCAN jobs" not in text.replace("SCAN jobs USING INDEX", "") and "Seq Scan on jobs" not in text, text
