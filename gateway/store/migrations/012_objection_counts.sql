-- /metrics' gateway_objections_total{channel}: a counter of the objections recorded (each
-- one that put its address on the suppression list), by channel. It only grows: lifting a
-- suppression (`gateway suppress remove`) does not take an objection back, and an erasure is
-- no objection. Written in the transaction of the objection itself, so every process's
-- objections count. Started from the suppression list as it stands.
CREATE TABLE objection_counts (
    channel  TEXT PRIMARY KEY,
    total    INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO objection_counts (channel, total)
    SELECT channel, count(*) FROM suppression WHERE channel != 'erasure' GROUP BY channel;
