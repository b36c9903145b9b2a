-- The contact ledger (../shared/COMPLIANCE.md section 1), the suppression list, the quarantine
-- and the audit log of recipient decisions.

-- One row per address. `address` is normalised: domain lower-case IDNA, local part as given.
-- `address_hash` is HMAC-SHA256(hash key, address with the local part case-folded): the key
-- of the suppression list, and what audit rows name instead of the address.
CREATE TABLE contacts (
    id                  INTEGER PRIMARY KEY,
    address             TEXT NOT NULL UNIQUE,
    address_hash        BLOB NOT NULL,
    kind                TEXT NOT NULL DEFAULT 'person' CHECK (kind IN ('person', 'role')),
    audience            TEXT NOT NULL DEFAULT 'b2c' CHECK (audience IN ('b2c', 'b2b')),
    relationship        TEXT NOT NULL DEFAULT 'prospect'
                        CHECK (relationship IN ('prospect', 'customer')),
    language            TEXT,
    first_name          TEXT,
    last_name           TEXT,
    job_title           TEXT,
    topics              TEXT NOT NULL DEFAULT '',     -- ';'-joined, lower-case
    customer_categories TEXT NOT NULL DEFAULT '',     -- ';'-joined, lower-case
    consent             TEXT CHECK (consent IN ('granted', 'withdrawn')),
    consent_at          REAL,
    consent_method      TEXT,
    consent_proof       TEXT,
    opt_out_offered     INTEGER CHECK (opt_out_offered IN (0, 1)),
    collected_at        REAL NOT NULL,                -- first collection; never moves later
    last_interaction_at REAL,                         -- last action BY the person; only grows
    informed_at         REAL,
    informed_version    TEXT,
    retention_expired_at REAL,                        -- set when R4 first refused it: to purge
    created_at          REAL NOT NULL,
    updated_at          REAL NOT NULL
);
-- No index on address_hash: imports would pay for it on every row, and only operator
-- commands (suppress list) look contacts up by hash.

-- Who supplied an address: several per contact, each kept with its first date. Keyed by
-- contact (WITHOUT ROWID: one B-tree, not a table and an index, for 1M-row imports).
CREATE TABLE sources (
    contact_id   INTEGER NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
    type         TEXT NOT NULL CHECK (type IN ('direct', 'partner', 'broker', 'public_directory',
                                               'social_network', 'import')),
    name         TEXT NOT NULL,
    visibility   TEXT CHECK (visibility IN ('public', 'restricted')),
    recorded_at  REAL NOT NULL,
    PRIMARY KEY (contact_id, type, name)
) WITHOUT ROWID;

-- Append-only: consent, withdrawal, objection, interaction and information events with their
-- proof. Rows are never updated; they go only with their contact (erasure). WITHOUT ROWID,
-- keyed by contact and time, like sources.
CREATE TABLE contact_events (
    contact_id   INTEGER NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
    kind         TEXT NOT NULL CHECK (kind IN ('consent', 'withdrawal', 'objection',
                                               'objection_lifted', 'interaction',
                                               'information')),
    occurred_at  REAL NOT NULL,
    channel      TEXT NOT NULL DEFAULT '',            -- import, one-click, webhook, manual ...
    method       TEXT,                                -- e.g. web form, checkbox
    wording      TEXT,                                -- consent wording or form version
    proof        TEXT,                                -- proof reference (form version, IP ...)
    ip           TEXT,
    recorded_at  REAL NOT NULL,
    PRIMARY KEY (contact_id, occurred_at, kind, channel)
) WITHOUT ROWID;
CREATE TRIGGER contact_events_append_only BEFORE UPDATE ON contact_events
BEGIN
    SELECT RAISE(ABORT, 'contact_events is append-only');
END;

-- The suppression list: the keyed hash and nothing that identifies the person (CNIL
-- MED-2023-040). Never expires; survives erasure.
CREATE TABLE suppression (
    hash        BLOB PRIMARY KEY,
    created_at  REAL NOT NULL,
    channel     TEXT NOT NULL
) WITHOUT ROWID;

-- Recipient copies held for a human (R9, R2 when configured, M2, M3). The raw message stays in
-- `messages` while any entry refers to it.
CREATE TABLE quarantine (
    id          INTEGER PRIMARY KEY,
    message_id  TEXT NOT NULL REFERENCES messages(id),
    created_at  REAL NOT NULL,
    account     TEXT,
    client_ip   TEXT NOT NULL,
    mail_from   TEXT NOT NULL,
    recipient   TEXT NOT NULL,
    subject     TEXT NOT NULL DEFAULT '',
    rule        TEXT NOT NULL,
    reason      TEXT NOT NULL,
    basis       TEXT NOT NULL,
    state       TEXT NOT NULL DEFAULT 'held' CHECK (state IN ('held', 'released', 'rejected')),
    decided_at  REAL,
    decided_by  TEXT,
    decision_reason TEXT
);
CREATE INDEX quarantine_held ON quarantine(state, created_at);
CREATE INDEX quarantine_message ON quarantine(message_id);

-- One row per recipient decision (GDPR 5-2 accountability). Names the recipient by its keyed
-- hash only. Append-only.
CREATE TABLE audit (
    id              INTEGER PRIMARY KEY,
    at              REAL NOT NULL,
    account         TEXT,
    client_ip       TEXT NOT NULL,
    recipient_hash  BLOB NOT NULL,
    rule            TEXT NOT NULL,
    decision        TEXT NOT NULL CHECK (decision IN ('allow', 'reject', 'quarantine')),
    message_id      TEXT                              -- NULL when no message was accepted
);
CREATE INDEX audit_recipient ON audit(recipient_hash);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN
    SELECT RAISE(ABORT, 'audit is append-only');
END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN
    SELECT RAISE(ABORT, 'audit is append-only');
END;

ALTER TABLE messages ADD COLUMN subject TEXT;
