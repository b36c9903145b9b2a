-- Contacts held with capitals in their address, by its lower-case form. The ledger keeps an
-- address as written (Jane.Doe@), and tools write it in other cases (jane.doe@): a
-- re-import so written made a second contact whose retention clock started on the import
-- day (COMPLIANCE 1: a re-import never restarts it; KASPR), and a RCPT so written was
-- "unknown" (R2). An import now updates the contact held in another case, and a lookup that
-- finds no contact as written takes the one held in another case (ledger.contact_id_sql):
-- the lower-case one by the address's own index, those with capitals by this one. Partial:
-- most ledgers hold lower-case addresses only, and their imports pay nothing for it (an
-- index of every address hash made a 300,000-row import 45% slower). SQLite's lower()
-- folds ASCII only: an address with a non-ASCII capital is matched as written only.
CREATE INDEX IF NOT EXISTS contacts_with_capitals ON contacts (lower(address))
    WHERE address != lower(address);
