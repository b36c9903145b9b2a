-- The durable outbox of objection notifications: each objection is POSTed to the notify_url
-- of every account that has one, retried with backoff until it is taken (2xx) or too old.

CREATE TABLE notifications (
    id               INTEGER PRIMARY KEY,
    account          TEXT NOT NULL,
    url              TEXT NOT NULL,
    body             TEXT NOT NULL,                 -- the JSON document POSTed
    state            TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'failed')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  REAL NOT NULL,
    last_error       TEXT,
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL
);
CREATE INDEX notifications_due ON notifications(state, next_attempt_at);
