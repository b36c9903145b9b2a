-- COMPLIANCE.md 4.5: the audit record names the notice version a copy carried. It was kept
-- only on the copy's delivery row (015_notice_version), which is not chained, and which
-- retention deletes once the copy is finished: a year on, nothing said which notice a
-- person had been given. A copy taken by the upstream now appends an audit row of its own,
-- decision 'sent', with its notice version, chained like every row (store/audit.py).
--
-- The CHECK on decision cannot be altered in place: the table is rebuilt (SQLite's
-- procedure, lang_altertable.html), every row copied with its id and chain, so
-- `gateway audit verify` and anchors kept outside the store still hold. Measured: 2 s per
-- million audit rows on the 2-core development machine (other writers wait meanwhile).
CREATE TABLE audit_022 (
    id              INTEGER PRIMARY KEY,
    at              REAL NOT NULL,
    account         TEXT,
    client_ip       TEXT NOT NULL,
    recipient_hash  BLOB NOT NULL,
    rule            TEXT NOT NULL,
    decision        TEXT NOT NULL
                    CHECK (decision IN ('allow', 'reject', 'quarantine', 'sent')),
    message_id      TEXT,                             -- NULL when no message was accepted
    chain           BLOB,
    notice_version  TEXT                              -- 'sent' rows: the notice in the copy
);
INSERT INTO audit_022 (id, at, account, client_ip, recipient_hash, rule, decision,
                       message_id, chain)
    SELECT id, at, account, client_ip, recipient_hash, rule, decision, message_id, chain
    FROM audit ORDER BY id;
DROP TABLE audit;
ALTER TABLE audit_022 RENAME TO audit;
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN
    SELECT RAISE(ABORT, 'audit is append-only');
END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN
    SELECT RAISE(ABORT, 'audit is append-only');
END;
