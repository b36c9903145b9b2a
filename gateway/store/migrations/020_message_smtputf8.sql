-- Whether the client's MAIL said SMTPUTF8 (RFC 6531): the copies go upstream with it, as
-- Postfix keeps the request; it was dropped, and header fields in UTF-8 (RFC 6532) went out
-- undeclared. Messages from before say 0 (as they were sent).
ALTER TABLE messages ADD COLUMN smtputf8 INTEGER NOT NULL DEFAULT 0;
