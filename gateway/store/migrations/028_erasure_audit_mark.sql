-- The audit's last row id when an address was erased: rows written after it about the time
-- before (an RCPT decided before the erasure and audited after it, the audit lingers; the
-- 'sent' mark of a copy in flight during it) named the person again. serve's housekeeping
-- unlinks them (store/audit.unlink_late), from this id on: off the commit path, which
-- checked every audit row it wrote against the erasures (a query per commit, ~5% of the
-- relay's throughput in bench/relay_bench.py).
ALTER TABLE erasures ADD COLUMN audit_mark INTEGER;
