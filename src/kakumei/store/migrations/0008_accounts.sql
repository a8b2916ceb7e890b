-- Accounts: several API keys per user (each revocable), passwords, sign-up by invite code,
-- guest users, and the per-network counts that limit sign-ups, guests and failed sign-ins.

-- A user's keys, SHA-256 only. A key with revoked_at set no longer authenticates.
CREATE TABLE api_keys (
    id {id_pk},
    user_id BIGINT NOT NULL REFERENCES users (id),
    key_hash TEXT NOT NULL UNIQUE,
    label TEXT NOT NULL DEFAULT '',
    created_at DOUBLE PRECISION NOT NULL,
    last_used_at DOUBLE PRECISION,
    revoked_at DOUBLE PRECISION
);
CREATE INDEX api_keys_by_user ON api_keys (user_id, id) WHERE revoked_at IS NULL;

-- The one key each user had moves here and keeps working. users.key_hash stays as an empty
-- column: SQLite cannot drop a UNIQUE column without rebuilding the table the others refer to.
INSERT INTO api_keys (user_id, key_hash, label, created_at)
    SELECT id, key_hash, 'first key', created_at FROM users WHERE key_hash IS NOT NULL;
UPDATE users SET key_hash = NULL WHERE key_hash IS NOT NULL;

-- NULL: no password (operator users, guests): such a user signs in with keys only.
ALTER TABLE users ADD COLUMN password_hash TEXT;
-- 'operator': made by `kakumei users add`; 'account': signed up; 'guest'; 'anonymous'.
ALTER TABLE users ADD COLUMN kind TEXT NOT NULL DEFAULT 'operator';
UPDATE users SET kind = 'anonymous' WHERE is_anonymous = 1;
-- The network (CIDR) a guest or an account was made from, for the operator to see.
ALTER TABLE users ADD COLUMN signup_network TEXT;
-- Names are told apart without case for sign-up and sign-in. Not unique: users made before
-- may differ only in case; sign-up checks under a lock instead (store/accounts.py).
CREATE INDEX users_by_folded_name ON users (LOWER(name));

-- Invite codes for `signup = "invite"`, SHA-256 only; a sign-up spends one use.
CREATE TABLE invites (
    id {id_pk},
    code_hash TEXT NOT NULL UNIQUE,
    uses_left INTEGER NOT NULL,
    expires_at DOUBLE PRECISION,
    created_by TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);

-- One row per sign-up, guest session and failed sign-in, by network: the hourly limits are
-- counted here so that every server sharing the database counts the same. Rows older than
-- the hour are deleted as new ones come.
CREATE TABLE account_events (
    id {id_pk},
    kind TEXT NOT NULL,
    network TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX account_events_by_network ON account_events (kind, network, created_at)
