-- What delivery needs to personalise a copy: the contact it was decided for (NULL when the
-- ledger does not hold the address) and the rule that allowed it (the notice says why).

ALTER TABLE deliveries ADD COLUMN contact_id INTEGER;
ALTER TABLE deliveries ADD COLUMN rule TEXT;
