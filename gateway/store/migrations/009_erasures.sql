-- GDPR 17 erasures (gateway subject erase): the record that an address was erased, by whom
-- and what was removed. The address is kept only as its keyed hash, like the suppression list
-- and the audit log, so the record itself holds no personal data.
CREATE TABLE erasures (
    id            INTEGER PRIMARY KEY,
    address_hash  BLOB NOT NULL,
    erased_at     REAL NOT NULL,
    operator      TEXT NOT NULL,
    removed       TEXT NOT NULL            -- JSON object: rows removed per table
);
CREATE INDEX erasures_hash ON erasures(address_hash);
