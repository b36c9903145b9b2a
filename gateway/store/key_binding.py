"""Which address hash key a store was written with (019_key_fingerprints): a keyed
fingerprint, checked each time the key is loaded (security/keys.py load_store_key)."""

from __future__ import annotations

import hmac
import sqlite3
import time
from pathlib import Path

from gateway.errors import ConfigError

# what a store holds under the hash key: with any of it, a key file that is missing is lost,
# not new
_HASHED_TABLES = ("suppression", "audit", "contacts", "erasures")


def bind_key(store_path: Path | str, fingerprint: bytes, *, created: bool,
             key_path: Path) -> None:
    """Check `fingerprint` (of the address hash key in `key_path`) against the one the
    store at `store_path` keeps, binding it at the store's first use (ConfigError when it
    differs, or when the key file was `created` just now for a store that already holds
    entries under a key). See security/keys.py load_store_key."""
    store = Path(store_path)
    if not store.exists():
        return  # a new store: bound at its first use once it exists
    try:
        conn = sqlite3.connect(f"file:{store}?mode=rw", uri=True, timeout=10,
                               isolation_level=None)
    except sqlite3.Error:
        return  # the store's own open says what is wrong with it
    try:
        try:
            row = conn.execute("SELECT fingerprint FROM key_fingerprints WHERE name = 'hash'"
                               ).fetchone()
        except sqlite3.DatabaseError:
            row = None  # a store from before 019, or not a store (its open says so)
            unbound = True
        else:
            unbound = False
        if row is None:
            if created and any(_holds_rows(conn, table) for table in _HASHED_TABLES):
                raise ConfigError(
                    f"{key_path} did not exist, but the store {store} already holds entries "
                    "keyed with an address hash key: restore that key file from the "
                    "store's backup (a new key would make every suppression entry match "
                    "nothing)")
            if unbound:
                return  # bound at the next use, once its open has migrated it
            conn.execute("INSERT OR IGNORE INTO key_fingerprints (name, fingerprint, bound_at)"
                         " VALUES ('hash', ?, ?)", (fingerprint, time.time()))
            row = conn.execute("SELECT fingerprint FROM key_fingerprints WHERE name = 'hash'"
                               ).fetchone()
        if not hmac.compare_digest(bytes(row[0]), fingerprint):
            raise ConfigError(
                f"{key_path} is not the address hash key the store {store} was written with"
                f"{' (it did not exist: a new one was made, and removed again)' if created else ''}"
                ": restore the store's own key file (secrets/hash.key from the same backup); "
                "with another key no suppression entry would match")
    except sqlite3.Error as exc:
        raise ConfigError(f"cannot check the address hash key against {store}: {exc}") from None
    finally:
        conn.close()


def _holds_rows(conn: sqlite3.Connection, table: str) -> bool:
    try:
        return conn.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone() is not None  # noqa: S608 - constant names
    except sqlite3.DatabaseError:
        return False


def holds_hashed_entries(store_path: Path | str) -> bool:
    """Whether the store at `store_path` holds entries keyed with its address hash key (a
    key file missing for it is lost, not new: bind_key)."""
    return _holds_any(store_path, _HASHED_TABLES)


def tokens_issued(store_path: Path | str) -> bool:
    """Whether the store at `store_path` has sent copies, whose unsubscribe links and
    addresses carry tokens made with the token key (security/tokens.py)."""
    return _holds_any(store_path, ("deliveries", "audit WHERE decision = 'sent'"))


def _holds_any(store_path: Path | str, tables: tuple[str, ...]) -> bool:
    """Whether any of `tables` (constant names, a condition allowed) of the store at
    `store_path` has a row; False without a readable store (its own open says why)."""
    store = Path(store_path)
    if not store.exists():
        return False
    try:
        conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error:
        return False
    try:
        return any(_holds_rows(conn, table) for table in tables)
    finally:
        conn.close()
