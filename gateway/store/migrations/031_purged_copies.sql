-- A copy to an address the ledger does not hold (a service message's, a released R2 copy),
-- deleted at the end of its period (store/retention.py): its unsubscribe link and address
-- name it by its delivery id, and found nothing ("not valid", 550 5.1.1) once its row was
-- gone. What a link needs is kept, as purged_contacts keeps it for a purged contact: the
-- keyed hash of the address (the suppression form), until policy.max_retention_days.
CREATE TABLE purged_copies (
    delivery_id  INTEGER PRIMARY KEY,
    address_hash BLOB NOT NULL,
    purged_at    REAL NOT NULL
);
