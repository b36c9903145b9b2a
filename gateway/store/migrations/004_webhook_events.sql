-- Opt-out webhook event ids already received: a replayed event is ignored.

CREATE TABLE webhook_events (
    id           TEXT PRIMARY KEY,
    received_at  REAL NOT NULL
) WITHOUT ROWID;
