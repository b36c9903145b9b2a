-- Data-subject requests (GDPR 15, 17, 21) with their legal due date (GDPR 12(3): one month
-- from receipt), so that none is answered late (NESTOR).

CREATE TABLE requests (
    id           INTEGER PRIMARY KEY,
    address      TEXT NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('access', 'erasure', 'objection')),
    received_at  REAL NOT NULL,
    due_at       REAL NOT NULL,
    closed_at    REAL,
    note         TEXT
);
CREATE INDEX requests_open ON requests(closed_at, due_at);
