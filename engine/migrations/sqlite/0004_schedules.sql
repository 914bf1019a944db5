-- Schedules: every fire time a schedule has handled. The primary key (schedule, fire_time)
-- is what makes a fire happen once: the row is inserted in the transaction that creates
-- the run, never checked first and inserted later, so several processes (or a restart)
-- that reach the same fire time create one run. `outcome` is `fired` (a new run),
-- `joined` (an active run with the same concurrency key took it), `missed` (the fire time
-- passed while nobody could make it, or later than the schedule's `catch_up`; `missed`
-- counts the fire times this row stands for) or `registered` (the instant a schedule was
-- first seen, so that fires missed before its first fire are noticed). The newest row of
-- a schedule is where it resumes; `cordon serve` purges rows older than 30 days except
-- each schedule's newest.
CREATE TABLE schedule_fires (
    schedule  TEXT    NOT NULL,
    fire_time TEXT    NOT NULL,
    outcome   TEXT    NOT NULL,
    run_id    TEXT    REFERENCES runs (id),
    missed    INTEGER NOT NULL DEFAULT 0,
    at        TEXT    NOT NULL,
    PRIMARY KEY (schedule, fire_time)
);

CREATE INDEX schedule_fires_by_at ON schedule_fires (at);

-- Notices that a step waits for an approval or a task (`notify_waiting`): an outbox row
-- inserted in the same commit that makes the step wait, then claimed, sent and settled by
-- `cordon serve`. `status`: `pending` (due at `next_at`), `sending` (claimed by `owner` at
-- `claimed_at`; a claim older than the service's bound is taken over), `sent`, `failed`
-- (gave up after its attempts) or `skipped` (the step no longer waited).
CREATE TABLE waiting_notices (
    id          TEXT    PRIMARY KEY,
    run_id      TEXT    NOT NULL REFERENCES runs (id),
    step_id     TEXT    NOT NULL,
    status      TEXT    NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    next_at     TEXT    NOT NULL,
    owner       TEXT,
    claimed_at  TEXT,
    error       TEXT,
    created_at  TEXT    NOT NULL,
    finished_at TEXT
);

CREATE INDEX waiting_notices_open ON waiting_notices (status, next_at)
    WHERE status IN ('pending', 'sending');
CREATE INDEX waiting_notices_by_run ON waiting_notices (run_id, step_id);
