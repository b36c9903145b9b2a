"""Unsubscribe tokens: compact, case-insensitive, HMAC-signed, no readable personal data.

A token names one recipient copy: the contact (0 when the ledger does not hold the address,
e.g. mail from a transactional account), the sending account and the delivery. It is
unguessable and unforgeable without the key, and short enough for the local part of
`unsubscribe+TOKEN@host` (RFC 5321: 64 octets), so it is base32, which survives mail systems
that lower-case local parts.

Layout (24 bytes, 39 base32 characters): key id (1) | the ids, masked (13) | MAC (10). The
MAC is HMAC-SHA256 over the key id and the ids in clear (contact id 5, account id 2, delivery
id 6 bytes), truncated to 10 bytes (80 bits; NIST SP 800-107 allows truncation to 64 bits and
more). The ids are masked by XOR with HMAC-SHA256(mask key, MAC), the mask key derived from
the token key (a deterministic SIV construction): without the key a token reads as random,
so the same person's tokens cannot be linked, nor a copy's id read (they were in clear,
base32 only). Tokens issued before the masking (ids in clear) are still accepted.

Keys live in `secrets.token_key_file`, one "<key id> <hex key>" per line, the first line
signing, every line verifying: add a new first line to rotate, and drop the old one once its
mail is old.
"""

from __future__ import annotations

import base64
import hmac
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import ConfigError
from gateway.files import owner_only
from gateway.security.keys import KeyedMac, create_secret_file

MAC_BYTES = 10
BODY_BYTES = 14
TOKEN_BYTES = BODY_BYTES + MAC_BYTES
TOKEN_CHARS = 39
KEY_BYTES = 32
_LIMITS = {"contact_id": 2**40, "account_id": 2**16, "delivery_id": 2**48}


@dataclass(frozen=True)
class Token:
    contact_id: int
    account_id: int
    delivery_id: int


class TokenKeys:
    """The signing key (first) and every key still accepted, by key id."""

    def __init__(self, keys: list[tuple[int, bytes]]) -> None:
        if not keys:
            raise ConfigError("no unsubscribe token key")
        self.current_id, self.current = keys[0]
        self.by_id = dict(keys)
        self._macs = {key_id: KeyedMac(key) for key_id, key in keys}
        self._masks = {key_id: KeyedMac(KeyedMac(key)(b"gateway token ids mask"))
                       for key_id, key in keys}

    def issue(self, token: Token) -> str:
        """The token text (lower-case base32, no padding)."""
        for name, limit in _LIMITS.items():
            value = getattr(token, name)
            if not 0 <= value < limit:
                raise ValueError(f"{name} out of range for a token: {value}")
        body = (self.current_id.to_bytes(1, "big") + token.contact_id.to_bytes(5, "big")
                + token.account_id.to_bytes(2, "big") + token.delivery_id.to_bytes(6, "big"))
        mac = self._macs[self.current_id](body)[:MAC_BYTES]
        return _encode(body[:1] + _xor(body[1:], self._masks[self.current_id](mac)) + mac)

    def verify(self, text: str) -> Token | None:
        """The token's content if `text` is a token we issued (any case), else None. The MAC
        is compared in constant time; malformed input of any kind is simply None."""
        raw = _decode(text)
        if raw is None:
            return None
        sent, mac = raw[:BODY_BYTES], raw[BODY_BYTES:]
        keyed = self._macs.get(sent[0])
        if keyed is None:
            return None
        body = sent[:1] + _xor(sent[1:], self._masks[sent[0]](mac))
        if not hmac.compare_digest(keyed(body)[:MAC_BYTES], mac):
            # one issued before the ids were masked (in mail already sent): in clear
            if not hmac.compare_digest(keyed(sent)[:MAC_BYTES], mac):
                return None
            body = sent
        return Token(int.from_bytes(body[1:6], "big"), int.from_bytes(body[6:8], "big"),
                     int.from_bytes(body[8:14], "big"))


