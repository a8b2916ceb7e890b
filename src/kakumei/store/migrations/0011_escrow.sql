-- Merit that cannot be faked: credit reserved at admission, worker earnings in escrow.

-- What a job holds from its owner's balance since it was accepted (NULL: a job accepted
-- before reservations, paid at completion as then). Settled when the job ends: what was not
-- generated goes back.
ALTER TABLE jobs ADD COLUMN reserved DOUBLE PRECISION;

-- A worker's credit for one job, waiting until enough of the worker's results are verified.
-- state: pending | paid | void (a failed check voids every pending row of the worker).
CREATE TABLE worker_escrow (
    id {id_pk},
    job_id TEXT NOT NULL UNIQUE REFERENCES jobs (id),
    worker_id BIGINT NOT NULL REFERENCES workers (id),
    user_id BIGINT NOT NULL REFERENCES users (id),
    units DOUBLE PRECISION NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    created_at DOUBLE PRECISION NOT NULL,
    settled_at DOUBLE PRECISION
);
CREATE INDEX worker_escrow_pending ON worker_escrow (worker_id, id) WHERE state = 'pending';

-- Credit settled to the worker's owner so far (what `workers list` shows beside pending).
ALTER TABLE workers ADD COLUMN units_paid DOUBLE PRECISION NOT NULL DEFAULT 0;
-- Results refused by the cheap checks (blank, wrong size) before any re-run.
ALTER TABLE workers ADD COLUMN results_refused INTEGER NOT NULL DEFAULT 0;
-- Worker keys created per network per day are counted from this (the creator's address).
ALTER TABLE workers ADD COLUMN created_from TEXT;
CREATE INDEX workers_created ON workers (created_at);
