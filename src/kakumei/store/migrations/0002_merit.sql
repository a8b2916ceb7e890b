-- Merit and abuse handling: the credit ledger, admin flags, bans, offences, audit, terms.

-- Append-only: every change of credit is a row; nothing here is updated or deleted.
-- amount > 0 credits the user (work delivered, grants), amount < 0 debits (generation).
CREATE TABLE ledger (
    id {id_pk},
    user_id BIGINT NOT NULL REFERENCES users (id),
    amount DOUBLE PRECISION NOT NULL,
    reason TEXT NOT NULL,
    job_id TEXT,
    worker_id TEXT,
    note TEXT,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX ledger_by_user ON ledger (user_id, id);
-- A job is paid for (and its work paid) at most once per reason, whoever retries.
CREATE UNIQUE INDEX ledger_once_per_job ON ledger (job_id, reason) WHERE job_id IS NOT NULL;

-- Running totals of the ledger, written in the same transaction as each ledger row, so that
-- admission and weights read one row instead of summing a user's history.
ALTER TABLE users ADD COLUMN balance DOUBLE PRECISION NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN earned DOUBLE PRECISION NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN spent DOUBLE PRECISION NOT NULL DEFAULT 0;
-- NULL: the weight follows merit; a number: an admin set it.
ALTER TABLE users ADD COLUMN weight_override DOUBLE PRECISION;
ALTER TABLE users ADD COLUMN is_admin INTEGER NOT NULL DEFAULT 0;

-- Admission counts what one address has queued (free-tier caps per address).
CREATE INDEX jobs_queued_by_addr ON jobs (client_addr, user_id) WHERE state = 'queued';

-- kind 'user' (target = user id) or 'ip' (target = an address or CIDR range).
CREATE TABLE bans (
    id {id_pk},
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    reason TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION,
    lifted_at DOUBLE PRECISION
);
CREATE INDEX bans_active ON bans (kind, target) WHERE lifted_at IS NULL;

-- Addresses that broke rules: offences within the window escalate the next timeout.
CREATE TABLE ip_offences (
    addr TEXT PRIMARY KEY,
    offences INTEGER NOT NULL,
    first_at DOUBLE PRECISION NOT NULL,
    last_at DOUBLE PRECISION NOT NULL,
    blocked_until DOUBLE PRECISION NOT NULL DEFAULT 0,
    last_reason TEXT NOT NULL
);

CREATE TABLE audit_log (
    id {id_pk},
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);

-- Anonymous visitors accept per address (client_addr); registered users once ('' address).
CREATE TABLE terms_acceptance (
    user_id BIGINT NOT NULL REFERENCES users (id),
    client_addr TEXT NOT NULL,
    version TEXT NOT NULL,
    accepted_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (user_id, client_addr, version)
)