# base32 (RFC 4648) digits as the digits int(..., 32) reads: decoding is then one C call
# (the base64 module's b32decode is Python, a loop per 8 characters: 5 us of each POST)
_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
_AS_INT_DIGITS = str.maketrans(_ALPHABET, "0123456789abcdefghijklmnopqrstuv")
_TOKEN_TEXT = re.compile(f"[{_ALPHABET}]{{{TOKEN_CHARS}}}")
_PAD_BITS = TOKEN_CHARS * 5 - TOKEN_BYTES * 8  # 3 unused bits in the last character


def _decode(text: str) -> bytes | None:
    """The 24 bytes of a token's text (any case); None unless it is exactly what _encode
    gives for some bytes (length, alphabet, unused bits zero)."""
    if len(text) != TOKEN_CHARS or not text.isascii():
        return None  # non-ASCII first: str.lower() maps e.g. the Kelvin sign U+212A to "k"
    lower = text.lower()
    if _TOKEN_TEXT.fullmatch(lower) is None:
        return None
    value = int(lower.translate(_AS_INT_DIGITS), 32)
    if value & ((1 << _PAD_BITS) - 1):
        return None  # a last character differing in its unused bits
    return (value >> _PAD_BITS).to_bytes(TOKEN_BYTES, "big")


def _xor(data: bytes, mask: bytes) -> bytes:
    return (int.from_bytes(data, "big") ^ int.from_bytes(mask[:len(data)], "big")).to_bytes(
        len(data), "big")


def _encode(raw: bytes) -> str:
    return base64.b32encode(raw).decode("ascii").rstrip("=").lower()


def load_store_token_keys(path: Path | str, store_path: Path | str) -> TokenKeys:
    """load_token_keys, for the store at `store_path`: a key file made just now for a store
    that has sent copies is removed again and refused. A lost key file (a restore without
    secrets/, a typo in secrets.token_key_file) was replaced without a word, and every
    unsubscribe link and address already sent answered "not valid": NESTOR's dead link."""
    from gateway.store.key_binding import tokens_issued

    path = Path(path)
    existed = path.exists()
    keys = load_token_keys(path)
    if not existed and tokens_issued(store_path):
        path.unlink(missing_ok=True)
        raise ConfigError(f"{path} did not exist, but the store {store_path} has sent copies "
                          "whose unsubscribe links and addresses were made with a token key: "
                          "restore that key file from the store's backup (a new key would "
                          "make every link already sent answer 'not valid')")
    return keys


def load_token_keys(path: Path | str) -> TokenKeys:
    """The keys in `path`; a first key (id 1) is written owner-only when the file is absent."""
    path = Path(path)
    keys: list[tuple[int, bytes]] = []
    try:
        create_secret_file(path, f"1 {secrets.token_hex(KEY_BYTES)}\n")
        text = path.read_text(encoding="ascii")
    except UnicodeDecodeError as exc:  # a BOM an editor added, say
        raise ConfigError(f"{path}: not ASCII text ({exc.reason} at byte {exc.start}): "
                          "expected lines '<key id> <hex key>'") from None
    except OSError as exc:  # a directory, no permission, a read-only or full disk
        raise ConfigError(f"{path}: cannot read or create this key file: "
                          f"{exc.strerror or exc}") from None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        kid, _, hex_key = line.strip().partition(" ")
        try:
            key_id, key = int(kid), bytes.fromhex(hex_key.strip())
        except ValueError:
            raise ConfigError(f"{path}:{number}: expected '<key id> <hex key>'") from None
        if not 0 <= key_id < 256 or len(key) < 16:
            raise ConfigError(f"{path}:{number}: key id 0-255 and at least 16 key bytes")
        if any(key_id == seen for seen, _ in keys):
            # the first line signs, but the last one of an id was checked: a rotation that
            # reused the id went on signing with the old key, without a word
            raise ConfigError(f"{path}:{number}: key id {key_id} is given twice; a new key "
                              "needs a new id (on the first line)")
        keys.append((key_id, key))
    owner_only("secrets.token_key_file", path)
    return TokenKeys(keys)
