"""DSNs (RFC 3464): structure a mail client understands, the right status, no header injection."""

from __future__ import annotations

import email
import email.policy
import re
from email.message import EmailMessage

import pytest

from gateway.delivery.dsn import build_dsn, should_send_dsn

ORIGINAL = b"From: news@example.com\r\nTo: gone@example.net\r\nSubject: Spring offers\r\n\r\n"


def dsn(**overrides: object) -> bytes:
    fields: dict[str, object] = {
        "reporting_mta": "gw.example.com", "queue_id": "4F2A9C0B1D3E5F70",
        "mail_from": "news@example.com", "recipient": "gone@example.net", "status": "",
        "diagnostic": "550 5.1.1 <gone@example.net>: user unknown",
        "arrival_date": 1_700_000_000.0, "original_headers": ORIGINAL,
    }
    fields.update(overrides)
    return build_dsn(**fields)  # type: ignore[arg-type]


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def recipient_fields(raw: bytes) -> EmailMessage:
    report = parse(raw).get_payload()[1]
    blocks = report.get_payload()
    assert len(blocks) == 2  # per-message fields, then one per-recipient block
    return blocks[1]


def test_is_a_multipart_report_with_text_status_and_headers_parts():
    message = parse(dsn())
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    parts = message.get_payload()
    assert [p.get_content_type() for p in parts] == [
        "text/plain", "message/delivery-status", "text/rfc822-headers"]
    assert "gone@example.net" in parts[0].get_content()
    assert "user unknown" in parts[0].get_content()
    assert parts[2].get_payload(decode=True) == ORIGINAL[:-2]


def test_top_level_headers_address_the_sender_from_mailer_daemon():
    message = parse(dsn())
    assert message["From"].addresses[0].addr_spec == "MAILER-DAEMON@gw.example.com"
    assert message["To"].addresses[0].addr_spec == "news@example.com"
    assert message["Subject"] == "Undelivered Mail Returned to Sender"
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["MIME-Version"] == "1.0"
    assert message["Date"].datetime is not None
    assert message["Message-ID"].endswith("@gw.example.com>")


def test_per_message_and_per_recipient_fields():
    report = parse(dsn()).get_payload()[1].get_payload()
    assert report[0]["Reporting-MTA"] == "dns; gw.example.com"
    # our queue id, as Postfix gives its own (X-Postfix-Queue-ID): Original-Envelope-Id is
    # the sender's ENVID only (RFC 3464 2.2.1), and the gateway offers no DSN extension
    assert "Original-Envelope-Id" not in report[0]
    assert report[0]["X-Gateway-Queue-ID"] == "4F2A9C0B1D3E5F70"
    assert report[0]["Arrival-Date"] == "Tue, 14 Nov 2023 22:13:20 +0000"  # (not obsolete GMT)
    rcpt = report[1]
    assert rcpt["Final-Recipient"] == "rfc822; gone@example.net"
    assert rcpt["Action"] == "failed"
    assert rcpt["Status"] == "5.1.1"
    assert rcpt["Diagnostic-Code"] == "smtp; 550 5.1.1 <gone@example.net>: user unknown"
    assert "Remote-MTA" not in rcpt  # not said when not known


def test_the_remote_mta_that_answered_is_named():
    rcpt = parse(dsn(remote_mta="mx.example.net")).get_payload()[1].get_payload()[1]
    assert rcpt["Remote-MTA"] == "dns; mx.example.net"


def test_an_expired_copy_reports_the_last_smtp_reply_as_its_diagnostic():
    """As Postfix reports expired mail: the code is the last reply; the text says why."""
    raw = dsn(diagnostic="gave up after 120.0 h in the queue; last error: 451 4.2.0 busy")
    rcpt = parse(raw).get_payload()[1].get_payload()[1]
    assert rcpt["Diagnostic-Code"] == "smtp; 451 4.2.0 busy"
    assert rcpt["Status"] == "4.4.7"
    assert "gave up after 120.0 h" in parse(raw).get_payload()[0].get_content()


