"""Unsubscribe tokens: round trip, tamper-evidence, rotation, no personal data, mailto-safe."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.security.tokens import TOKEN_CHARS, Token, TokenKeys, load_token_keys

KEYS = TokenKeys([(1, b"k" * 32)])
TOKEN = Token(contact_id=123_456, account_id=7, delivery_id=98_765_432)


def test_round_trip_and_case_insensitive():
    text = KEYS.issue(TOKEN)
    assert len(text) == TOKEN_CHARS and text == text.lower()
    assert len("unsubscribe+" + text) <= 64  # RFC 5321 local part limit
    assert KEYS.verify(text) == TOKEN
    assert KEYS.verify(text.upper()) == TOKEN  # a mail system may change the case


def test_any_change_is_refused():
    text = KEYS.issue(TOKEN)
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    for i in range(len(text)):
        for replacement in (alphabet[(alphabet.index(text[i]) + 1) % 32],):
            forged = text[:i] + replacement + text[i + 1:]
            assert KEYS.verify(forged) is None, i
    for bad in ("", text[:-1], text + "a", "0" * TOKEN_CHARS, "é" * TOKEN_CHARS,
                "!" * TOKEN_CHARS):
        assert KEYS.verify(bad) is None
    assert TokenKeys([(1, b"x" * 32)]).verify(text) is None  # another server's key


def test_a_non_ascii_letter_that_lower_cases_to_a_token_letter_is_refused():
    text = next(t for n in range(1, 500) if "k" in (t := KEYS.issue(Token(n, 1, n))))
    assert KEYS.verify(text) is not None
    assert "\u212a".lower() == "k"  # the Kelvin sign
    assert KEYS.verify(text.replace("k", "\u212a", 1)) is None


def test_another_recipients_token_does_not_name_this_one():
    other = KEYS.issue(Token(123_457, 7, 98_765_432))
    assert KEYS.verify(other) != TOKEN


def test_rotation_keeps_old_tokens_valid():
    old = KEYS.issue(TOKEN)
    rotated = TokenKeys([(2, b"n" * 32), (1, b"k" * 32)])
    new = rotated.issue(TOKEN)
    assert new != old and rotated.verify(new) == TOKEN and rotated.verify(old) == TOKEN
    assert TokenKeys([(2, b"n" * 32)]).verify(old) is None  # retired key


def test_no_readable_personal_data():
    token = KEYS.issue(Token(42, 1, 1))
    for value in ("42", "jane", "example"):
        assert value not in token


def test_key_file_is_created_owner_only_and_read_back(tmp_path: Path):
    path = tmp_path / "secrets" / "token.key"
    keys = load_token_keys(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_token_keys(path).verify(keys.issue(TOKEN)) == TOKEN
    path.write_text("# rotated 2026-11\n2 " + "ab" * 32 + "\n" + path.read_text())
    rotated = load_token_keys(path)
    assert rotated.current_id == 2 and rotated.verify(keys.issue(TOKEN)) == TOKEN
    path.write_text("nonsense\n")
    with pytest.raises(ConfigError, match="token.key:1"):
        load_token_keys(path)


def test_values_out_of_range_are_refused():
    with pytest.raises(ValueError, match="account_id"):
        KEYS.issue(Token(1, 2**16, 1))


def test_token_text_decodes_exactly_as_rfc4648_base32():
    # the decoder is int(..., 32) over a translated alphabet: it must accept exactly the texts
    # the base64 module's base32 gives for 24 bytes, in any case, and nothing else
    import base64
    import random

    from gateway.security.tokens import _decode, _encode
    rng = random.Random(7)
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    for _ in range(3000):
        raw = rng.randbytes(24)
        text = base64.b32encode(raw).decode().rstrip("=").lower()
        assert _encode(raw) == text
        assert _decode(text) == raw and _decode(text.upper()) == raw
        variant = text[:-1] + rng.choice(alphabet)  # the last character holds 3 unused bits
        canonical = base64.b32encode(base64.b32decode(variant.upper() + "=")).decode()
        expected = raw if variant == text else (
            base64.b32decode(variant.upper() + "=") if canonical.rstrip("=").lower() == variant
            else None)
        assert _decode(variant) == expected
    for bad in ("", "a" * 38, "a" * 40, "0" * 39, "1" + "a" * 38, "a" * 38 + "8",
                " " + "a" * 38, "a" * 19 + "_" + "a" * 19, "+" + "a" * 38, "-" + "a" * 38,
                "é" * 39, "a" * 38 + "\n"):
        assert _decode(bad) is None, bad


def test_a_key_id_given_twice_or_a_file_that_is_not_ascii_is_refused(tmp_path):
    """A rotation that reused id 1 (new key on the first line, old below) went on signing
    with the old key without a word; a BOM ended `serve` with a traceback."""
    import pytest

    from gateway.errors import ConfigError
    from gateway.security.tokens import load_token_keys

    path = tmp_path / "token.key"
    path.write_text(f"1 {'ab' * 32}\n1 {'cd' * 32}\n")
    with pytest.raises(ConfigError, match="key id 1 is given twice"):
        load_token_keys(path)
    path.write_bytes(b"\xef\xbb\xbf1 " + b"ab" * 32 + b"\n")
    with pytest.raises(ConfigError, match="not ASCII"):
        load_token_keys(path)


def test_the_ids_cannot_be_read_without_the_key():
    """The ids were in clear (base32 only): anyone holding a token read the contact id (the
    same on every message to the person) and the copy's id (the sending volume)."""
    import base64
    tokens = [KEYS.issue(Token(1, 1, n)) for n in (1, 2)]
    for text in tokens:
        raw = base64.b32decode(text.upper() + "=")
        assert raw[1:6] != (1).to_bytes(5, "big") and raw[6:8] != (1).to_bytes(2, "big")
    first, second = (base64.b32decode(t.upper() + "=") for t in tokens)
    assert first[1:6] != second[1:6]  # one person's tokens do not share a visible id
    assert [KEYS.verify(t) for t in tokens] == [Token(1, 1, 1), Token(1, 1, 2)]


def test_a_token_issued_before_the_masking_is_still_accepted():
    """Mail already sent carries tokens with the ids in clear: their links must still work
    (NESTOR's link "did nothing")."""
    import base64
    import hashlib
    import hmac
    body = bytes([1]) + (42).to_bytes(5, "big") + (7).to_bytes(2, "big") + (9).to_bytes(6, "big")
    mac = hmac.new(b"k" * 32, body, hashlib.sha256).digest()[:10]
    legacy = base64.b32encode(body + mac).decode().rstrip("=").lower()
    assert KEYS.verify(legacy) == Token(42, 7, 9)
    assert KEYS.verify(legacy[:-2] + ("a" if legacy[-2] != "a" else "b") + legacy[-1]) is None
