-- Relay core: accounts, the durable message store and its per-recipient delivery queue.

CREATE TABLE accounts (
    id                 INTEGER PRIMARY KEY,
    name               TEXT NOT NULL UNIQUE,
    password_hash      TEXT NOT NULL,                -- argon2id, PHC string
    from_domains       TEXT NOT NULL DEFAULT '[]',   -- JSON array of lower-case domains
    category           TEXT NOT NULL DEFAULT 'marketing'
                       CHECK (category IN ('marketing', 'transactional')),
    topics             TEXT NOT NULL DEFAULT '[]',   -- JSON array: campaign topics
    product_categories TEXT NOT NULL DEFAULT '[]',   -- JSON array
    notify_url         TEXT,
    failed_logins      INTEGER NOT NULL DEFAULT 0,   -- consecutive failures since the last success
    locked_until       REAL,                         -- unix seconds; NULL when not locked
    created_at         REAL NOT NULL,
    updated_at         REAL NOT NULL
);

-- One row per accepted message; content is the raw message with CRLF line endings, kept until
-- every copy is finished (sent, failed or deleted).
CREATE TABLE messages (
    id           TEXT PRIMARY KEY,          -- the queue id given in "250 2.0.0 <id>"
    received_at  REAL NOT NULL,
    account      TEXT,                      -- NULL for DSNs and objections
    client_ip    TEXT NOT NULL,
    mail_from    TEXT NOT NULL,             -- '' is the null sender (DSNs)
    size         INTEGER NOT NULL,
    content      BLOB
);

-- One row per accepted recipient: each copy is personalised and delivered on its own.
CREATE TABLE deliveries (
    id               INTEGER PRIMARY KEY,
    message_id       TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    recipient        TEXT NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('queued', 'deferred', 'failed', 'sent')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  REAL NOT NULL,
    last_error       TEXT,
    claimed_by       TEXT,                  -- instance id of the process delivering it now
    claimed_until    REAL,
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL
);
CREATE INDEX deliveries_due ON deliveries(state, next_attempt_at);
CREATE INDEX deliveries_message ON deliveries(message_id);

-- Running gateway processes, so that a restarted one can take over the claims of a dead one.
CREATE TABLE instances (
    id          TEXT PRIMARY KEY,
    host        TEXT NOT NULL,
    pid         INTEGER NOT NULL,
    started_at  REAL NOT NULL,
    heartbeat   REAL NOT NULL
);
