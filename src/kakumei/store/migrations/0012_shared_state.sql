-- Generated images' bytes kept in the database (setting image_store), so that every server
-- sharing it can serve any image. An image row whose path is "db:<key>" names the chunks of
-- key here, in seq order; other paths are files in a data folder. Chunks keep a read or a
-- write to one chunk at a time in memory. Files already on disk move in by a step after this
-- file on PostgreSQL (store/images.py, move_files_in).
CREATE TABLE image_blobs (
    blob_key TEXT NOT NULL,
    seq INTEGER NOT NULL,
    data {blob} NOT NULL,
    PRIMARY KEY (blob_key, seq)
);

-- Rate-limit buckets shared by every server (store/buckets.py SharedBuckets): one row per
-- bucket, its tokens as of `at`; `granted` is what the last take decided, for RETURNING.
CREATE TABLE rate_buckets (
    scope TEXT NOT NULL,
    bucket_key TEXT NOT NULL,
    tokens DOUBLE PRECISION NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    granted BOOLEAN NOT NULL,
    PRIMARY KEY (scope, bucket_key)
);
-- Until when a caller's last refusal said to wait, and whether coming back early was counted.
CREATE TABLE rate_told (
    scope TEXT NOT NULL,
    caller TEXT NOT NULL,
    wait_until DOUBLE PRECISION NOT NULL,
    counted BOOLEAN NOT NULL,
    PRIMARY KEY (scope, caller)
);
-- Open event streams per user across servers (SharedSlots): a place expires unless renewed.
CREATE TABLE stream_places (
    id TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX stream_places_by_holder ON stream_places (holder);
