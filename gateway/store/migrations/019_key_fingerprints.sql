-- Which address-hash key this store was written with: a keyed fingerprint (HMAC of a fixed
-- label), never the key. A store restored without its secrets/hash.key, or a config pointing
-- at another key file, made a new key at once: every suppression entry then matched nothing,
-- and people who had objected were mailed again (security/keys.py load_store_key).
CREATE TABLE key_fingerprints (
    name         TEXT PRIMARY KEY,
    fingerprint  BLOB NOT NULL,
    bound_at     REAL NOT NULL
) WITHOUT ROWID;
