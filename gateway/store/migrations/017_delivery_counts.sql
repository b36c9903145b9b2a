-- /metrics' gateway_deliveries_{sent,deferred,failed}_total: counters of the delivery
-- outcomes, written in the transaction of the outcome itself, so that every gateway process's
-- deliveries count (the in-memory figures were the HTTP-serving process's only, and started
-- again at 0 with it). Sent and failed start from the queue as it stands; deferrals were
-- never kept, so they start at 0.
CREATE TABLE delivery_counts (
    state  TEXT PRIMARY KEY,
    total  INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO delivery_counts (state, total)
    SELECT state, count(*) FROM deliveries WHERE state IN ('sent', 'failed') GROUP BY state;
