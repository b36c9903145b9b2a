"""Every reply constant follows RFC 5321 4.2 and RFC 3463: code, then a matching enhanced code."""

from __future__ import annotations

import re

import pytest

from gateway.smtp import replies

REPLY = re.compile(r"^([245])([0-5])([0-9]) \1\.[0-9]{1,3}\.[0-9]{1,3} \S")
CONSTANTS = {name: value for name, value in vars(replies).items()
             if name.isupper() and isinstance(value, str)}


@pytest.mark.parametrize("name", sorted(CONSTANTS))
def test_reply_has_matching_enhanced_code(name: str):
    assert REPLY.match(CONSTANTS[name]), CONSTANTS[name]


@pytest.mark.parametrize("raw", sorted(replies.AIOSMTPD_REWRITES))
def test_aiosmtpd_replies_are_rewritten_with_enhanced_codes(raw: bytes):
    rewritten = replies.AIOSMTPD_REWRITES[raw].decode()
    assert REPLY.match(rewritten), rewritten
    assert rewritten[:3] == raw[:3].decode() or raw.startswith(b"553 5.1.3") \
        or (raw.startswith(b"502 5.5.1 Too many") and rewritten.startswith("421 "))
    # (the closing one: RFC 5321 3.8 wants a 421 before the server closes)


def test_the_contract_replies_are_exact():
    # ../shared/INTERFACE.md "SMTP behaviour"
    assert replies.AUTH_REQUIRED == "530 5.7.0 Authentication required"
    assert replies.AUTH_INVALID.startswith("535 5.7.8")
    assert replies.AUTH_LOCKED.startswith("454 4.7.0")
    assert replies.CANNOT_COMMIT.startswith("451 4.3.0")
    assert replies.QUEUED.format(queue_id="ABC").startswith("250 2.0.0 ABC")


@pytest.mark.parametrize(("raw", "expected"), [
    (b'500 Error: command "FOO" not recognized', b'500 5.5.2 Error: command "FOO" not recognized'),
    (b"501 Syntax: MAIL FROM: <address>", b"501 5.5.2 Syntax: MAIL FROM: <address>"),
    (b"554 refused", b"554 5.0.0 refused"),
    (b"550 5.7.1 R1 objected", b"550 5.7.1 R1 objected"),  # has one: kept
])
def test_a_reply_without_an_enhanced_code_gets_one(raw: bytes, expected: bytes):
    assert replies.with_enhanced_code(raw) == expected
