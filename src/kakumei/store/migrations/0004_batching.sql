-- Cross-user batching: jobs with equal batch_key (GenerationRequest.batch_key) can share
-- one batch on a worker. NULL: the job runs alone. Read only for a user's head job, through
-- jobs_queued_by_user, so no index of its own.
ALTER TABLE jobs ADD COLUMN batch_key TEXT;
