"""A database from the first release upgrades to the newest schema with its data intact and
usable, on both databases: the users and keys, a finished job with its images and events, and
a queued job that is then claimed and run."""

from __future__ import annotations

import json
from pathlib import Path

from kakumei.fairness.cost import request_cost
from kakumei.schemas import GenerationRequest
from kakumei.store.accounts import AccountStore
from kakumei.store.db import Database, Transaction
from kakumei.store.images import ImageResult, ImageStore
from kakumei.store.jobs import JobState, JobStore, NewJob, request_hash
from kakumei.store.ledger import Ledger
from kakumei.store.migrate import migrate, migration_files
from kakumei.store.users import UserStore, hash_key
from tests.fixtures.db import FakeClock

# Requests as the first release stored them: only the fields it knew, defaults for the rest.
DONE_REQUEST = {"prompt": "a lighthouse at dusk", "width": 64, "height": 64, "steps": 2, "seed": 7, "batch_size": 2}
QUEUED_REQUEST = {"prompt": "a red fox in snow", "width": 64, "height": 64, "steps": 2, "seed": 11}
MODEL = "kakumei:tiny"
ALICE_KEY, BOB_KEY = "kk_alice-first-release-key", "kk_bob-first-release-key"


def _insert_job(tx: Transaction, job_id: str, user_id: int, request: dict, state: str, now: float, **columns: object) -> None:
    parsed = GenerationRequest.model_validate(request)
    values = {
        "id": job_id, "user_id": user_id, "client_addr": "203.0.113.7", "state": state,
        "request": json.dumps(request), "request_hash": request_hash(parsed), "model": MODEL,
        "pixels": parsed.width * parsed.height, "steps": parsed.steps, "image_count": parsed.image_count,
        "cost": request_cost(parsed, MODEL), "max_attempts": 3, "created_at": now, **columns,
    }
    names = ", ".join(values)
    tx.execute(f"INSERT INTO jobs ({names}) VALUES ({', '.join('?' for _ in values)})", tuple(values.values()))


def _event(tx: Transaction, job_id: str, kind: str, data: dict, now: float) -> None:
    tx.execute("INSERT INTO job_events (job_id, kind, data, created_at) VALUES (?, ?, ?, ?)", (job_id, kind, json.dumps(data), now))


def _first_release_data(db: Database, image_dir: Path) -> dict[str, int]:
    """What a server of the first release left behind: two users with keys, one finished job
    with two images, one queued job, and their events."""
    image_dir.mkdir(parents=True)
    with db.transaction() as tx:
        for name, key, at in (("alice", ALICE_KEY, 100.0), ("bob", BOB_KEY, 110.0)):
            tx.execute("INSERT INTO users (name, key_hash, weight, created_at) VALUES (?, ?, 1.0, ?)", (name, hash_key(key), at))
        ids = {r["name"]: int(r["id"]) for r in tx.all("SELECT id, name FROM users")}

        _insert_job(tx, "done-job", ids["alice"], DONE_REQUEST, "succeeded", 200.0, idempotency_key="fox-1",
                    worker_id="local", seed=7, claimed_at=201.0, started_at=201.5, finished_at=204.0,
                    run_seconds=2.5, progress_step=2, progress_total=2)
        for idx in range(2):
            path = image_dir / f"done-{idx}.png"
            path.write_bytes(b"\x89PNG first release " + bytes([idx]))
            tx.execute(
                "INSERT INTO images (id, job_id, user_id, idx, seed, path, infotext, metadata, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (f"done-image-{idx}", "done-job", ids["alice"], idx, 7 + idx, str(path),
                 f"a lighthouse at dusk\nSteps: 2, Seed: {7 + idx}", json.dumps({"seed": 7 + idx}), 204.0),
            )
        _event(tx, "done-job", "queued", {"attempts": 0}, 200.0)
        _event(tx, "done-job", "leased", {"worker": "local"}, 201.0)
        _event(tx, "done-job", "started", {}, 201.5)
        _event(tx, "done-job", "succeeded", {"image_ids": ["done-image-0", "done-image-1"], "seed": 7}, 204.0)
        tx.execute("UPDATE users SET virtual_counter = 4.0 WHERE id = ?", (ids["alice"],))

        _insert_job(tx, "queued-job", ids["bob"], QUEUED_REQUEST, "queued", 300.0)
        _event(tx, "queued-job", "queued", {"attempts": 0}, 300.0)
        cost = request_cost(GenerationRequest.model_validate(QUEUED_REQUEST), MODEL)
        tx.execute("UPDATE users SET queued_jobs = 1, queued_cost = ?, virtual_counter = 4.0 WHERE id = ?", (cost, ids["bob"]))
    return ids


