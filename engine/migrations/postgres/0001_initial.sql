-- Cordon store, version 1 (PostgreSQL). Mirrors migrations/sqlite/0001_initial.sql table for
-- table, column for column, index for index, under the same version number.
--
-- - Timestamps are RFC 3339 UTC text with millisecond precision (`2026-11-25T23:57:58.123Z`),
--   written by the engine or formatted from the database clock in that same form, so that
--   they sort and compare as text exactly as on SQLite.
-- - JSON documents are TEXT written by serde_json (not JSONB), so what is read back is
--   byte for byte what SQLite would hold; the audit chain hashes what it reads.
-- - Every text column is `COLLATE "C"`: comparisons and ORDER BY are bytewise, like SQLite's
--   BINARY collation, whatever the database's default collation is (a locale collation
--   would order `a-1` and `a1`, or `Z` and `a`, differently from SQLite).
-- - Auto-numbered ids are `BIGINT GENERATED ALWAYS AS IDENTITY` where SQLite has
--   `INTEGER PRIMARY KEY`.
-- Plain SQL that PostgreSQL-compatible distributed databases accept where practical.

CREATE TABLE runs (
    id               TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    runbook          TEXT COLLATE "C" NOT NULL,
    runbook_text     TEXT COLLATE "C" NOT NULL,
    runbook_sha256   TEXT COLLATE "C" NOT NULL,
    status           TEXT COLLATE "C" NOT NULL,
    trigger_source   TEXT COLLATE "C" NOT NULL,
    started_by       TEXT COLLATE "C" NOT NULL,
    inputs           TEXT COLLATE "C" NOT NULL,
    concurrency_key  TEXT COLLATE "C",
    undo_of          TEXT COLLATE "C",
    dry_run          BOOLEAN NOT NULL,
    case_id          TEXT COLLATE "C" NOT NULL,
    error            TEXT COLLATE "C",
    created_at       TEXT COLLATE "C" NOT NULL,
    started_at       TEXT COLLATE "C",
    finished_at      TEXT COLLATE "C",
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
    -- The executing process's lease; lease_token is the fencing counter and never goes back.
    -- lease_until is judged on the database's clock (every node shares it).
    lease_owner      TEXT COLLATE "C",
    lease_until      TEXT COLLATE "C",
    lease_token      BIGINT NOT NULL DEFAULT 0
);

CREATE INDEX runs_by_created ON runs (created_at, id);
CREATE INDEX runs_by_status ON runs (status, created_at);
CREATE INDEX runs_by_runbook ON runs (runbook, created_at);
CREATE INDEX runs_by_case ON runs (case_id, created_at);
-- The join-by-concurrency-key lookup only ever looks at active runs.
--
-- Not UNIQUE, on purpose: SQLite allows two active runs with one key when `cordon retry`
-- brings a failed run back while a newer run with its key is active, and a unique index
-- would refuse that retry here. Instead, creating a run with a key takes a
-- transaction-level advisory lock on the key (`pg_advisory_xact_lock(hashtext(key))`)
-- before looking for the active run, so two nodes creating runs with one key at once are
-- serialised: the second sees the first's run and joins it. (A database without advisory
-- locks would lock a row per key instead; see store/postgres.rs.)
CREATE INDEX runs_active_by_key ON runs (concurrency_key)
    WHERE concurrency_key IS NOT NULL AND status IN ('queued', 'running', 'waiting');

CREATE TABLE steps (
    run_id      TEXT COLLATE "C" NOT NULL REFERENCES runs (id),
    step_id     TEXT COLLATE "C" NOT NULL,
    -- Order of first insertion within the run; upserts keep it.
    pos         BIGINT  NOT NULL,
    status      TEXT COLLATE "C" NOT NULL,
    attempts    BIGINT  NOT NULL,
    items       BIGINT  NOT NULL,
    inputs      TEXT COLLATE "C",
    output      TEXT COLLATE "C",
    error       TEXT COLLATE "C",
    reason      TEXT COLLATE "C",
    started_at  TEXT COLLATE "C",
    finished_at TEXT COLLATE "C",
    deadline    TEXT COLLATE "C",
    on_failure  BOOLEAN NOT NULL,
    PRIMARY KEY (run_id, step_id)
);

