-- What R4's purge keeps of a contact (gateway retention run, and serve daily): the keyed hash
-- of its address (the suppression form, as contacts.address_hash) and when its retention
-- clock last started (the later of its collection and the person's last interaction). A
-- re-import of the address (a data vendor's file, an enrichment) then starts its clock there,
-- not at the file's date: re-collecting does not renew retention (KASPR; COMPLIANCE.md
-- section 1). Only a later last_interaction_at in the file, an action by the person, does.
-- No address and no other fact is kept, as on the suppression list.
CREATE TABLE retention_purges (
    address_hash  BLOB PRIMARY KEY,
    clock_start   REAL NOT NULL,
    purged_at     REAL NOT NULL
) WITHOUT ROWID;
