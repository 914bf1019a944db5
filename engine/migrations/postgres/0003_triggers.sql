-- Cordon store, version 3 (PostgreSQL). Mirrors migrations/sqlite/0003_triggers.sql.
--
-- Webhook deliveries already turned into a run, so that a repeat is answered with the first
-- run's id instead of starting another. `kind` is `webhook-id` (the sender's delivery id:
-- Standard Webhooks' `webhook-id`, GitHub's `X-GitHub-Delivery`) or `dedup_key` (the hook's
-- configured template). The UNIQUE constraint is what enforces "once", across every node:
-- the row is inserted (`INSERT … ON CONFLICT`) in the transaction that creates the run,
-- never checked first and inserted later; a concurrent identical delivery waits for the
-- first transaction and then finds the row. Rows older than 30 days are purged by
-- `cordon serve` and may be replaced before that.
CREATE TABLE webhook_deliveries (
    hook   TEXT COLLATE "C" NOT NULL,
    kind   TEXT COLLATE "C" NOT NULL,
    key    TEXT COLLATE "C" NOT NULL,
    run_id TEXT COLLATE "C" NOT NULL REFERENCES runs (id),
    at     TEXT COLLATE "C" NOT NULL,
    UNIQUE (hook, kind, key)
);

CREATE INDEX webhook_deliveries_by_at ON webhook_deliveries (at);
