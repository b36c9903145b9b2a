-- The audit log stays append-only, but for one change, which `subject erase` makes
-- (026_audit_unlinkable): the recipient's hash made empty and the salt removed, every other
-- column as it was.
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