CREATE INDEX steps_by_pos ON steps (run_id, pos);

CREATE TABLE items (
    run_id        TEXT COLLATE "C" NOT NULL REFERENCES runs (id),
    step_id       TEXT COLLATE "C" NOT NULL,
    idx           BIGINT NOT NULL,
    status        TEXT COLLATE "C" NOT NULL,
    attempts      BIGINT NOT NULL,
    inputs        TEXT COLLATE "C" NOT NULL,
    connector     TEXT COLLATE "C" NOT NULL,
    output        TEXT COLLATE "C",
    error         TEXT COLLATE "C",
    prior_state   TEXT COLLATE "C",
    secret_output TEXT COLLATE "C",
    started_at    TEXT COLLATE "C",
    finished_at   TEXT COLLATE "C",
    PRIMARY KEY (run_id, step_id, idx)
);

CREATE TABLE decisions (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id     TEXT COLLATE "C" NOT NULL REFERENCES runs (id),
    step_id    TEXT COLLATE "C" NOT NULL,
    decision   TEXT COLLATE "C" NOT NULL,
    decided_by TEXT COLLATE "C" NOT NULL,
    comment    TEXT COLLATE "C",
    at         TEXT COLLATE "C" NOT NULL,
    releases   TEXT COLLATE "C" NOT NULL
);

CREATE INDEX decisions_by_run ON decisions (run_id, at, id);

-- Triggers that joined an active run through its concurrency key.
CREATE TABLE run_joins (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id         TEXT COLLATE "C" NOT NULL REFERENCES runs (id),
    trigger_source TEXT COLLATE "C" NOT NULL,
    started_by     TEXT COLLATE "C" NOT NULL,
    inputs         TEXT COLLATE "C" NOT NULL,
    at             TEXT COLLATE "C" NOT NULL
);

CREATE INDEX run_joins_by_run ON run_joins (run_id, id);

CREATE TABLE evidence (
    evidence_id  TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    run_id       TEXT COLLATE "C" NOT NULL REFERENCES runs (id),
    step_id      TEXT COLLATE "C" NOT NULL,
    path         TEXT COLLATE "C" NOT NULL,
    sha256       TEXT COLLATE "C" NOT NULL,
    bytes        BIGINT NOT NULL,
    records      BIGINT NOT NULL,
    collected_at TEXT COLLATE "C" NOT NULL,
    meta         TEXT COLLATE "C" NOT NULL
);

CREATE INDEX evidence_by_run ON evidence (run_id, collected_at, evidence_id);

-- The hash chain. seq is assigned by the store (head + 1), never by the database.
CREATE TABLE audit_events (
    seq       BIGINT NOT NULL PRIMARY KEY,
    at        TEXT COLLATE "C" NOT NULL,
    run_id    TEXT COLLATE "C",
    actor     TEXT COLLATE "C" NOT NULL,
    action    TEXT COLLATE "C" NOT NULL,
    details   TEXT COLLATE "C" NOT NULL,
    prev_hash TEXT COLLATE "C" NOT NULL,
    hash      TEXT COLLATE "C" NOT NULL
);

CREATE INDEX audit_events_by_run ON audit_events (run_id, seq);

-- The chain's checkpoint, kept outside the events table so that deleting the newest events
-- is detected. A single row (id = 1), updated in the transaction that appends.
--
-- Unlike SQLite (whose writers hold the database write lock), PostgreSQL writers append
-- concurrently and serialise on this row with `SELECT … FOR UPDATE`. A missing row cannot
-- be locked, so the row exists from the start: seq 0 with the genesis hash stands for the
-- empty chain (the store reports no head until the first event).
CREATE TABLE audit_head (
    id   BIGINT NOT NULL PRIMARY KEY CHECK (id = 1),
    seq  BIGINT NOT NULL,
    hash TEXT COLLATE "C" NOT NULL
);

INSERT INTO audit_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

-- Process-wide switches (`paused`).
CREATE TABLE control (
    key   TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    value TEXT COLLATE "C" NOT NULL
);
