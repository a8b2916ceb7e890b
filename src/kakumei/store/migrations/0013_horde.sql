-- AI Horde v2 API (server/horde/): keys of the Horde's shape, and the generations handed to
-- Horde workers.

-- 'horde': a key of 22 characters, the only length horde_sdk (and so most Horde clients and
-- workers) sends; 'api': every other key. Both authenticate the same user everywhere.
ALTER TABLE api_keys ADD COLUMN kind TEXT NOT NULL DEFAULT 'api';

-- One row per image of a job leased to a Horde worker: the Horde names each image with its
-- own id, which the worker's upload and its submit come back with. The job completes,
-- through the same path as any worker's, when every image of its lease is submitted.
CREATE TABLE horde_generations (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    lease_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    worker_id BIGINT NOT NULL,
    -- the secret part of the upload URL the pop handed out
    upload_token TEXT NOT NULL,
    -- the image the worker PUT there (WebP or PNG), until the job completes
    upload {blob},
    seed BIGINT,
    submitted_state TEXT,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX horde_generations_by_lease ON horde_generations (job_id, lease_id, idx);

-- Requests made through the Horde API. As on the Horde, a request's id is all a client needs
-- to check, read or cancel it, so it is its own random id, never the job's: workers and
-- verifiers see job ids. `inline`: 1 where the request asked for base64 images (`r2: false`).
CREATE TABLE horde_requests (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL UNIQUE,
    inline INTEGER NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
