"""The queue bookkeeping on users rows (queued_jobs, queued_cost, virtual_counter) on both
databases: after every path that moves a job into or out of the queue, it matches the jobs."""

from __future__ import annotations

import pytest

from kakumei.fairness.cost import request_cost
from kakumei.schemas import GenerationRequest
from kakumei.store.jobs import NewJob

SMALL = GenerationRequest(prompt="a fox", width=64, height=64, steps=2)
LARGE = GenerationRequest(prompt="a fox", width=128, height=128, steps=3)


def assert_in_step(stores) -> None:
    with stores.db.transaction(write=False) as tx:
        rows = tx.all(
            "SELECT u.id, u.queued_jobs, u.queued_cost, COUNT(j.seq) AS n, COALESCE(SUM(j.cost), 0) AS cost "
            "FROM users u LEFT JOIN jobs j ON j.user_id = u.id AND j.state = 'queued' "
            "GROUP BY u.id, u.queued_jobs, u.queued_cost"
        )
        groups = tx.all(
            "SELECT g.id, g.queued_jobs, g.queued_cost, COUNT(j.seq) AS n, COALESCE(SUM(j.cost), 0) AS cost "
            "FROM fair_groups g LEFT JOIN jobs j ON j.group_id = g.id AND j.state = 'queued' "
            "GROUP BY g.id, g.queued_jobs, g.queued_cost"
        )
        # every queued job is in its owner's group
        strays = tx.scalar("SELECT COUNT(*) AS n FROM jobs j JOIN users u ON u.id = j.user_id "
                           "WHERE j.state = 'queued' AND (j.group_id IS NULL OR j.group_id <> u.group_id)")
    assert strays == 0
    for row in rows + groups:
        assert int(row["queued_jobs"]) == int(row["n"]), row
        assert float(row["queued_cost"]) == pytest.approx(float(row["cost"]), abs=1e-9), row


def test_bookkeeping_follows_every_path_in_and_out_of_the_queue(stores) -> None:
    alice, bob = stores.users.add("alice")[0], stores.users.add("bob")[0]
    for user, request in ((alice, SMALL), (alice, LARGE), (bob, SMALL), (bob, LARGE), (alice, SMALL)):
        stores.jobs.submit(NewJob(user.id, request, "m", request_cost(request, "m")))
    assert_in_step(stores)
    start = stores.users.get(alice.id).virtual_counter

    first = stores.jobs.claim("w")  # charge: out of the queue, counter up
    assert_in_step(stores)
    charged = stores.users.get(first.job.user_id).virtual_counter
    assert charged > start

    assert stores.jobs.release(first.job.id, first.lease_id)  # refund: back in, charge given back
    assert_in_step(stores)
    assert stores.users.get(first.job.user_id).virtual_counter == pytest.approx(start)

    queued = next(j for j in stores.jobs.for_user(bob.id) if j.state == "queued")
    stores.jobs.cancel(queued.id)  # dequeue: out, nothing charged
    assert_in_step(stores)

    lease = stores.jobs.claim("w")
    stores.clock.advance(31)
    stores.jobs.expire_leases()  # lost lease: refund
    assert_in_step(stores)

    lease = stores.jobs.claim("w2")
    assert stores.jobs.recover_worker("w2") == 1  # restarted worker: refund
    assert_in_step(stores)

    while (lease := stores.jobs.claim("w")) is not None:  # every job served and finished
        assert stores.jobs.complete(lease.job.id, lease.lease_id, [])
        assert_in_step(stores)
    assert all(u.queued_jobs == 0 for u in stores.users.list())
    with stores.db.transaction(write=False) as tx:  # the last job out leaves no float residue
        assert tx.scalar("SELECT MAX(ABS(queued_cost)) AS c FROM users") == 0


def test_a_user_coming_back_starts_where_the_others_are(stores) -> None:
    alice, bob = stores.users.add("alice")[0], stores.users.add("bob")[0]
    cost = request_cost(SMALL, "m")
    for _ in range(3):
        stores.jobs.submit(NewJob(alice.id, SMALL, "m", cost))
    for _ in range(2):
        lease = stores.jobs.claim("w")
        stores.jobs.complete(lease.job.id, lease.lease_id, [])
    stores.jobs.submit(NewJob(bob.id, SMALL, "m", cost))  # bob was idle: no banked time
    # people in groups of their own: their groups' counters are the ones compared
    assert stores.users.group(user_id=bob.id).virtual_counter == stores.users.group(user_id=alice.id).virtual_counter


def test_queue_counts_read_in_a_batch_match_the_reads_one_by_one(stores) -> None:
    from kakumei.store.quotas import count_queue, group_of_next_job, queue_counts

    alice, bob, carol = (stores.users.add(name)[0] for name in ("alice", "bob", "carol"))

    def one_by_one(user_id: int, key: str):
        with stores.db.transaction(write=False) as tx:
            return count_queue(tx, user_id, group_of_next_job(tx, user_id, key))

    def same(user_id: int, key: str) -> None:
        assert queue_counts(stores.db, user_id, key) == one_by_one(user_id, key)

    same(alice.id, "net:198.51.100.0/24")  # nothing queued anywhere, no such group
    stores.jobs.submit(NewJob(alice.id, SMALL, "m", 1.0, group="net:198.51.100.0/24"))
    stores.jobs.submit(NewJob(bob.id, SMALL, "m", 1.0, group="net:198.51.100.0/24"))
    stores.jobs.submit(NewJob(bob.id, LARGE, "m", 2.0, group="net:198.51.100.0/24"))
    for user in (alice, bob, carol):
        same(user.id, "net:198.51.100.0/24")  # their group, or the keyed one for carol
        same(user.id, f"user:{user.id}")
    # A person counted with jobs but in no group (rows of older releases): own jobs still count.
    with stores.db.transaction() as tx:
        tx.run("UPDATE users SET group_id = NULL WHERE id = ?", (bob.id,))
    assert queue_counts(stores.db, bob.id, f"user:{bob.id}").own == 2
    same(bob.id, f"user:{bob.id}")
