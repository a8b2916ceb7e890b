-- Fair share among people: the hierarchy group -> person -> job. A group is a network's
-- people without merit (key 'net:<CIDR>') or one person with merit ('user:<id>'); see
-- fairness/groups.py. Counters at each level, kept by UserStore (store/users.py).

CREATE TABLE fair_groups (
    id {id_pk},
    key TEXT NOT NULL UNIQUE,
    weight DOUBLE PRECISION NOT NULL DEFAULT 1.0,
    virtual_counter DOUBLE PRECISION NOT NULL DEFAULT 0,
    queued_jobs INTEGER NOT NULL DEFAULT 0,
    queued_cost DOUBLE PRECISION NOT NULL DEFAULT 0,
    -- The highest counter a member reached: where someone joining the idle group starts.
    member_max DOUBLE PRECISION NOT NULL DEFAULT 0,
    created_at DOUBLE PRECISION NOT NULL
);
-- The claim walks backlogged groups in counter order, like users_backlogged for people. Ties
-- (common: charges come in whole job-times) go to the group with less waiting, so that someone
-- coming back after idling, lifted to the lowest counter, goes before the floods tied there.
CREATE INDEX fair_groups_backlogged ON fair_groups (virtual_counter, queued_jobs, id) WHERE queued_jobs > 0;

-- A person is in one group while they have jobs queued (and joins one when they queue again).
ALTER TABLE users ADD COLUMN group_id BIGINT REFERENCES fair_groups (id);
CREATE INDEX users_backlogged_in_group ON users (group_id, virtual_counter, queued_jobs, id) WHERE queued_jobs > 0;

-- Keyless callers: one person per address, created at their first submit.
ALTER TABLE users ADD COLUMN keyless_addr TEXT;
CREATE UNIQUE INDEX users_keyless ON users (keyless_addr) WHERE keyless_addr IS NOT NULL;

-- The group a job was queued (and charged) in; group_charged is what its claim added to that
-- group's counter, given back if the job returns to the queue.
ALTER TABLE jobs ADD COLUMN group_id BIGINT;
ALTER TABLE jobs ADD COLUMN group_charged DOUBLE PRECISION NOT NULL DEFAULT 0;
-- "Has this group a job this worker can run": covering the capability columns.
CREATE INDEX jobs_queued_by_group ON jobs (group_id, pixels, model) WHERE state = 'queued';

-- Work in flight moves into groups of one: each person with queued or leased jobs keeps their
-- counter as their group's; they join a network group when their queue has drained.
INSERT INTO fair_groups (key, weight, virtual_counter, queued_jobs, queued_cost, member_max, created_at)
SELECT 'user:' || CAST(u.id AS TEXT), u.weight, u.virtual_counter, u.queued_jobs, u.queued_cost,
    u.virtual_counter, u.created_at
FROM users u
WHERE u.queued_jobs > 0 OR EXISTS (
    SELECT 1 FROM jobs j WHERE j.user_id = u.id AND j.state IN ('queued', 'leased', 'running'));
UPDATE users SET group_id = (
    SELECT g.id FROM fair_groups g WHERE g.key = 'user:' || CAST(users.id AS TEXT));
UPDATE jobs SET group_id = (SELECT u.group_id FROM users u WHERE u.id = jobs.user_id)
WHERE state IN ('queued', 'leased', 'running');
