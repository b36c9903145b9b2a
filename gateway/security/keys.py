"""Server secrets kept in files: created once (0600, random), read at start.

The address hash key keys the suppression list and the audit log. Losing it makes every
suppression entry unmatchable, so it is never rotated: back it up with the database.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import sqlite3
import time
from pathlib import Path

from gateway.addresses import suppression_form
from gateway.errors import ConfigError
from gateway.files import make_private_dirs

KEY_BYTES = 32


def create_secret_file(path: Path, text: str) -> None:
    """Write `text` to `path`, owner-only, unless the file exists; atomic, so that processes
    starting together never read a half-written key: written aside, then hard-linked into
    place (link fails if another process won)."""
    make_private_dirs(path.parent)
    if path.exists():
        return
    aside = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(aside, path)
        except FileExistsError:
            pass
    finally:
        os.unlink(aside)


def load_or_create_key(path: Path | str) -> bytes:
    """The key in `path`; a new random one written owner-only when the file does not exist."""
    path = Path(path)
    create_secret_file(path, secrets.token_hex(KEY_BYTES) + "\n")
    text = path.read_text(encoding="ascii", errors="replace").strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ConfigError(f"{path}: not a hex key") from None
    if len(key) < 16:
        raise ConfigError(f"{path}: key too short ({len(key)} bytes, need at least 16)")
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)
    return key


FINGERPRINT_LABEL = b"gateway address hash key fingerprint v1"
# what a store holds under the hash key: with any of it, a key file that is missing is lost,
# not new
_HASHED_TABLES = ("suppression", "audit", "contacts", "erasures")


def load_store_key(key_path: Path | str, store_path: Path | str) -> bytes:
    """The address hash key of the store at `store_path`: load_or_create_key, then checked
    against the fingerprint the store keeps (bound at its first use). A key that is not the
    store's (a restore without secrets/, a typo in secrets.hash_key_file) is a ConfigError,
    and a key file made just now for it is removed again: with another key every suppression
    entry matches nothing, and people who objected are mailed again."""
    key_path = Path(key_path)
    existed = key_path.exists()
    key = load_or_create_key(key_path)
    try:
        bind_key(store_path, key, created=not existed, key_path=key_path)
    except ConfigError:
        if not existed:
            key_path.unlink(missing_ok=True)
        raise
    return key


def bind_key(store_path: Path | str, key: bytes, *, created: bool, key_path: Path) -> None:
    store = Path(store_path)
    if not store.exists():
        return  # a new store: bound at its first use once it exists
    fingerprint = hmac.new(key, FINGERPRINT_LABEL, hashlib.sha256).digest()[:16]
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
            return  # not migrated yet (its open binds it next time), or not a store
        if row is None:
            if created and any(_holds_rows(conn, table) for table in _HASHED_TABLES):
                raise ConfigError(
                    f"{key_path} did not exist, but the store {store} already holds entries "
                    "keyed with an address hash key: restore that key file from the "
                    "store's backup (a new key would make every suppression entry match "
                    "nothing)")
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


class KeyedMac:
    """HMAC-SHA256 under one key, keyed once: each call copies the keyed state.

    `hmac.digest(key, msg, "sha256")` has OpenSSL 3 fetch the algorithm and key the MAC again
    on every call; in `serve`, where the hot path takes three or four MACs per message, that
    showed as ~10% of the event loop's profile. Copying a keyed context skips both.
    """

    def __init__(self, key: bytes) -> None:
        self._keyed = hmac.new(key, digestmod=hashlib.sha256)

    def __call__(self, message: bytes) -> bytes:
        mac = self._keyed.copy()
        mac.update(message)
        return mac.digest()


class AddressHasher:
    """HMAC-SHA256 of the suppression form of an address: what stands for it where the
    address itself must not be kept (suppression list, audit log)."""

    def __init__(self, key: bytes) -> None:
        self._mac = KeyedMac(key)

    def __call__(self, address: str) -> bytes:
        return self._mac(suppression_form(address).encode("utf-8"))
