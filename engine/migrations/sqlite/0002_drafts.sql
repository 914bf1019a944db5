-- Cordon store, version 2 (SQLite): notification drafts.
--
-- A draft is written by `notify.draft` in the same transaction as its step's result, and
-- never changed afterwards. `recipient` holds the draft's `to` as JSON text (a string or a
-- list; `to` itself is an SQL keyword). `facts` is the incident-facts snapshot the draft was
-- rendered from. Portable SQL, mirrored by migrations/postgres/0002_drafts.sql.

CREATE TABLE drafts (
    draft_id      TEXT   NOT NULL PRIMARY KEY,
    run_id        TEXT   NOT NULL REFERENCES runs (id),
    step_id       TEXT   NOT NULL,
    idx           BIGINT NOT NULL,
    template      TEXT   NOT NULL,
    audience      TEXT   NOT NULL,
    subject       TEXT   NOT NULL,
    recipient     TEXT,
    body_markdown TEXT   NOT NULL,
    body_text     TEXT   NOT NULL,
    body_sha256   TEXT   NOT NULL,
    facts         TEXT   NOT NULL,
    created_at    TEXT   NOT NULL
);

CREATE INDEX drafts_by_run ON drafts (run_id, created_at, draft_id);
