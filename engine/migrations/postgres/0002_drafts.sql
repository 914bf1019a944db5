-- Cordon store, version 2 (PostgreSQL): notification drafts. Mirrors
-- migrations/sqlite/0002_drafts.sql.
--
-- A draft is written by `notify.draft` in the same transaction as its step's result, and
-- never changed afterwards. `recipient` holds the draft's `to` as JSON text (a string or a
-- list; `to` itself is an SQL keyword). `facts` is the incident-facts snapshot the draft was
-- rendered from.

CREATE TABLE drafts (
    draft_id      TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    run_id        TEXT COLLATE "C" NOT NULL REFERENCES runs (id),
    step_id       TEXT COLLATE "C" NOT NULL,
    idx           BIGINT NOT NULL,
    template      TEXT COLLATE "C" NOT NULL,
    audience      TEXT COLLATE "C" NOT NULL,
    subject       TEXT COLLATE "C" NOT NULL,
    recipient     TEXT COLLATE "C",
    body_markdown TEXT COLLATE "C" NOT NULL,
    body_text     TEXT COLLATE "C" NOT NULL,
    body_sha256   TEXT COLLATE "C" NOT NULL,
    facts         TEXT COLLATE "C" NOT NULL,
    created_at    TEXT COLLATE "C" NOT NULL
);

CREATE INDEX drafts_by_run ON drafts (run_id, created_at, draft_id);
