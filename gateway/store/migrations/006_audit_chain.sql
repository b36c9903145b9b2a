-- Tamper evidence for the audit log: each row carries SHA-256(previous row's chain || this
-- row's content), computed when it is appended (store/audit.py). `gateway audit verify`
-- recomputes the chain and names the first row that does not match.

ALTER TABLE audit ADD COLUMN chain BLOB;
