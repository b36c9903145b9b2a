-- The audit log loses its index on recipient_hash.
--
-- Keys there are random (a keyed hash), so each appended row dirtied its own leaf page of the
-- index: with 400,000 rows already logged, appending 2,000 took 53 ms and 8.9 MB of WAL
-- against 5.8 ms and 2.6 MB without the index, and the gap grows with the log, which is
-- append-only and never shrinks. Every RCPT and every accepted message appends here.
-- The only readers by recipient are `gateway subject export` and the audit lookup of one
-- address, rare operator commands: a scan costs ~75 ms per million rows (bench/README.md).
DROP INDEX IF EXISTS audit_recipient;
