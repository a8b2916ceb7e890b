-- Users, API keys (hashed), jobs with leases, job events (for SSE), images.
-- Times are UNIX seconds as floating point, so both databases compare them the same way.

CREATE TABLE users (
    id {id_pk},
    name TEXT NOT NULL UNIQUE,
    key_hash TEXT UNIQUE,
    is_anonymous INTEGER NOT NULL DEFAULT 0,
    weight DOUBLE PRECISION NOT NULL DEFAULT 1.0,
    virtual_counter DOUBLE PRECISION NOT NULL DEFAULT 0,
    queued_jobs INTEGER NOT NULL DEFAULT 0,
    queued_cost DOUBLE PRECISION NOT NULL DEFAULT 0,
    created_at DOUBLE PRECISION NOT NULL
);

-- The fair choice walks backlogged users in counter order and stops at the first one with
-- a job the worker can run; users with nothing queued are not in this index at all.
CREATE INDEX users_backlogged ON users (virtual_counter, id) WHERE queued_jobs > 0;
-- No plain index on virtual_counter: the planner would prefer it to users_backlogged and
-- walk idle users too. The highest counter (read only when nobody is queued) scans users.

-- Anonymous visitors share one user, and so one share of the machine.
INSERT INTO users (name, is_anonymous, weight, created_at) VALUES ('anonymous', 1, 1.0, 0);

CREATE TABLE jobs (
    seq {id_pk},
    id TEXT NOT NULL UNIQUE,
    user_id BIGINT NOT NULL REFERENCES users (id),
    client_addr TEXT,
    state TEXT NOT NULL,
    request TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    idempotency_key TEXT,
    model TEXT NOT NULL,
    pixels INTEGER NOT NULL,
    steps INTEGER NOT NULL,
    image_count INTEGER NOT NULL,
    cost DOUBLE PRECISION NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    worker_id TEXT,
    lease_id TEXT,
    lease_expires_at DOUBLE PRECISION,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    charged DOUBLE PRECISION NOT NULL DEFAULT 0,
    progress_step INTEGER,
    progress_total INTEGER,
    seed BIGINT,
    error TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    claimed_at DOUBLE PRECISION,
    started_at DOUBLE PRECISION,
    finished_at DOUBLE PRECISION,
    run_seconds DOUBLE PRECISION
);

-- A user's next job: own priority, then age.
-- Covering (pixels, model) so that the capability probe reads the index only.
CREATE INDEX jobs_queued_by_user ON jobs (user_id, priority DESC, seq, pixels, model) WHERE state = 'queued';
CREATE INDEX jobs_leased ON jobs (lease_expires_at) WHERE state IN ('leased', 'running');
CREATE INDEX jobs_by_worker ON jobs (worker_id) WHERE state IN ('leased', 'running');
CREATE UNIQUE INDEX jobs_idempotency ON jobs (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_by_user ON jobs (user_id, seq);
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE state = 'succeeded';

CREATE TABLE job_events (
    id {id_pk},
    job_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX job_events_by_job ON job_events (job_id, id);

CREATE TABLE images (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL REFERENCES jobs (id),
    user_id BIGINT NOT NULL REFERENCES users (id),
    idx INTEGER NOT NULL,
    seed BIGINT NOT NULL,
    path TEXT NOT NULL,
    infotext TEXT NOT NULL,
    metadata TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    -- One row per image of a job: a second completion cannot add a second set.
    UNIQUE (job_id, idx)
);
