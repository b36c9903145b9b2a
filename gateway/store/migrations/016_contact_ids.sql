-- Contact ids are never given twice.
--
-- An unsubscribe token names its copy by delivery id and the contact by contact id; once the
-- copy's row is gone (purged, deleted), the link still works through the contact id. Without
-- AUTOINCREMENT, SQLite gives the highest id again once its row is deleted (`gateway subject
-- erase`), so an erased person's old link named the next contact imported: that person was
-- suppressed, and the page spoke their language. Rebuilt as 011_delivery_ids rebuilt
-- deliveries, with foreign keys off for the rebuild (the migration runner's rule): the rows of
-- sources and contact_events keep their contact ids, and dropping the old table deletes none
-- of them. An id deleted before this migration ran may still come back once.
CREATE TABLE contacts_new (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
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
INSERT INTO contacts_new (id, address, address_hash, kind, audience, relationship, language,
                          first_name, last_name, job_title, topics, customer_categories,
                          consent, consent_at, consent_method, consent_proof, opt_out_offered,
                          collected_at, last_interaction_at, informed_at, informed_version,
                          retention_expired_at, created_at, updated_at)
    SELECT id, address, address_hash, kind, audience, relationship, language, first_name,
           last_name, job_title, topics, customer_categories, consent, consent_at,
           consent_method, consent_proof, opt_out_offered, collected_at, last_interaction_at,
           informed_at, informed_version, retention_expired_at, created_at, updated_at
    FROM contacts;
DROP TABLE contacts;
ALTER TABLE contacts_new RENAME TO contacts;
