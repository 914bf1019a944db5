-- Webhook deliveries already turned into a run, so that a repeat is answered with the first
-- run's id instead of starting another. `kind` is `webhook-id` (the sender's delivery id:
-- Standard Webhooks' `webhook-id`, GitHub's `X-GitHub-Delivery`) or `dedup_key` (the hook's
-- configured template). The UNIQUE constraint is what enforces "once": the row is inserted
-- in the transaction that creates the run, never checked first and inserted later. Rows
-- older than 30 days are purged by `cordon serve` and may be replaced before that.
CREATE TABLE webhook_deliveries (
    hook   TEXT NOT NULL,
    kind   TEXT NOT NULL,
    key    TEXT NOT NULL,
    run_id TEXT NOT NULL REFERENCES runs (id),
    at     TEXT NOT NULL,
    UNIQUE (hook, kind, key)
);

CREATE INDEX webhook_deliveries_by_at ON webhook_deliveries (at);
