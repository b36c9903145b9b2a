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
-- still recomputes every link. Rows written before this migration have no commitment: their
-- chain covers the hash itself, so an erased one can no longer be recomputed; verify takes
-- its chain value as recorded and says how many such rows there are.
ALTER TABLE audit ADD COLUMN recipient_salt BLOB;
ALTER TABLE audit ADD COLUMN recipient_commit BLOB;
-- Still append-only, but for that one change: the hash made empty and the salt removed, every
-- other column as it was.
DROP TRIGGER audit_no_update;
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
WHEN NOT (NEW.recipient_hash = X'' AND NEW.recipient_salt IS NULL
          AND NEW.id IS OLD.id AND NEW.at IS OLD.at AND NEW.account IS OLD.account
          AND NEW.client_ip IS OLD.client_ip AND NEW.rule IS OLD.rule
          AND NEW.decision IS OLD.decision AND NEW.message_id IS OLD.message_id
          AND NEW.notice_version IS OLD.notice_version
          AND NEW.recipient_commit IS OLD.recipient_commit AND NEW.chain IS OLD.chain)
BEGIN
    SELECT RAISE(ABORT, 'audit is append-only (an erasure may only unlink its recipient)');
END;
