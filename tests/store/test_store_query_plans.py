"""The fair choice reads a handful of rows: checked on the query plans of both databases.

One test per database (seeding is the slow part): a backlog of many users in network groups,
a history of finished jobs, fresh statistics, then the plan of each scheduling query.
"""

from __future__ import annotations

import re

from kakumei.fairness.cost import request_cost
from kakumei.schemas import GenerationRequest
from kakumei.store import jobs as q
from kakumei.store.jobs import Capabilities, NewJob, _with_caps

REQUEST = GenerationRequest(width=64, height=64, steps=2)


def seed(stores, users: int = 300, per_user: int = 10, finished: int = 100, groups: int = 60) -> None:
    ids = [stores.users.add(f"u{i}")[0].id for i in range(users)]
    cost = request_cost(REQUEST, "m")
    # most people in network groups of 5, some standing alone
    stores.jobs.submit_many([
        NewJob(ids[i % users], REQUEST, "m", cost, group=None if i % users % 7 == 0 else f"net:10.0.{i % groups}.0/24")
        for i in range(users * per_user)])
    # History: finished jobs must not be read by the claim either.
    for _ in range(finished):
        lease = stores.jobs.claim("w")
        stores.jobs.complete(lease.job.id, lease.lease_id, [])
    with stores.db.transaction() as tx:
        tx.execute("ANALYZE")


def test_scheduling_queries_use_their_indexes(stores) -> None:
    seed(stores)
    sqlite = stores.db.dialect == "sqlite"
    caps = Capabilities(models=("m",), max_pixels=512 * 512)

    # 1. the next group: walk fair_groups_backlogged in counter order, probe each group's jobs
    sql, params = _with_caps(q.SELECT_NEXT_GROUP, caps)
    text = stores.db.explain(sql, params)
    if sqlite:
        # A SEARCH on the index's queued_jobs column (a skip-scan) walks it in order as well.
        assert re.search(r"(SCAN|SEARCH) g USING INDEX fair_groups_backlogged", text), text
        assert "SEARCH j USING INDEX jobs_queued_by_group" in text, text
        assert "TEMP B-TREE" not in text, text  # no sort: the index gives counter order
    else:
        assert "Index Scan using fair_groups_backlogged" in text, text
        assert "jobs_queued_by_group" in text, text
        assert "Sort" not in text and "Seq Scan" not in text, text

    # 2. its next person: walk users_backlogged_in_group, probe each person's queued jobs
    sql, params = _with_caps(q.SELECT_GROUP_NEXT_USER, caps)
    text = stores.db.explain(sql, [2, *params])
    if sqlite:
        assert "USING INDEX users_backlogged_in_group" in text, text
        assert "SEARCH j USING INDEX jobs_queued_by_user" in text, text
        assert "TEMP B-TREE" not in text, text
    else:
        assert "users_backlogged_in_group" in text and "jobs_queued_by_user" in text, text
        assert "Sort" not in text and "Seq Scan" not in text, text

    # 3. that person's job: the first entry of jobs_queued_by_user
    sql, params = _with_caps(q.SELECT_USER_NEXT_JOB, caps)
    text = stores.db.explain(sql, [1, *params])
    assert "jobs_queued_by_user" in text, text
    assert "TEMP B-TREE" not in text and "Sort" not in text, text

    # 4. where a returning group or person starts: one index probe each
    from kakumei.store import users as u

    for sql, args in ((u.BACKLOGGED_MIN_COUNTER, []), (u.GROUP_MEMBERS_MIN_COUNTER, [2])):
        text = stores.db.explain(sql, args)
        assert "fair_groups_backlogged" in text or "users_backlogged_in_group" in text, text
        assert "Seq Scan" not in text, text

    # 5. lease expiry: only leased jobs, never a scan of the table
    text = stores.db.explain(q.EXPIRED_LEASES, [0.0])
    if sqlite:
        assert "USING INDEX jobs_leased" in text or "USING INDEX jobs_by_worker" in text, text
    else:
        assert "Seq Scan" not in text, text


def test_batching_and_affinity_queries_use_their_indexes(stores) -> None:
    seed(stores, users=200, per_user=5, finished=50)
    caps = Capabilities(models=("m",), max_pixels=512 * 512)
    # the bound is the fairest group's counter plus about one job-time, as claim_batch uses it
    fairest = stores.jobs._fairest(caps)
    bound = fairest[0] + fairest[2]
    sql, params = _with_caps(q.SELECT_NEXT_GROUP_WITHIN, caps)
    plans = [stores.db.explain(sql, [bound, *params]), stores.db.explain(q.BATCH_CANDIDATES, [bound, 16])]
    sql, params = _with_caps(q.HEAD_BATCH_KEY, caps)
    plans.append(stores.db.explain(sql, [1, *params]))
    for text in plans:
        assert "fair_groups_backlogged" in text or "jobs_queued_by_user" in text, text
        assert "TEMP B-TREE" not in text and "Sort" not in text and "Seq Scan" not in text, text
