"""Address normalisation: one mailbox, one ledger key and one suppression hash, however it is
written; anything that is not a plain mailbox refused with its reason."""

from __future__ import annotations

import pytest

from gateway.addresses import normalize_address, normalize_domain, suppression_form


@pytest.mark.parametrize("written, key", [
    ("Jane.Doe@EXAMPLE.Fr", "Jane.Doe@example.fr"),      # local part kept as given
    ('"john.doe"@b2c.example', "john.doe@b2c.example"),  # quotes it does not need
    ("jane@faß.de", "jane@xn--fa-hia.de"),               # IDNA 2008 (2003 said fass.de)
    ("jane@XN--FA-HIA.DE", "jane@xn--fa-hia.de"),
    ("jane@ｅｘａｍｐｌｅ.com", "jane@example.com"),      # UTS 46 maps full-width letters
    ("  o'brien+news@example.com\t", "o'brien+news@example.com"),
    ("jösé@example.com", "jösé@example.com"),
    ("jose\u0301@example.com", "jos\u00e9@example.com"),  # decomposed: NFC (RFC 6532 3.1)
])
def test_one_mailbox_has_one_ledger_form(written: str, key: str):
    assert normalize_address(written) == key


def test_an_objection_in_one_unicode_form_holds_for_the_other():
    """An objection recorded for josé@ written composed must stop mail to josé@ written
    decomposed (e + U+0301), and the reverse: they were two suppression forms."""
    composed, decomposed = "jos\u00e9@corp.example", "jose\u0301@corp.example"
    assert suppression_form(normalize_address(decomposed)) == \
        suppression_form(normalize_address(composed))
    assert suppression_form(decomposed) == suppression_form(composed)


def test_case_variants_share_the_suppression_form_only():
    assert normalize_address("Jane@faß.de") != normalize_address("jane@xn--fa-hia.de")
    assert suppression_form(normalize_address("Jane@faß.de")) == suppression_form(
        normalize_address("jane@xn--fa-hia.de"))


@pytest.mark.parametrize("written, reason", [
    ("jane@acme.fr\r\n", "CR, LF or NUL"),   # refused, not stripped
    ("jane\n@acme.fr", "CR, LF or NUL"),
    ("jane@acme.fr\x00", "CR, LF or NUL"),
    ('"jane doe"@acme.fr', "not a plain"),
    ('"a@b"@acme.fr', "invalid local part"),
    ('"a..b"@acme.fr', "invalid local part"),
    ('""@acme.fr', "invalid local part"),
    ('a"b@acme.fr', "invalid local part"),
    (".jane@acme.fr", "invalid local part"),
    ("ja..ne@acme.fr", "invalid local part"),
    ("x" * 65 + "@acme.fr", "longer than 64"),
    ("jane@", "domain"),
    ("jane", "no @"),
    ("jane@a\u200db.com", "internationalised"),      # a zero-width joiner: not silently dropped
    ("ja\u202ene@acme.fr", "control character"),    # a bidi override: RCPT TO refuses it too
    ("ja\u0085ne@acme.fr", "control character"),    # NEL
    ("ja\u2028ne@acme.fr", "control character"),    # a line separator
])
def test_what_is_not_a_plain_mailbox_is_refused_with_its_reason(written: str, reason: str):
    with pytest.raises(ValueError, match=reason):
        normalize_address(written)


def test_domains_are_checked_label_by_label():
    assert normalize_domain("Mail.Example.COM.") == "mail.example.com"
    for bad in ("-x.com", "x", "a_b.com", "x" * 64 + ".com"):
        with pytest.raises(ValueError):
            normalize_domain(bad)
