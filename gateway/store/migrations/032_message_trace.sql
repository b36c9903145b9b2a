-- What the Received field of each copy says of the session its message came in
-- (RFC 5321 4.4): the name the client gave in EHLO/HELO (SHOULD be in the "from" clause) and
-- the protocol (RFC 3848: ESMTP, ESMTPS with TLS, ESMTPA logged in, ESMTPSA both; RFC 6531:
-- UTF8SMTP...). Every copy said "from [ip] ([ip]) ... with ESMTP" whatever the session.
ALTER TABLE messages ADD COLUMN helo TEXT;
ALTER TABLE messages ADD COLUMN protocol TEXT;
