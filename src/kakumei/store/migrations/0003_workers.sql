-- Remote (volunteer) workers: their keys, their record, and the checks of their results.
-- Works with or without 0002 (ledger): nothing here refers to its tables.

-- One row per worker key. `name` is what jobs.worker_id holds for its leases ("worker:<id>"
-- is derived from id; name is for people). status: new | trusted | suspect | quarantined.
CREATE TABLE workers (
    id {id_pk},
    name TEXT NOT NULL UNIQUE,
    user_id BIGINT NOT NULL REFERENCES users (id),
    key_hash TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL DEFAULT 'new',
    jobs_done INTEGER NOT NULL DEFAULT 0,
    jobs_failed INTEGER NOT NULL DEFAULT 0,
    units_done DOUBLE PRECISION NOT NULL DEFAULT 0,
    run_seconds DOUBLE PRECISION NOT NULL DEFAULT 0,
    verified_ok INTEGER NOT NULL DEFAULT 0,
    mismatches INTEGER NOT NULL DEFAULT 0,
    -- Passes since the last mismatch: what trust (and recovery from suspect) is built from.
    streak INTEGER NOT NULL DEFAULT 0,
    capabilities TEXT,
    last_seen_at DOUBLE PRECISION,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX workers_by_user ON workers (user_id);
CREATE INDEX workers_seen ON workers (last_seen_at);

-- A sampled job of an untrusted worker, waiting to be re-run by a trusted one.
-- state: pending | running | passed | failed. `units` is the credit withheld until then.
CREATE TABLE verifications (
    id {id_pk},
    job_id TEXT NOT NULL UNIQUE REFERENCES jobs (id),
    worker_id BIGINT NOT NULL REFERENCES workers (id),
    state TEXT NOT NULL DEFAULT 'pending',
    units DOUBLE PRECISION NOT NULL,
    verifier TEXT,
    distance DOUBLE PRECISION,
    created_at DOUBLE PRECISION NOT NULL,
    claimed_at DOUBLE PRECISION,
    finished_at DOUBLE PRECISION
);
CREATE INDEX verifications_pending ON verifications (id) WHERE state = 'pending';
CREATE INDEX verifications_by_worker ON verifications (worker_id, id)