@pytest.mark.parametrize("diagnostic", [
    "gave up after 120.0 h in the queue; last error: upstream connection: refused",
    "maildir write failed: [Errno 28] No space left on device",
])
def test_the_gateways_own_words_are_not_typed_as_an_smtp_reply(diagnostic: str):
    """RFC 3464 2.3.6: `smtp;` says the text is an SMTP reply; the gateway's own are
    typed as Postfix types its own (`X-Postfix;`)."""
    rcpt = parse(dsn(diagnostic=diagnostic)).get_payload()[1].get_payload()[1]
    assert rcpt["Diagnostic-Code"] == f"X-Gateway; {diagnostic}"


@pytest.mark.parametrize("status, diagnostic, expected", [
    ("", "550 5.1.1 <x@y>: user unknown", "5.1.1"),
    ("", "550 user unknown", "5.0.0"),
    ("", "554 4.7.1 2.0.0 5.7.26 unauthenticated", "5.7.26"),  # a 5.x.x is preferred
    ("", "550 4.7.1 blocked", "5.7.1"),  # class follows the permanent reply
    ("", "gave up after 120.0 h in the queue; last error: 451 4.3.0 try later", "4.4.7"),
    ("5.2.2", "550 5.1.1 user unknown", "5.2.2"),  # given explicitly
    ("9.9.9", "550 5.1.1 user unknown", "5.1.1"),  # malformed: falls back to the text
    ("5.1.1\r\nBcc: x", "550 no", "5.0.0"),
    ("", "550 5.1.1 The account does not exist.\n5.1.1 Please check", "5.1.1"),  # multiline
    ("", "550 5.7.1 see https://help.example/errors/5.2.2", "5.7.1"),
])
def test_status_code(status: str, diagnostic: str, expected: str):
    assert recipient_fields(dsn(status=status, diagnostic=diagnostic))["Status"] == expected


@pytest.mark.parametrize("diagnostic", [
    "550 Rejected: relay 192.5.1.7 is on our blocklist",
    "550 Message rejected (your IP 10.4.4.1 listed)",
    "554 Transaction failed, see https://help.example/errors/4.2.2",
    "550 4.2.2.1 is listed",  # an address right after the code is not a code either
    "550 2.0.0 see https://help.example/errors/5.2.2",
])
def test_the_status_is_never_read_out_of_an_address_or_a_link(diagnostic: str):
    """RFC 3463 and 2034: the enhanced code is the token right after the reply's code (its
    run, where an upstream gives several); a reply without one gives 5.0.0, as Postfix reads
    it. Any x.y.z in the text was taken: an IP address made 'Status: 5.1.7' (mailbox moved)
    and a link 5.2.2 (mailbox full), which mail clients show the sender as the reason."""
    assert recipient_fields(dsn(diagnostic=diagnostic))["Status"] == "5.0.0"


def test_every_line_ends_in_crlf():
    raw = dsn(original_headers=b"From: a@b\nSubject: bare LF\rX: bare CR\n\nbody\n")
    assert re.search(rb"(?<!\r)\n", raw) is None
    assert re.search(rb"\r(?!\n)", raw) is None
    assert raw.endswith(b"\r\n")


def test_only_the_original_headers_are_returned_never_the_body():
    raw = dsn(original_headers=b"Subject: x\r\n\r\nsecret body\r\n")
    assert b"secret body" not in raw
    assert parse(raw).get_payload()[2].get_payload(decode=True) == b"Subject: x\r\n"


@pytest.mark.parametrize("field", ["diagnostic", "recipient", "mail_from", "reporting_mta",
                                   "queue_id", "remote_mta"])
@pytest.mark.parametrize("newline", ["\r\n", "\n", "\r", "\0", "\u2028"])
def test_injected_line_breaks_do_not_create_headers(field: str, newline: str):
    raw = dsn(**{field: f"550 bad{newline}Bcc: evil@x{newline}{newline}body"})
    message = parse(raw)
    assert "Bcc" not in message
    assert not re.search(rb"(?m)^Bcc:", raw)
    assert b"\0" not in raw
    for part in message.get_payload()[:2]:
        assert "Bcc" not in part
    for block in message.get_payload()[1].get_payload():
        assert "Bcc" not in block


