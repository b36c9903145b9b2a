-- Which contact id each address R4 purged had, under the address's keyed hash (the
-- suppression form, as contacts.address_hash): the unsubscribe tokens of the copies it was
-- sent name the contact id, and after the purge nothing else led from a token to the person
-- (the link answered 404 and the objection was lost: NESTOR's link "did nothing").
-- Contact ids are never given again (016_contact_ids), so one id names one address for ever.
-- The language is kept for the page the link shows (in the person's language).
CREATE TABLE purged_contacts (
    contact_id    INTEGER PRIMARY KEY,
    address_hash  BLOB NOT NULL,
    language      TEXT
);