def test_a_first_release_database_upgrades_with_its_data_intact(database_url: str, tmp_path: Path) -> None:
    db = Database(database_url)
    try:
        first = migration_files()[0][0]
        assert migrate(db, target=first) == [first]
        ids = _first_release_data(db, tmp_path / "images")

        assert migrate(db) == [version for version, _, _ in migration_files()][1:]
        clock = FakeClock(1_000.0)
        images = ImageStore(db, tmp_path / "images")
        jobs = JobStore(db, images, clock=clock)
        users = UserStore(db)

        # Users, keys and their standing survive; merit starts from nothing.
        alice, bob = users.by_key(ALICE_KEY), users.by_key(BOB_KEY)
        assert alice is not None and alice.id == ids["alice"] and alice.name == "alice"
        assert bob is not None and bob.id == ids["bob"] and bob.queued_jobs == 1
        assert not alice.is_admin and alice.weight_override is None and alice.virtual_counter == 4.0
        assert Ledger(db).balance(alice.id) == 0 == alice.balance
        assert users.anonymous().is_anonymous
        # Their keys moved into api_keys, one each; the old column holds none.
        accounts = AccountStore(db)
        assert [k.label for k in accounts.keys(alice.id)] == ["first key"] == [k.label for k in accounts.keys(bob.id)]
        assert accounts.kind_of(alice.id) == "operator" and accounts.kind_of(users.anonymous().id) == "anonymous"
        with db.transaction(write=False) as tx:
            assert tx.scalar("SELECT COUNT(*) AS n FROM users WHERE key_hash IS NOT NULL") == 0

        # The finished job reads as before, with its images and events.
        done = jobs.get("done-job")
        assert done is not None and done.state is JobState.SUCCEEDED and done.user_id == alice.id
        assert done.request == GenerationRequest.model_validate(DONE_REQUEST) and done.seed == 7 and done.attempts == 0
        stored = images.for_job("done-job")
        assert [(i.index, i.seed) for i in stored] == [(0, 7), (1, 8)]
        assert all(i.path.read_bytes().startswith(b"\x89PNG") and i.metadata == {"seed": i.seed} for i in stored)
        assert [e.kind for e in jobs.events("done-job")] == ["queued", "leased", "started", "succeeded"]
        assert [j.id for j in jobs.for_user(alice.id)] == ["done-job"]

        # Replaying the old idempotency key still finds the old job.
        replay, created = jobs.submit(NewJob(alice.id, GenerationRequest.model_validate(DONE_REQUEST), MODEL,
                                             request_cost(GenerationRequest.model_validate(DONE_REQUEST), MODEL),
                                             idempotency_key="fox-1"))
        assert not created and replay.id == "done-job"

        # The queued job is claimed and completed by today's code.
        lease = jobs.claim("w1")
        assert lease is not None and lease.job.id == "queued-job" and lease.job.state is JobState.LEASED
        pending = images.write_files("queued-job", [ImageResult(png=b"\x89PNG new", seed=11, index=0)])
        assert jobs.complete("queued-job", lease.lease_id, pending, seed=11)
        finished = jobs.get("queued-job")
        assert finished is not None and finished.state is JobState.SUCCEEDED
        assert [i.seed for i in images.for_job("queued-job")] == [11]
        assert users.get(bob.id).queued_jobs == 0

        # And new work goes in next to the old.
        new, created = jobs.submit(NewJob(bob.id, GenerationRequest(prompt="new", width=64, height=64, steps=2), MODEL, 1.0))
        assert created and jobs.claim("w1").job.id == new.id
    finally:
        db.close()
