"""Server secrets kept in files: created once (0600, random), read at start.

The address hash key keys the suppression list and the audit log. Losing it makes every
suppression entry unmatchable, so it is never rotated: back it up with the database.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from gateway.addresses import suppression_form
from gateway.errors import ConfigError
from gateway.files import make_private_dirs, owner_only

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
    try:
        create_secret_file(path, secrets.token_hex(KEY_BYTES) + "\n")
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except OSError as exc:  # a directory, no permission, a read-only or full disk
        raise ConfigError(f"{path}: cannot read or create this key file: "
                          f"{exc.strerror or exc}") from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ConfigError(f"{path}: not a hex key") from None
    if len(key) < 16:
        raise ConfigError(f"{path}: key too short ({len(key)} bytes, need at least 16)")
    owner_only("a key file", path)  # ours made owner-only, someone else's warned about
    return key


FINGERPRINT_LABEL = b"gateway address hash key fingerprint v1"


def load_store_key(key_path: Path | str, store_path: Path | str) -> bytes:
    """The address hash key of the store at `store_path`: load_or_create_key, then checked
    against the fingerprint the store keeps (bound at its first use). A key that is not the
    store's (a restore without secrets/, a typo in secrets.hash_key_file) is a ConfigError,
    and a key file made just now for it is removed again: with another key every suppression
    entry matches nothing, and people who objected are mailed again."""
    key_path = Path(key_path)
    existed = key_path.exists()
    key = load_or_create_key(key_path)
    from gateway.store.key_binding import bind_key

    fingerprint = hmac.new(key, FINGERPRINT_LABEL, hashlib.sha256).digest()[:16]
    try:
        bind_key(store_path, fingerprint, created=not existed, key_path=key_path)
    except ConfigError:
        if not existed:
            key_path.unlink(missing_ok=True)
        raise
    return key


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

    def login_name(self, name: str) -> bytes:
        """What the store keeps of an AUTH login name that is no account (its failures,
        store/accounts.py): keyed, as a guess is often a person's address, and apart from
        the addresses' hashes (a label no address form starts with)."""
        return self._mac(b"login name\0" + name.encode("utf-8", "surrogatepass"))
