"""Header edits on raw bytes: the identity fields every copy must carry."""

from __future__ import annotations

import email
import email.policy
import email.utils

import pytest

from gateway.transform.headers import ensure_identity_fields

OURS = ("<gw.1@gw.example>", "Fri, 27 Nov 2026 10:00:00 +0000")


@pytest.mark.parametrize(("head", "message_id", "date"), [
    (b"Subject: x\r\n", OURS[0], OURS[1]),  # both left out
    (b"Message-ID:\r\nDate: yesterday\r\nSubject: x\r\n", OURS[0], OURS[1]),
    (b"Message-ID: not-an-id\r\nDate: Thu, 26 Nov 2026 09:00:00 +0100\r\n", OURS[0],
     "Thu, 26 Nov 2026 09:00:00 +0100"),
    (b"Message-ID: <a.b@tool.example>\r\nDate: 2026-11-26\r\n", "<a.b@tool.example>",
     OURS[1]),
    (b"Message-ID: <a.b@tool.example>\r\nDate: Thu, 26 Nov 2026 09:00:00 +0100\r\n",
     "<a.b@tool.example>", "Thu, 26 Nov 2026 09:00:00 +0100"),  # kept as they are
    # folded (Python's compat32 generator writes long ids so) or with a comment: valid, kept
    (b"Message-ID: \r\n <a.b@tool.example>\r\nDate: Thu, 26 Nov 2026 09:00:00 +0100\r\n",
     "\r\n <a.b@tool.example>", "Thu, 26 Nov 2026 09:00:00 +0100"),
    (b"Message-ID: <a.b@tool.example> (tool)\r\nDate: Thu, 26 Nov 2026 09:00:00 +0100\r\n",
     "<a.b@tool.example> (tool)", "Thu, 26 Nov 2026 09:00:00 +0100"),
    # what only begins as an id, and dates of no real moment (parsedate_tz took them)
    (b"Message-ID: <a@b> <c@d> junk\r\nDate: Fri, 27 Nov 2026 25:61:00 +0000\r\n",
     OURS[0], OURS[1]),
    (b"Message-ID: <x@y@z>\r\nDate: Tue, 31 Feb 2026 10:00:00 +0000\r\n", OURS[0], OURS[1]),
    (b"Message-ID: <a@b>\r\nDate: Fri, 27 Nov 2026 10:00:00 +9999\r\n", "<a@b>", OURS[1]),
    (b"Message-ID: <a@b>\r\nDate: Fri, 27 Nov 99999 10:00:00 +0000\r\n", "<a@b>", OURS[1]),
    (b"Message-ID: <a@b>\r\nDate: 27 Nov 2026 10:00 -0500\r\n", "<a@b>",
     "27 Nov 2026 10:00 -0500"),  # no day name, no seconds: valid, kept
])
def test_an_identity_field_that_is_missing_or_invalid_is_ours(head: bytes, message_id: str,
                                                              date: str):
    """An empty Message-ID and "Date: yesterday" were kept (only absent ones were added):
    the copies were not RFC 5322, which Gmail refuses."""
    out = ensure_identity_fields(head + b"\r\nbody\r\n", *OURS)
    parsed = email.message_from_bytes(out, policy=email.policy.compat32)
    assert parsed.get_all("Message-ID") == [message_id]
    assert parsed.get_all("Date") == [date]
    assert out.endswith(b"\r\n\r\nbody\r\n")


def test_the_trace_field_is_one_safe_line_whatever_the_client_and_recipient():
    from gateway.transform.headers import trace_field
    when = "Fri, 27 Nov 2026 10:00:00 -0000"
    assert trace_field("2001:db8::1", "gw.example", "ABC123", "jane@example.net", when) == (
        b"Received: from [IPv6:2001:db8::1] ([IPv6:2001:db8::1]) by gw.example with ESMTP"
        b" id ABC123 for <jane@example.net>; Fri, 27 Nov 2026 10:00:00 -0000\r\n")
    # an address beyond ASCII has no place in the 7-bit field: left out, the copy still goes
    assert b" for " not in trace_field("192.0.2.1", "gw.example", "ABC", "josé@example.fr",
                                       when)
    assert trace_field("", "gw.example", "ABC", "a@b.example", when).startswith(
        b"Received: from unknown by gw.example")


@pytest.mark.parametrize("body", [b"\r\nbody\r\n", b""])  # with a body, headers only
def test_fields_the_gateway_adds_do_not_split_the_clients_trace_block(body: bytes):
    """Message-ID, Date, the unsubscribe fields and (for the notice) MIME-Version and
    Content-Type went in front of the tool's Received field: under ours at delivery, the trace
    block was split (RFC 5322 3.6; MIME review)."""
    from gateway.notice_templates import load_templates
    from gateway.transform.footer import add_notice
    from gateway.transform.notice import NoticeFacts, render
    from gateway.transform.pipeline import Personalisation, personalise
    received = b"Received: from tool.example by mta.example; Sun, 22 Nov 2026 11:59:00 +0000\r\n"
    original = received + b"From: a@example.com\r\nSubject: s\r\n" + body
    notice = render(load_templates()["de"], NoticeFacts(
        "ACME", "https://acme.example", "https://acme.example/p", "dpo@acme.example", 3,
        "https://gw.example/u/t", "R6", "2026-01-05"))
    out = personalise(original, Personalisation("https://gw.example/u/t",
                                                "unsubscribe+t@gw.example", *OURS))
    if body:
        out = add_notice(out, notice)
    parsed = email.message_from_bytes(out, policy=email.policy.compat32)
    names = [name.lower() for name in parsed.keys()]
    assert names[:3] == ["received", "from", "subject"], names
    assert {"message-id", "date", "list-unsubscribe", "list-unsubscribe-post"} <= set(names)
    if body:
        assert {"mime-version", "content-type"} <= set(names)
        assert parsed.get_payload(decode=True).decode().startswith("body")


def test_dates_the_gateway_writes_say_utc_not_an_unknown_zone():
    """formatdate's "-0000" means "no information about the local zone" (RFC 5322 3.3) and
    its "GMT" is obsolete syntax (SMTP review): +0000 is UTC."""
    from gateway.transform.headers import utc_date
    assert utc_date(1700000000.0) == "Tue, 14 Nov 2023 22:13:20 +0000"
    assert email.utils.parsedate_to_datetime(utc_date(1700000000.0)).timestamp() == 1700000000


def test_the_trace_field_names_the_clients_ehlo_and_the_protocol_and_nothing_else():
    from gateway.transform.headers import trace_field, trace_protocol
    when = "Sat, 28 Nov 2026 06:00:00 +0000"
    assert trace_field("192.0.2.1", "gw.example", "Q1", "a@b.example", when, "tool.example",
                       trace_protocol(False, True, True)) == (
        b"Received: from tool.example ([192.0.2.1]) by gw.example with ESMTPSA id Q1"
        b" for <a@b.example>; Sat, 28 Nov 2026 06:00:00 +0000\r\n")
    assert trace_protocol(True, False, True) == "UTF8SMTPA"
    for helo, protocol in (("evil\r\nX-Injected: 1", "ESMTP"), ("a b", "ESMTP\r\nX: y"),
                           ("x" * 300, "nonsense"), ("a" * 250 + "!", None)):
        line = trace_field("192.0.2.1", "gw.example", "Q1", "a@b.example", when, helo,
                           protocol)
        assert line.startswith(b"Received: from [192.0.2.1] ([192.0.2.1]) by gw.example with"
                               b" ESMTP id Q1"), line
