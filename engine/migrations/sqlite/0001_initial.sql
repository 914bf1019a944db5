-- Cordon store, version 1 (SQLite).
--
-- Kept close to portable SQL so that migrations/postgres/0001_initial.sql can mirror it with
-- the same version number: timestamps are RFC 3339 UTC text with millisecond precision
-- (they sort as text), JSON documents are TEXT written by serde_json, counters are BIGINT.
-- Auto-numbered ids use SQLite's `INTEGER PRIMARY KEY` (BIGINT GENERATED … on PostgreSQL).

CREATE TABLE runs (
    id               TEXT    NOT NULL PRIMARY KEY,
    runbook          TEXT    NOT NULL,
    runbook_text     TEXT    NOT NULL,
    runbook_sha256   TEXT    NOT NULL,
    status           TEXT    NOT NULL,
    trigger_source   TEXT    NOT NULL,
    started_by       TEXT    NOT NULL,
    inputs           TEXT    NOT NULL,
    concurrency_key  TEXT,
    undo_of          TEXT,
    dry_run          BOOLEAN NOT NULL,
    case_id          TEXT    NOT NULL,
    error            TEXT,
    created_at       TEXT    NOT NULL,
    started_at       TEXT,
    finished_at      TEXT,
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
    -- The executing process's lease; lease_token is the fencing counter and never goes back.
    lease_owner      TEXT,
    lease_until      TEXT,
    lease_token      BIGINT  NOT NULL DEFAULT 0
);

CREATE INDEX runs_by_created ON runs (created_at, id);
CREATE INDEX runs_by_status ON runs (status, created_at);
CREATE INDEX runs_by_runbook ON runs (runbook, created_at);
CREATE INDEX runs_by_case ON runs (case_id, created_at);
-- The join-by-concurrency-key lookup only ever looks at active runs.
CREATE INDEX runs_active_by_key ON runs (concurrency_key)
    WHERE concurrency_key IS NOT NULL AND status IN ('queued', 'running', 'waiting');

CREATE TABLE steps (
    run_id      TEXT    NOT NULL REFERENCES runs (id),
    step_id     TEXT    NOT NULL,
    -- Order of first insertion within the run; upserts keep it.
    pos         BIGINT  NOT NULL,
    status      TEXT    NOT NULL,
    attempts    BIGINT  NOT NULL,
    items       BIGINT  NOT NULL,
    inputs      TEXT,
    output      TEXT,
    error       TEXT,
    reason      TEXT,
    started_at  TEXT,
    finished_at TEXT,
    deadline    TEXT,
    on_failure  BOOLEAN NOT NULL,
    PRIMARY KEY (run_id, step_id)
);

CREATE INDEX steps_by_pos ON steps (run_id, pos);

CREATE TABLE items (
    run_id        TEXT   NOT NULL REFERENCES runs (id),
    step_id       TEXT   NOT NULL,
    idx           BIGINT NOT NULL,
    status        TEXT   NOT NULL,
    attempts      BIGINT NOT NULL,
    inputs        TEXT   NOT NULL,
    connector     TEXT   NOT NULL,
    output        TEXT,
    error         TEXT,
    prior_state   TEXT,
    secret_output TEXT,
    started_at    TEXT,
    finished_at   TEXT,
    PRIMARY KEY (run_id, step_id, idx)
);

CREATE TABLE decisions (
    id         INTEGER NOT NULL PRIMARY KEY,
    run_id     TEXT    NOT NULL REFERENCES runs (id),
    step_id    TEXT    NOT NULL,
    decision   TEXT    NOT NULL,
    decided_by TEXT    NOT NULL,
    comment    TEXT,
    at         TEXT    NOT NULL,
    releases   TEXT    NOT NULL
);

CREATE INDEX decisions_by_run ON decisions (run_id, at, id);

-- Triggers that joined an active run through its concurrency key.
CREATE TABLE run_joins (
    id             INTEGER NOT NULL PRIMARY KEY,
    run_id         TEXT    NOT NULL REFERENCES runs (id),
    trigger_source TEXT    NOT NULL,
    started_by     TEXT    NOT NULL,
    inputs         TEXT    NOT NULL,
    at             TEXT    NOT NULL
);

CREATE INDEX run_joins_by_run ON run_joins (run_id, id);

CREATE TABLE evidence (
    evidence_id  TEXT   NOT NULL PRIMARY KEY,
    run_id       TEXT   NOT NULL REFERENCES runs (id),
    step_id      TEXT   NOT NULL,
    path         TEXT   NOT NULL,
    sha256       TEXT   NOT NULL,
    bytes        BIGINT NOT NULL,
    records      BIGINT NOT NULL,
    collected_at TEXT   NOT NULL,
    meta         TEXT   NOT NULL
);

CREATE INDEX evidence_by_run ON evidence (run_id, collected_at, evidence_id);

-- The hash chain. seq is assigned by the store (head + 1), never by the database.
CREATE TABLE audit_events (
    seq       INTEGER NOT NULL PRIMARY KEY,
    at        TEXT    NOT NULL,
    run_id    TEXT,
    actor     TEXT    NOT NULL,
    action    TEXT    NOT NULL,
    details   TEXT    NOT NULL,
    prev_hash TEXT    NOT NULL,
    hash      TEXT    NOT NULL
);

CREATE INDEX audit_events_by_run ON audit_events (run_id, seq);

-- The chain's checkpoint, kept outside the events table so that deleting the newest events
-- is detected. A single row (id = 1), updated in the transaction that appends.
CREATE TABLE audit_head (
    id   INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    seq  BIGINT  NOT NULL,
    hash TEXT    NOT NULL
);

-- Process-wide switches (`paused`).
CREATE TABLE control (
    key   TEXT NOT NULL PRIMARY KEY,
    value TEXT NOT NULL
);
