-- What the X-Gateway-Campaign-Topics / X-Gateway-Product-Category headers of a held copy's
-- message said (";"-separated, as the headers; NULL: the header was absent). The headers are
-- stripped before the message is stored, and a release decides the copy again: without them
-- it would decide on the account's whole campaign, wider than the message said it was.
ALTER TABLE quarantine ADD COLUMN steering_topics TEXT;
ALTER TABLE quarantine ADD COLUMN steering_products TEXT;