def test_long_diagnostic_is_truncated_and_folded_under_998_octets():
    diagnostic = "550 5.7.1 " + " ".join(["word"] * 2000) + " " + "x" * 5000
    raw = dsn(diagnostic=diagnostic, recipient="ü" * 3000 + "@example.net",
              mail_from="é" * 3000 + "@example.com", queue_id="z" * 5000)
    assert max(len(line) for line in raw.split(b"\r\n")) < 998
    message = parse(raw)
    code = recipient_fields(raw)["Diagnostic-Code"]
    assert code.startswith("smtp; 550 5.7.1 word word")
    assert len(code) <= 1000
    assert message.get_payload()[1]["Content-Transfer-Encoding"] == "7bit"


def test_non_ascii_recipient_uses_the_utf8_address_type():
    raw = dsn(recipient="jörg+tag@bücher.example")
    assert recipient_fields(raw)["Final-Recipient"] == (
        "utf-8; j\\x{F6}rg\\x{2B}tag@b\\x{FC}cher.example")
    assert "jörg+tag@bücher.example" in parse(raw).get_payload()[0].get_content()


def test_boundary_never_occurs_in_the_content(monkeypatch: pytest.MonkeyPatch):
    tokens = iter(["aaaa", "bbbb", "cccc", "dddd"])
    monkeypatch.setattr("gateway.delivery.dsn.secrets.token_hex", lambda _n: next(tokens))
    message = parse(dsn(original_headers=b"X-Trap: --=_dsn_aaaa\r\n"))
    assert message.get_boundary() == "=_dsn_bbbb"
    assert len(message.get_payload()) == 3


@pytest.mark.parametrize("mail_from, expected", [
    ("", False), ("<>", False), (" <> ", False),
    ("MAILER-DAEMON@x", False), ("mailer-daemon@example.com", False), ("<MAILER-DAEMON>", False),
    ("a@b", True), ("mailer-daemon-fan@example.com", True), ("<a@b>", True),
])
def test_should_send_dsn_never_bounces_a_bounce(mail_from: str, expected: bool):
    assert should_send_dsn(mail_from) is expected


def test_eight_bit_content_is_declared_at_every_level():
    message = parse(dsn(recipient="jörg@example.net"))
    assert message["Content-Transfer-Encoding"] == "8bit"
    assert message.get_payload()[0]["Content-Transfer-Encoding"] == "8bit"
    assert parse(dsn())["Content-Transfer-Encoding"] == "7bit"


def test_header_fields_in_utf8_are_returned_as_global_headers_and_need_smtputf8():
    """RFC 6533: text/rfc822-headers is US-ASCII; the original's UTF-8 header fields (RFC
    6532) went in it as they were, and the DSN went out without SMTPUTF8."""
    from gateway.delivery.dsn import needs_smtputf8

    utf8 = "From: news@example.com\r\nSubject: Résumé de l'été\r\n\r\n".encode()
    global_dsn = dsn(original_headers=utf8)
    assert [p.get_content_type() for p in parse(global_dsn).iter_parts()][2] == \
        "message/global-headers"
    assert "Résumé".encode() in global_dsn and needs_smtputf8(global_dsn)
    plain = dsn()
    assert b"text/rfc822-headers" in plain and not needs_smtputf8(plain)
    assert needs_smtputf8(dsn(mail_from="jörg@example.net"))  # its own To: in UTF-8


def test_a_diagnostic_with_a_lone_surrogate_still_makes_a_dsn():
    # a reply decoded with surrogateescape: the byte is replaced, the DSN is written
    raw = dsn(diagnostic="550 5.1.1 Destinataire inconnu \udce9")
    assert recipient_fields(raw)["Diagnostic-Code"].startswith(
        "smtp; 550 5.1.1 Destinataire inconnu")
