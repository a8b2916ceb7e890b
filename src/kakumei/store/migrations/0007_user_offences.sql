-- Offences of registered users: their timeouts fall on their account, not on the address
-- they share with others (ip_offences keeps the keyless callers' offences by address).
CREATE TABLE user_offences (
    user_id BIGINT PRIMARY KEY REFERENCES users (id),
    offences INTEGER NOT NULL,
    first_at DOUBLE PRECISION NOT NULL,
    last_at DOUBLE PRECISION NOT NULL,
    blocked_until DOUBLE PRECISION NOT NULL DEFAULT 0,
    last_reason TEXT NOT NULL
);
