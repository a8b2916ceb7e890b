-- Each caller's own A1111 options (POST /sdapi/v1/options), kept in the database so that
-- they survive a restart and every server sharing the database sees them. Anonymous
-- visitors share one user and are told apart by address (scope); a registered user's
-- scope is ''. `options` is a JSON object of the few option names kakumei keeps.
CREATE TABLE caller_options (
    user_id BIGINT NOT NULL REFERENCES users (id),
    scope TEXT NOT NULL,
    options TEXT NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (user_id, scope)
);
-- The oldest anonymous rows go first when there are too many (store/options.py).
CREATE INDEX caller_options_by_age ON caller_options (user_id, updated_at);

-- An Idempotency-Key is its caller's own. Anonymous visitors share one user, so their keys
-- are told apart by address too; a registered user's scope is '', so a retry from another
-- address still finds the job.
ALTER TABLE jobs ADD COLUMN idempotency_scope TEXT NOT NULL DEFAULT '';
UPDATE jobs SET idempotency_scope = COALESCE(client_addr, '')
WHERE idempotency_key IS NOT NULL AND user_id IN (SELECT id FROM users WHERE is_anonymous = 1);
DROP INDEX jobs_idempotency;
CREATE UNIQUE INDEX jobs_idempotency ON jobs (user_id, idempotency_scope, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
