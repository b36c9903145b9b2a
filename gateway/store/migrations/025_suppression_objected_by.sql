-- How an address objected before its erasure made the entry the erasure's (channel
-- 'erasure', which `suppress remove` lifts only with --force): `report` counted objections
-- by the entry's channel, so every erased person's one-click or mailto objection vanished
-- from its figures (GDPR 5-2 accountability). The channel alone, never the address.
ALTER TABLE suppression ADD COLUMN objected_by TEXT;
