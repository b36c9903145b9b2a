-- A task only one gateway process may run at a time, whatever the number of `serve`
-- processes sharing the store (a rolling restart, two listen addresses): the process named
-- `holder` runs it until `until` (unix seconds), renewing it as it goes. The objection
-- notifier is one: two senders reading the same outbox POSTed every notification twice.
CREATE TABLE leases (
    name    TEXT PRIMARY KEY,
    holder  TEXT NOT NULL,
    until   REAL NOT NULL
) WITHOUT ROWID;
