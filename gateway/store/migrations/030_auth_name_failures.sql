-- Failed AUTH attempts for login names that are no account, counted as an account's are
-- (accounts.failed_logins, locked_until) and, like them, in the store: counted in each
-- process's memory, ten failures spread over two processes locked a real account (454) but
-- never an unknown name (535), and a restart forgot the unknown names' locks; which told the
-- names apart (security review). The name is kept as a digest only.
CREATE TABLE auth_name_failures (
    name_digest   BLOB PRIMARY KEY,
    failed_logins INTEGER NOT NULL,
    locked_until  REAL,
    updated_at    REAL NOT NULL
) WITHOUT ROWID;
