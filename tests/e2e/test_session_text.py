"""Bytes that are not UTF-8 in a session (aiosmtpd decodes commands with surrogateescape)
never make the commit fail: SQLite cannot bind a lone surrogate, and a commit that raised
answered 451 4.3.0 at every retry of the client, for every message of its group commit."""

from __future__ import annotations

import sqlite3

import pytest

from conftest import Sink, message
from rawsmtp import RawSmtp


def test_an_ehlo_name_that_is_not_utf8_is_not_stored_and_the_message_is_accepted(
        make_gateway, sink: Sink):
    gw = make_gateway()
    s = RawSmtp(gw.smtp_port)
    assert s.cmd(b"EHLO pc-r\xe9ception.example")[0] == 250  # a Windows name in Latin-1
    assert s.cmd("MAIL FROM:<news@example.com>")[0] == 250
    assert s.cmd("RCPT TO:<jane@example.net>")[0] == 250
    assert s.cmd("DATA")[0] == 354
    code, text = s.cmd(message(subject="latin-1 ehlo") + b".")
    assert code == 250, (code, text)  # it was (451, '4.3.0 Internal error, try again later')
    with sqlite3.connect(gw.config.parent / "gateway.db") as db:
        [helo] = db.execute("SELECT helo FROM messages WHERE subject = 'latin-1 ehlo'"
                            ).fetchone()
    assert helo == ""  # not a name the Received field would give either


@pytest.mark.parametrize("mail_from, rcpt_to, headers", [
    (b"n\xe9ws@example.com", b"jane@example.net", b""),
    (b"news@example.com", b"j\xe9ne@example.net", b""),
    (b"news@example.com", b"jane@example.net", b"Subject: Soir\xe9e\r\n"),
    (b"news@example.com", b"jane@example.net", b"X-Gateway-Campaign-Topics: soir\xe9e\r\n"),
    (b"news@example.com", b"jane@example.net", b"X-Gateway-Product-Category: soir\xe9e\r\n"),
], ids=["mail-from", "rcpt-to", "subject", "campaign-topics", "product-category"])
def test_latin1_bytes_in_the_envelope_or_header_are_never_answered_451(
        make_gateway, sink: Sink, mail_from: bytes, rcpt_to: bytes, headers: bytes):
    gw = make_gateway()
    s = RawSmtp(gw.smtp_port)
    assert s.cmd("EHLO client.example")[0] == 250
    code, text = s.cmd(b"MAIL FROM:<" + mail_from + b"> SMTPUTF8")
    if code != 250:
        assert 500 <= code < 600, (code, text)  # refused for good is an answer too
        return
    code, text = s.cmd(b"RCPT TO:<" + rcpt_to + b">")
    if code != 250:
        assert 500 <= code < 600, (code, text)
        return
    assert s.cmd("DATA")[0] == 354
    code, text = s.cmd(headers + message() + b".")
    assert code == 250 or 500 <= code < 600, (code, text)
