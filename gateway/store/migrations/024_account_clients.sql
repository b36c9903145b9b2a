-- Where each account last logged in from, by client address (gateway.peers.client_address): while
-- a lock runs (auth_max_failures failed AUTHs in a row, from anywhere), a client the account
-- logged in from within 30 days still gets in. Anyone who knew an account's name could lock
-- it for good from one address, and the tool's mail stopped.
CREATE TABLE account_clients (
    account_id  INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    client      TEXT NOT NULL,
    last_ok_at  REAL NOT NULL,
    PRIMARY KEY (account_id, client)
) WITHOUT ROWID;
