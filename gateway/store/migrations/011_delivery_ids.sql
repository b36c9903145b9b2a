-- Delivery ids are never given twice.
--
-- An unsubscribe token names its copy by delivery id. Without AUTOINCREMENT, SQLite gives the
-- highest id again once its row is deleted (`gateway subject erase`, `gateway queue delete`),
-- so an erased person's old link could name the next person's copy. The table is rebuilt with
-- AUTOINCREMENT (SQLite cannot add it in place): sqlite_sequence then keeps the highest id ever
-- given. An id deleted before this migration ran may still come back once. The copy takes a
-- few seconds per million rows, once, at the first start after the upgrade.
CREATE TABLE deliveries_new (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id       TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    recipient        TEXT NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('queued', 'deferred', 'failed', 'sent')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  REAL NOT NULL,
    last_error       TEXT,
    claimed_by       TEXT,                  -- instance id of the process delivering it now
    claimed_until    REAL,
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL,
    contact_id       INTEGER,               -- the ledger contact, when it held the address
    rule             TEXT                   -- the rule that allowed the copy
);
INSERT INTO deliveries_new (id, message_id, recipient, state, attempts, next_attempt_at,
                            last_error, claimed_by, claimed_until, created_at, updated_at,
                            contact_id, rule)
    SELECT id, message_id, recipient, state, attempts, next_attempt_at, last_error, claimed_by,
           claimed_until, created_at, updated_at, contact_id, rule FROM deliveries;
DROP TABLE deliveries;
ALTER TABLE deliveries_new RENAME TO deliveries;
CREATE INDEX deliveries_due ON deliveries(state, next_attempt_at);
CREATE INDEX deliveries_message ON deliveries(message_id);
