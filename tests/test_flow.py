"""The From header is parsed by hand, strictly (CVE-2023-27043 is not fixed on 3.11.7)."""

from __future__ import annotations

import pytest

from gateway.flow import from_header_domains


def head(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\nbody\r\n").encode()


@pytest.mark.parametrize("lines, domains", [
    (["From: news@example.com"], ["example.com"]),
    (["From: \"Example, News\" <news@Example.COM>"], ["example.com"]),
    (["From: =?utf-8?q?Caf=C3=A9?= <cafe@example.fr>"], ["example.fr"]),
    (["From: a@one.example, b@two.example"], ["one.example", "two.example"]),
    (["Subject: x", "From: \"Jane\"", " <jane@folded.example>"], ["folded.example"]),
    # a quoted display name that looks like an address does not count (CVE-2023-27043 shape)
    (["From: \"alice@evil.example\" <alice@good.example>"], ["good.example"]),
    (["From: bob@(comment)example.com"], []),
    (["From: <alice@evil.example>@good.example"], []),
    (["From: bob@evil.example <alice@good.example>"], []),
    (["Subject: no from"], []),
    (["From: a@one.example", "From: b@two.example"], []),
    (["From: not an address"], []),
    (["From: Jane (\"the boss\" (really)) <jane@good.example>"], ["good.example"]),
    (["From: \"Jane \\\"J\\\" Doe\" <jane@good.example>"], ["good.example"]),
    # a quote inside a comment means nothing, an escaped parenthesis does not end one: the
    # mailbox here is ceo@victim.example, whatever a regex that strips quotes first would say
    (['From: (") <ceo@victim.example> (") ( \\) <news@good.example> )'], ["victim.example"]),
    (['From: "(" <ceo@victim.example> ")" <news@good.example>'],
     ["victim.example", "good.example"]),  # every mailbox is checked, each must be allowed
    (["From: (unterminated <news@good.example>"], []),
    (["From: news@good.example)"], []),
    (['From: "unterminated <news@good.example>'], []),
    (["From: \\<ceo@victim.example> <news@good.example>"], []),
    # the part before the last "@" must be one local part, not another mailbox
    (["From: ceo@victim.example; x@good.example"], []),
    (["From: <ceo@victim.example;@good.example>"], []),
    (["From: <a@victim.example:@good.example>"], []),
    (["From: <@victim.example:a@good.example>"], []),
    (["From: ceo@victim.example@good.example"], []),
    (["From: <ceo@victim.example", " @good.example>"], []),
    (["From: =?utf-8?b?Y2VvQGJhbmsuZXhhbXBsZQ==?=@good.example"], []),
    (["From: <ceo@[192.0.2.1]>"], []),
    (['From: "a b"@good.example'], ["good.example"]),
    (["From: Jos\u00e9 <jos\u00e9@caf\u00e9.example>"], ["caf\u00e9.example"]),
    (["From: <first.last+tag@mail.good.example.>"], ["mail.good.example"]),
])
def test_from_header_domains(lines: list[str], domains: list[str]):
    assert from_header_domains(head(*lines)) == domains


def test_only_the_header_section_is_read():
    content = b"Subject: x\r\nFrom: a@good.example\r\n\r\nFrom: b@evil.example\r\n"
    assert from_header_domains(content) == ["good.example"]
