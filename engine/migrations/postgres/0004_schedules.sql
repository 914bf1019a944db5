-- Cordon store, version 4 (PostgreSQL). Mirrors migrations/sqlite/0004_schedules.sql.
--
-- Schedules: every fire time a schedule has handled. The primary key (schedule, fire_time)
-- is what makes a fire happen once: the row is inserted (`INSERT … ON CONFLICT DO NOTHING`)
-- in the transaction that creates the run, never checked first and inserted later, so
-- several nodes (or a restart) that reach the same fire time create one run. `outcome` is
-- `fired` (a new run), `joined` (an active run with the same concurrency key took it),
-- `missed` (the fire time passed while nobody could make it, or later than the schedule's
-- `catch_up`; `missed` counts the fire times this row stands for) or `registered` (the
-- instant a schedule was first seen, so that fires missed before its first fire are
-- noticed). The newest row of a schedule is where it resumes; `cordon serve` purges rows
-- older than 30 days except each schedule's newest.
CREATE TABLE schedule_fires (
    schedule  TEXT COLLATE "C" NOT NULL,
    fire_time TEXT COLLATE "C" NOT NULL,
    outcome   TEXT COLLATE "C" NOT NULL,
    run_id    TEXT COLLATE "C" REFERENCES runs (id),
    missed    BIGINT NOT NULL DEFAULT 0,
    at        TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (schedule, fire_time)
);

CREATE INDEX schedule_fires_by_at ON schedule_fires (at);

-- Notices that a step waits for an approval or a task (`notify_waiting`): an outbox row
-- inserted in the same commit that makes the step wait, then claimed, sent and settled by
-- `cordon serve`. `status`: `pending` (due at `next_at`), `sending` (claimed by `owner` at
-- `claimed_at`; a claim older than the service's bound is taken over), `sent`, `failed`
-- (gave up after its attempts) or `skipped` (the step no longer waited).
CREATE TABLE waiting_notices (
    id          TEXT COLLATE "C" PRIMARY KEY,
    run_id      TEXT COLLATE "C" NOT NULL REFERENCES runs (id),
    step_id     TEXT COLLATE "C" NOT NULL,
    status      TEXT COLLATE "C" NOT NULL,
    attempts    BIGINT NOT NULL DEFAULT 0,
    next_at     TEXT COLLATE "C" NOT NULL,
    owner       TEXT COLLATE "C",
    claimed_at  TEXT COLLATE "C",
    error       TEXT COLLATE "C",
    created_at  TEXT COLLATE "C" NOT NULL,
    finished_at TEXT COLLATE "C"
);

CREATE INDEX waiting_notices_open ON waiting_notices (status, next_at)
    WHERE status IN ('pending', 'sending');
CREATE INDEX waiting_notices_by_run ON waiting_notices (run_id, step_id);
