-- GDPR 17 / COMPLIANCE.md 6: an erasure deletes everything held on the address but the
-- suppression hash. The audit log named each recipient by that same keyed hash, kept for
-- ever: after `gateway subject erase`, `subject export` of the address still listed every
-- dated decision about the person (account, rule, outcome, message).
--
-- A row now keeps, beside the recipient's hash, a random salt and a commitment
-- SHA-256(salt || hash); the chain covers the commitment, not the hash (store/audit.py). An
-- erasure blanks the hash (to the empty blob: the column is NOT NULL) and the salt of the
-- person's rows: what is left (time, account, rule, outcome, message id) names no one, the
-- commitment cannot be tied to the address without the salt, and `gateway audit verify`
-- still recomputes every link.
--
-- The rows already there are re-chained so (store/audit.rechain_for_026, run in this
-- migration's transaction once the SQL below has run): a chain value over the hash itself
-- would tie an unlinked row to its hash again (SHA-256(previous || fields) recomputed with
-- each suppression hash). Their old chain is verified first, and what it found is kept in
-- audit_upgrade: `audit verify` reports a break found then for good. Anchors kept from
-- before no longer hold (the chain was recomputed): keep the one verify prints after.
-- ~10 s per million audit rows on the 2-core development machine.
ALTER TABLE audit ADD COLUMN recipient_salt BLOB;
ALTER TABLE audit ADD COLUMN recipient_commit BLOB;
DROP TRIGGER IF EXISTS audit_no_update;  -- made again by 027, once the rows are re-chained
CREATE TABLE audit_upgrade (
    upgraded_at   REAL NOT NULL,
    rows          INTEGER NOT NULL,          -- audit rows re-chained
    last_id       INTEGER,                   -- the last of them (anchors up to it predate it)
    unchained     INTEGER NOT NULL,          -- of them, rows from before the chain (006)
    first_broken  INTEGER                    -- the first row whose old chain did not match
);
