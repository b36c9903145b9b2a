"""M1-M3: the message rules, on the structure facts the MIME scan gives."""

from __future__ import annotations

from gateway.model import MessageFacts, Verdict
from gateway.policy.message import decide_message, m1_from_domain
from gateway.transform.mime import message_facts


def test_m1_needs_every_from_domain_allowed():
    allowed = {"example.com"}.__contains__
    assert m1_from_domain(["example.com"], may_send_from=allowed) is None
    for domains in ([], ["evil.example"], ["example.com", "evil.example"]):
        decision = m1_from_domain(domains, may_send_from=allowed)
        assert decision is not None and (decision.verdict, decision.rule) == (
            Verdict.REJECT, "M1")
    decision = m1_from_domain([], "no From header field", may_send_from=allowed)
    assert decision is not None and (decision.rule, decision.reason) == (
        "M1", "no From header field")


def test_m1_says_what_is_wrong_with_the_from_field():
    """An operator review: a message without From, or with two From fields of allowed
    domains, was answered "From header domain not allowed for this account"."""
    from gateway.flow import from_header

    assert from_header(b"From: a@good.example\r\nSubject: x\r\n\r\n") == (
        ["good.example"], None)
    assert from_header(b"Subject: x\r\n\r\nFrom: a@good.example\r\n") == (
        [], "no From header field")
    assert from_header(b"From: a@good.example\r\nFrom: a@good.example\r\n\r\n") == (
        [], "From header field given 2 times (RFC 5322 3.6: once)")
    assert from_header(b"From: (unterminated <a@good.example>\r\n\r\n")[1] == (
        "From header field unreadable: not a list of plain mailboxes with a domain")


def test_m2_signed_or_encrypted_and_malformed_are_quarantined():
    for facts in (MessageFacts(True, True, signed_or_encrypted="multipart/signed"),
                  MessageFacts(True, True, malformed="MIME nesting deeper than 32")):
        decision = decide_message(facts)
        assert decision is not None and (decision.verdict, decision.rule) == (
            Verdict.QUARANTINE, "M2")


def test_m3_no_subject_or_no_text_body_is_quarantined():
    for facts, why in ((MessageFacts(False, True), "subject"),
                       (MessageFacts(True, False), "text body")):
        decision = decide_message(facts)
        assert decision is not None and decision.rule == "M3" and why in decision.reason
    assert decide_message(MessageFacts(True, True)) is None


def _msg(headers: str, body: str = "Hello\r\n") -> bytes:
    return (headers + "\r\n" + body).encode()


def test_message_facts_from_real_structures():
    plain = message_facts(_msg("Subject: hi\r\nContent-Type: text/plain\r\n"))
    assert plain == MessageFacts(True, True)
    no_subject = message_facts(_msg("From: a@example.com\r\n"))
    assert not no_subject.has_subject and no_subject.has_text_body
    blank_subject = message_facts(_msg("Subject:   \r\n"))
    assert not blank_subject.has_subject
    # blank once decoded (RFC 2047): a space, a zero-width space, a BOM and a no-break
    # space were taken for a subject (compliance audit); a visible character is one
    for raw in ("=?utf-8?q?_?=", "=?utf-8?b?4oCL?=", "=?UTF-8?Q?=EF=BB=BF=C2=A0?=",
                "\u200b \u2060"):
        assert not message_facts(_msg(f"Subject: {raw}\r\n")).has_subject, raw
    # an encoded word cut short by the tool, a charset name beyond ASCII: read as written,
    # not raised (it made every try of the message a 451: diff review)
    for raw in ("=?utf-8?q?Caf=C3=A9?=", "=?utf-8?q?_?= x", "=?bogus?q?x?=", "\u200bHi",
                "=?UTF-8?B?Qm9uam91ciDDoCB0b3VzI?=", "=?utf-8\u00e9?q?hi?="):
        assert message_facts(_msg(f"Subject: {raw}\r\n")).has_subject, raw
    only_attachment = message_facts(_msg(
        'Subject: x\r\nContent-Type: multipart/mixed; boundary="b"\r\n',
        "--b\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; filename=a.txt"
        "\r\n\r\nfile\r\n--b\r\nContent-Type: image/png\r\n\r\nPNG\r\n--b--\r\n"))
    assert not only_attachment.has_text_body
    smime = message_facts(_msg(
        "Subject: x\r\nContent-Type: application/pkcs7-mime; smime-type=enveloped-data\r\n",
        "MIAGCSqGSIb3DQEHA6CAMIACAQA=\r\n"))
    assert smime.signed_or_encrypted == "application/pkcs7-mime"
    forwarded = message_facts(_msg(
        'Subject: fwd\r\nContent-Type: multipart/mixed; boundary="o"\r\n',
        "--o\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\ninner text\r\n"
        "--o--\r\n"))
    assert not forwarded.has_text_body  # the forwarded mail is content, not our text body


def test_a_subject_that_cannot_be_decoded_is_shown_as_written():
    from gateway.transform.headers import display_subject

    for raw in ("=?UTF-8?B?Qm9uam91ciDDoCB0b3VzI?=", "=?utf-8\u00e9?q?hi?="):
        assert display_subject(f"Subject: {raw}\r\n\r\nx".encode()) == raw
