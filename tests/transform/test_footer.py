"""The notice in every text part: decoded content = original + notice, once per part,
attachments byte-identical, charsets and transfer encodings kept or upgraded, no injection."""

from __future__ import annotations

import binascii
import email
import email.policy

import pytest

from gateway.notice_templates import load_templates
from gateway.transform.footer import (
    NoticeError,
    add_notice,
    structure_facts,
    undecodable_text,
)
from gateway.transform.notice import NoticeCache, NoticeFacts, choose, render

TEMPLATES = load_templates()
FACTS = NoticeFacts("ACME SAS", "https://acme.example", "https://acme.example/privacy",
                    "dpo@acme.example", 3, "https://gw.example/u/abc", "R6", "2026-01-05")


def notice(language: str = "en", **changes: object):
    return render(choose(TEMPLATES, language, "en"),
                  NoticeFacts(**{**vars(FACTS), **changes}))


def parts(raw: bytes) -> list[email.message.EmailMessage]:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    return [p for p in message.walk() if not p.is_multipart()]


def text_of(part) -> str:
    """The decoded content with plain newlines (the email package keeps CRLF)."""
    return part.get_content().replace("\r\n", "\n")


def test_plain_ascii_stays_7bit_and_gets_the_notice_after_a_separator():
    original = (b"From: a@example.com\r\nSubject: s\r\nContent-Type: text/plain; charset=us-ascii"
                b"\r\n\r\nHello,\r\nbye\r\n")
    out = add_notice(original, notice())
    assert out.startswith(original[:-2])
    [part] = parts(out)
    assert text_of(part).startswith("Hello,\nbye\n\n-- \nWhy you receive this message")
    assert text_of(part).count("Unsubscribe in one click") == 1
    assert b"Content-Transfer-Encoding" not in out  # still 7bit


def test_a_charset_that_cannot_carry_the_notice_becomes_utf8_quoted_printable():
    original = (b"From: a@example.com\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
                b"Content-Type: text/plain; charset=us-ascii\r\n\r\nBonjour\r\n")
    out = add_notice(original, notice("fr"))
    [part] = parts(out)
    assert part.get_content_charset() == "utf-8"
    assert part["Content-Transfer-Encoding"] == "quoted-printable"
    assert "Expéditeur : ACME SAS" in text_of(part) and text_of(part).startswith("Bonjour\n")


def test_a_comment_in_content_type_is_no_part_of_the_charset():
    """RFC 2045 5.1 allows comments: "us-ascii (Plain text)" was read as the charset's name,
    an unknown charset, and the message quarantined under M2."""
    original = (b"From: a@example.com\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
                b"Content-Type: text/plain; charset=us-ascii (Plain text)\r\n\r\nHello\r\n")
    assert structure_facts(original).malformed is None
    [part] = parts(add_notice(original, notice()))
    assert text_of(part).startswith("Hello\n") and "Why you receive" in text_of(part)


def test_a_rewritten_content_type_is_folded_under_998_octets():
    """Many parameters, legally folded: rebuilt with the new charset on one line, the field
    was 1,213 octets (RFC 5322 2.1.1: at most 998), which relays wrap or refuse."""
    params = b"".join(b' x-p%d="%s";\r\n' % (i, b"v" * 70) for i in range(15))
    original = (b"From: a@example.com\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
                b"Content-Type: text/plain; charset=us-ascii;\r\n" + params +
                b" format=fixed\r\n\r\nBonjour\r\n")
    out = add_notice(original, notice("fr"))  # us-ascii cannot carry it: charset changes
    assert max(len(line) for line in out.split(b"\r\n")) <= 998
    [part] = parts(out)
    assert part.get_content_charset() == "utf-8"
    assert part.get_param("x-p14") == "v" * 70 and part.get_param("format") == "fixed"
    assert "Expéditeur : ACME SAS" in text_of(part)


@pytest.mark.parametrize("charset", ["iso-8859-1", "windows-1252"])
def test_a_latin_charset_is_kept_when_it_can_carry_the_notice(charset: str):
    body = "Voilà l'été\r\n".encode(charset)
    original = (b"From: a@example.com\r\nSubject: s\r\nMIME-Version: 1.0\r\nContent-Type: "
                b"text/plain; charset=" + charset.encode() + b"\r\n"
                b"Content-Transfer-Encoding: 8bit\r\n\r\n" + body)
    out = add_notice(original, notice("fr"))
    [part] = parts(out)
    assert part.get_content_charset() == charset and part["Content-Transfer-Encoding"] == "8bit"
    assert text_of(part).startswith("Voilà l'été\n") and "Expéditeur" in text_of(part)


def test_base64_html_and_attachment_in_mixed_alternative():
    import base64

    html = base64.b64encode(b"<html><body><p>Hi</p></body></html>")
    pdf = b"JVBERi0xLjQKJcfsj6IK\r\n"
    original = (b"From: a@example.com\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
                b'Content-Type: multipart/mixed; boundary="m"\r\n\r\n--m\r\n'
                b'Content-Type: multipart/alternative; boundary="a"\r\n\r\n--a\r\n'
                b"Content-Type: text/plain; charset=utf-8\r\n\r\nHi\r\n--a\r\n"
                b"Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64"
                b"\r\n\r\n" + html + b"\r\n--a--\r\n--m\r\nContent-Type: application/pdf\r\n"
                b"Content-Disposition: attachment; filename=a.pdf\r\n"
                b"Content-Transfer-Encoding: base64\r\n\r\n" + pdf + b"--m--\r\n")
    out = add_notice(original, notice())
    plain, html_part, attachment = parts(out)
    assert text_of(plain).startswith("Hi\n\n-- \n")
    html_text = text_of(html_part)
    assert html_text.startswith("<html><body><p>Hi</p><div lang=\"en\"")
    assert html_text.endswith("</div></body></html>") and html_text.count("<div") == 1
    assert html_part["Content-Transfer-Encoding"] == "base64"
    assert attachment.get_content() == base64.b64decode(pdf)
    assert pdf in out  # the attachment's bytes are untouched


def test_html_without_body_gets_the_notice_appended():
    original = (b"From: a@example.com\r\nSubject: s\r\nContent-Type: text/html\r\n\r\n"
                b"<p>Hello</p>\r\n")
    [part] = parts(add_notice(original, notice()))
    assert text_of(part).startswith("<p>Hello</p>\r\n<div") or text_of(part).startswith(
        "<p>Hello</p>\n<div")


def test_format_flowed_is_respected():
    original = (b"From: a@example.com\r\nSubject: s\r\nContent-Type: text/plain; charset=utf-8;"
                b" format=flowed\r\n\r\nA long paragraph that \r\nflows on.\r\n")
    out = add_notice(original, notice())
    body = out.split(b"\r\n\r\n", 1)[1]
    assert body.startswith(b"A long paragraph that \r\nflows on.\r\n\r\n-- \r\n")
    notice_lines = body.split(b"-- \r\n", 1)[1].split(b"\r\n")
    assert all(not line.endswith(b" ") for line in notice_lines)  # no accidental soft breaks


def test_long_lines_stay_under_998_octets():
    original = (b"From: a@example.com\r\nSubject: s\r\nContent-Type: text/plain\r\n\r\n"
                + b"x" * 998 + b"\r\n")
    out = add_notice(original, notice("de"))
    assert all(len(line) <= 998 for line in out.split(b"\r\n"))
    [part] = parts(out)
    assert text_of(part).startswith("x" * 998 + "\n")


def test_ledger_values_cannot_inject_markup_headers_or_terminal_escapes():
    evil = notice(sources=('<script>alert(1)</script>\r\nBcc: x@evil.example\x1b[31m',),
                  controller='"><img src=x onerror=alert(1)>')
    for text in (evil.plain, evil.html):
        assert "\r\nBcc" not in text and "\x1b" not in text and "\nBcc:" not in text
    assert "<script>" not in evil.html and "<img" not in evil.html
    assert "&lt;script&gt;" in evil.html
    original = (b"From: a@example.com\r\nSubject: s\r\nContent-Type: text/html\r\n\r\n"
                b"<body>x</body>")
    out = add_notice(original, evil)
    assert out.count(b"\r\nBcc:") == 0


def test_messages_without_a_text_part_or_with_undecodable_text_are_refused():
    only_image = (b"From: a@example.com\r\nSubject: s\r\nContent-Type: image/png\r\n\r\nPNG")
    with pytest.raises(NoticeError, match="no text"):
        add_notice(only_image, notice())
    bad_base64 = (b"Subject: s\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64"
                  b"\r\n\r\n!!!not base64!!!\r\n")
    bad_charset = b"Subject: s\r\nContent-Type: text/plain; charset=x-unknown\r\n\r\nhi\r\n"
    bad_bytes = b"Subject: s\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\xff\xfe\r\n"
    for content in (bad_base64, bad_charset, bad_bytes):
        assert undecodable_text(content) is not None
        assert structure_facts(content).malformed == undecodable_text(content)  # one scan
        with pytest.raises(NoticeError):
            add_notice(content, notice())


def test_every_language_renders_and_falls_back():
    assert sorted(TEMPLATES) == ["de", "en", "es", "fr", "it"]
    assert notice("pt").language == "en"  # no Portuguese template: the controller default
    assert render(choose(TEMPLATES, "fr-BE", "en"), FACTS).language == "fr"
    # the controller's default written as a language tag falls back on its primary subtag
    assert render(choose(TEMPLATES, "pt", "fr-FR"), FACTS).language == "fr"
    full = notice("it", full=True, sources=("Fiera 2026",), rule="R8")
    assert "Fiera 2026" in full.plain and "articolo 14" in full.plain
    assert "attività professionale" in full.plain


@pytest.mark.parametrize("language", sorted(TEMPLATES))
def test_the_notice_cache_renders_exactly_what_render_does(language: str):
    cache = NoticeCache()
    template = choose(TEMPLATES, language, "en")
    urls = ["https://gw.example/u/" + "a" * 40, "https://gw.example/u/" + "b" * 40,
            "http://127.0.0.1:8025/u/" + "c" * 40, "https://gw.example/u/" + "d" * 70,
            "https://gw.example/u/x&y", "javascript:alert(1)", "https://gw.example/u/\r\nX"]
    for url in urls * 2:  # the second round comes from the cache
        for rule, full, sources in (("R6", False, ()), ("R8", True, ("Annuaire",))):
            facts = NoticeFacts(**{**vars(FACTS), "unsubscribe_url": url, "rule": rule,
                                   "full": full, "sources": sources})
            assert cache.render(template, facts) == render(template, facts), (url, rule)
    assert url not in cache.render(template, FACTS).plain  # no stale URL is ever served


def test_a_source_name_of_private_use_characters_never_shows_the_unsubscribe_link():
    """The cache renders with U+E000 standing in for the link: a source name made of them
    (imported as is) showed the person's own unsubscribe link as where the address came
    from, the link twice in the notice."""
    url = "https://gw.example/u/" + "t" * 40
    facts = NoticeFacts(**{**vars(FACTS), "unsubscribe_url": url, "rule": "R8", "full": True,
                           "sources": ("https://" + "\ue000" * 61, "Fiera \uf8ff2026")})
    template = choose(TEMPLATES, "it", "en")
    for notice in (NoticeCache().render(template, facts), render(template, facts)):
        assert notice.plain.count(url) == 1 and notice.html.count(url) == 2  # href and text
        assert "\ue000" not in notice.plain + notice.html
        assert "Fiera 2026" in notice.plain


HEAD = b"From: a@example.com\r\nTo: jane@example.net\r\nSubject: hi\r\nMIME-Version: 1.0\r\n"


def test_quoted_printable_soft_breaks_never_start_a_line_with_a_boundary():
    """Re-encoded as QP (a French notice in a us-ascii part), "--sep--" from the middle of a
    line landed at the start of one: the multipart ended there, the notice was epilogue."""
    original = (HEAD + b'Content-Type: multipart/alternative; boundary="sep"\r\n\r\n'
                b"--sep\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nHello\r\n"
                + b"a" * 75 + b"--sep--\r\n--sep--\r\n")
    out = add_notice(original, notice("fr"))
    message = email.message_from_bytes(out, policy=email.policy.default)
    [part] = parts(out)
    assert "Expéditeur : ACME SAS" in text_of(part)
    assert text_of(part).startswith("Hello\n" + "a" * 75 + "--sep--\n")
    assert not (message.epilogue or "").strip()
    assert part["Content-Transfer-Encoding"] == "base64"


def test_a_notice_line_that_starts_with_a_boundary_never_ends_the_part():
    """A part kept 7bit: no line of the notice was checked against the boundaries, and a
    controller or source name wrapped so that "--b1" began a line cut the notice in two: its
    second half (rights, unsubscribe link) became a part of its own, read as header fields."""
    original = (HEAD + b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
                b"--b1\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nHello\r\n"
                b"--b1\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64"
                b"\r\n\r\nJVBERi0=\r\n--b1--\r\n")
    for name in ("x" * 75 + " --b1 " + "y" * 75, "x" * 75 + " --b1-- " + "y" * 30):
        text = notice("en", sources=(name,), full=True)
        assert "\n--b1" in "\n" + text.plain  # the notice does start a line with it
        out = add_notice(original, text)
        message = email.message_from_bytes(out, policy=email.policy.default)
        assert not [d for p in message.walk() for d in p.defects]
        plain, pdf = parts(out)
        assert "gw.example/u/abc" in text_of(plain) and text_of(plain).startswith("Hello")
        assert pdf.get_content_type() == "application/pdf"


def test_a_boundary_that_ends_with_a_space_is_malformed():
    """boundary=" ": the notice's "-- " separator line is a delimiter line to some readers
    (trailing blanks are padding), the rest of the notice a part of its own."""
    original = (HEAD + b'Content-Type: multipart/mixed; boundary=" "\r\n\r\n'
                b"-- \r\nContent-Type: text/plain\r\n\r\nbody\r\n-- --\r\n")
    assert "ends with a space" in (structure_facts(original).malformed or "")


def test_a_line_break_that_only_decoding_shows_does_not_fail_the_copy():
    """UTF-7's "+AAo-" is a LF: the English copy (its notice ASCII, the part kept 7bit)
    carried a bare LF and failed at delivery ("cannot make the copy compliant"), after the
    250; the French one went (its QP wrote the LF as a line break)."""
    original = HEAD + b"Content-Type: text/plain; charset=utf-7\r\n\r\nHello+AAo-world\r\n"
    assert structure_facts(original).malformed is None
    for language in ("en", "fr"):
        out = add_notice(original, notice(language))
        [part] = parts(out)
        assert text_of(part).startswith("Hello\nworld\n")
        assert "gw.example/u/abc" in text_of(part)


def test_text_mostly_beyond_ascii_is_not_tripled_by_quoted_printable():
    """A Cyrillic text part without a transfer encoding, rewritten as QP: 8.4 MB became
    24.5 MB, over a relay's size limit after the gateway's 250. Base64 when shorter; QP
    when it is (a Latin text with a few accents stays readable QP)."""
    cyrillic = ("Привет, это тестовое письмо для проверки размера. " * 400).encode()
    original = (HEAD + b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + cyrillic
                + b"\r\n")
    out = add_notice(original, notice("fr"))
    [part] = parts(out)
    assert part["Content-Transfer-Encoding"] == "base64"
    assert len(out) < 1.5 * len(original)
    assert text_of(part).startswith(cyrillic.decode()[:40])
    latin = HEAD + b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + \
        b"Bonjour, voici l'offre de la semaine. " * 50 + "Café.\r\n".encode()
    [part] = parts(add_notice(latin, notice("fr")))
    assert part["Content-Transfer-Encoding"] == "quoted-printable"


def test_a_parameter_given_twice_is_malformed():
    """Python's email reads the first boundary, the scan read the last: the notice went into
    an attachment. Readers disagree, so the message is quarantined (M2)."""
    for ctype in (b'multipart/alternative; boundary="a"; boundary="b"',
                  b"text/plain; charset=us-ascii; charset=utf-8"):
        original = HEAD + b"Content-Type: " + ctype + b"\r\n\r\n--a\r\n\r\nx\r\n--a--\r\n"
        assert "given twice" in (structure_facts(original).malformed or "")
        with pytest.raises(NoticeError):
            add_notice(original, notice())


@pytest.mark.parametrize("charset", ["utf-16", "utf-7", "idna"])
def test_a_charset_not_ascii_compatible_becomes_utf8(charset: str):
    """UTF-16 in QP: its 0x0A bytes became line breaks and garbled the whole part; IDNA and
    UTF-7 bodies could not be encoded back (the copy was deferred for days)."""
    import binascii

    text = "Bonjour à tous\r\nLigne 2\r\n" if charset != "idna" else "hello\r\n"
    encoded = binascii.b2a_qp(text.encode(charset), istext=False)
    original = (HEAD + f"Content-Type: text/plain; charset={charset}\r\n".encode()
                + b"Content-Transfer-Encoding: quoted-printable\r\n\r\n" + encoded + b"\r\n")
    assert structure_facts(original).malformed is None
    [part] = parts(add_notice(original, notice("fr")))
    assert part.get_content_charset() == "utf-8"
    assert text_of(part).startswith(text.replace("\r\n", "\n").rstrip("\n"))
    assert "Expéditeur : ACME SAS" in text_of(part)


def test_a_header_field_name_beyond_printable_ascii_is_malformed():
    """dkimpy refuses it: accepted at DATA, the copy was deferred on every attempt."""
    for name in (b"X-T\xc3\xa9st", b"X-T\x7fst"):
        original = HEAD + name + b": 1\r\n\r\nHello\r\n"
        assert "printable ASCII" in (structure_facts(original).malformed or "")


def test_a_token_parameter_is_not_quoted_when_the_content_type_is_rewritten():
    """A legal 998-octet line of token characters grew by two quotes past 998: the copy
    bounced (554) instead of leaving; RFC 2231 values (name*=utf-8''...) must stay bare."""
    original = (HEAD + b"Content-Type: text/plain; charset=us-ascii;\r\n x-id="
                + b"a+" * 490 + b";\r\n name*=utf-8''caf%C3%A9.txt\r\n\r\nBonjour\r\n")
    out = add_notice(original, notice("fr"))
    assert max(len(line) for line in out.split(b"\r\n")) <= 998
    assert b" x-id=" + b"a+" * 490 in out and b"name*=utf-8''caf%C3%A9.txt" in out


def test_the_html_notice_goes_before_the_body_tag_not_one_in_a_comment_or_script():
    from html.parser import HTMLParser

    class Visible(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.text, self.skip = [], 0

        def handle_starttag(self, tag, attrs):
            self.skip += tag in ("script", "style")

        def handle_endtag(self, tag):
            self.skip -= tag in ("script", "style")

        def handle_data(self, data):
            if not self.skip:
                self.text.append(data)

    for tail in ("<!-- template v2: keep </body> last -->",
                 "<script>var s = '</body>';</script>"):
        original = (HEAD + b"Content-Type: text/html; charset=utf-8\r\n\r\n"
                    b"<html><body><p>Offer</p></body></html>\r\n" + tail.encode() + b"\r\n")
        [part] = parts(add_notice(original, notice()))
        html = part.get_content()
        assert html.index("Why you receive") < html.index("</body></html>")
        reader = Visible()
        reader.feed(html)
        assert "Why you receive" in "".join(reader.text)


@pytest.mark.parametrize("html", [
    '<html><body><p>Hi</p><a href="https://x.example/" title="</body>">link</a>',
    '<html><body><p>Hi</p></body></html><img src="https://t.example/p.gif" alt="</body>">',
    '<html><body><p>Hi</p><img alt="a > b </body>"></html>'])  # a ">" in the value too
def test_the_html_notice_never_goes_inside_an_attribute(html: str):
    """The last "</body>" was an attribute's value: the notice's <div> became the title,
    its text part of the sender's link."""
    original = HEAD + b"Content-Type: text/html; charset=utf-8\r\n\r\n" + html.encode()
    [part] = parts(add_notice(original, notice()))
    out = part.get_content()
    assert 'title="</body>">link</a>' in out or 'alt="</body>">' in out \
        or 'alt="a > b </body>">' in out  # left as it was
    assert '="<div' not in out and "Why you receive" in out


@pytest.mark.parametrize("html", [
    "<html><head><title>Use <plaintext> tags</title></head><body><p>x</p></body></html>",
    '<html><body><a title="<plaintext>">x</a></body></html>',
    "<html><body><textarea>keep </body> here</textarea><p>x</p></body></html>"])
def test_plaintext_or_body_written_as_text_is_no_markup(html: str):
    """"<plaintext>" in a title or an attribute, "</body>" in a textarea, are text: the
    notice went into the title, the attribute, or the textarea, where nobody sees it."""
    original = HEAD + b"Content-Type: text/html; charset=utf-8\r\n\r\n" + html.encode()
    [part] = parts(add_notice(original, notice()))
    out = part.get_content()
    notice_at = out.index("Why you receive")
    assert notice_at > out.index("<p>x</p>") if "<p>x</p>" in out else notice_at > 0
    assert out.index("</body></html>") > notice_at


def test_a_less_than_sign_inside_an_earlier_attribute_is_no_tag():
    """title="x<y": a "<" in a value is text; the real </body> after it takes the notice."""
    original = (HEAD + b"Content-Type: text/html; charset=utf-8\r\n\r\n"
                b'<html><body><a title="x<y">t</a></body></html>\r\n')
    [part] = parts(add_notice(original, notice()))
    out = part.get_content()
    assert out.index('<a title="x<y">t</a>') < out.index("Why you receive") \
        < out.index("</body></html>")


def test_the_html_notice_goes_before_plaintext_which_nothing_closes():
    """<plaintext> runs to the end of the document: a notice after it (and a </plaintext>
    added) shows as raw markup, its links dead."""
    original = (HEAD + b"Content-Type: text/html; charset=utf-8\r\n\r\n"
                b"<html><body><p>x</p><plaintext>raw </body>\r\n")
    [part] = parts(add_notice(original, notice()))
    out = part.get_content()
    assert out.index("Why you receive") < out.index("<plaintext>")
    assert "</plaintext>" not in out


def test_a_part_whose_fields_run_into_the_delimiter_is_malformed_and_headers_only_is_not():
    """No blank line between a part's fields and the next delimiter: sent with two
    Content-Type fields. A whole message of header fields only is legal: the notice becomes
    its body, after a blank line."""
    broken = (HEAD + b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
              b"--b\r\nContent-Type: text/plain\r\n--b--\r\n")
    assert "blank line" in (structure_facts(broken).malformed or "")
    empty = (HEAD + b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
             b"--b\r\n\r\nHello\r\n--b\r\n--b--\r\n")  # an empty part stays legal
    assert structure_facts(empty).malformed is None
    headers_only = HEAD + b"Content-Type: text/plain; charset=us-ascii\r\n"
    out = add_notice(headers_only, notice())
    message = email.message_from_bytes(out, policy=email.policy.default)
    assert not message.defects and message["Subject"] == "hi"
    assert "Why you receive" in message.get_content()


@pytest.mark.parametrize("language", ["en", "fr", "de", "es", "it"])
def test_the_full_notice_states_the_legal_basis_used_and_how_to_withdraw_or_object(
        language: str):
    """GDPR 14(1)(c), 14(2)(b), (d): it said "our legitimate interest or your consent as
    stated above", whatever allowed the mail, and nothing above named either."""
    basis = {"en": ("your consent", "legitimate interest"),
             "fr": ("votre consentement", "intérêt légitime"),
             "de": ("Ihre Einwilligung", "berechtigtes Interesse"),
             "es": ("su consentimiento", "interés legítimo"),
             "it": ("il tuo consenso", "legittimo interesse")}[language]
    consent = notice(language, rule="R6", full=True).plain.replace("\n", " ")
    interest = notice(language, rule="R8", consent_date=None, full=True).plain.replace("\n", " ")
    assert basis[0] in consent and "6(1)(a)" in consent.replace("6.1.a", "6(1)(a)").replace(
        "Art. 6 Abs. 1 lit. a", "6(1)(a)").replace("articolo 6, paragrafo 1, lettera a)",
                                                   "6(1)(a)")
    assert basis[1] not in consent and basis[0] not in interest and basis[1] in interest
    later = notice(language, rule="R8", consent_date=None).plain
    assert basis[1] not in later.replace("\n", " ")  # the short footer of later messages


def test_one_year_is_said_in_words_and_invisible_reordering_characters_are_dropped():
    assert "at most one year after" in notice("en", retention_years=1).plain.replace("\n", " ")
    assert "au plus un an" in notice("fr", retention_years=1).plain.replace("\n", " ")
    assert "at most 3 years" in notice("en").plain.replace("\n", " ")
    tricky = notice("en", rule="R8", sources=("Co\u202egnp.exe", "a\u200bb\u2066c"))
    assert "\u202e" not in tricky.plain + tricky.html and "\u200b" not in tricky.plain
    assert "Co gnp.exe" in tricky.plain


def test_a_language_tag_finds_its_template_whole_or_by_its_primary_subtag():
    import dataclasses

    from gateway.transform.notice import find_template

    pt_br = dataclasses.replace(TEMPLATES["en"], language="pt-br")
    templates = {**TEMPLATES, "pt-br": pt_br}
    assert choose(templates, "pt-BR", "en") is pt_br
    assert choose(templates, None, "pt-BR") is pt_br  # the default language, whole tag
    assert choose(templates, "FR-ca", "en").language == "fr"
    assert find_template(TEMPLATES, "fr-FR") is TEMPLATES["fr"]
    assert find_template(TEMPLATES, "pt") is None


def test_a_carriage_return_inside_quoted_printable_text_stays_encoded():
    """Text written CR CR LF arrives as `=0D` before each line end. Re-encoded with the
    notice, b2a_qp wrote the CR raw and every line end became CR CR LF: the next hop rewrote
    the bare CRs after DKIM had signed (body hash failed) and the text was double-spaced."""
    original = (HEAD + b"Content-Type: text/plain; charset=utf-8\r\n"
                b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
                b"Hello Jane,=0D\r\nSecond line.=0D\r\nA lone=0Dreturn\r\n")
    out = add_notice(original, notice("fr"))
    assert b"\r" not in out.replace(b"\r\n", b"")  # no bare CR anywhere in the copy
    assert b"\r\r" not in out
    [part] = parts(out)
    assert text_of(part).startswith("Hello Jane,\r\nSecond line.\r\nA lone\rreturn\n")
    assert "Expéditeur : ACME SAS" in text_of(part)


@pytest.mark.parametrize("fields", [
    b'Content-Type: text/plain\r\nContent-Type: multipart/mixed; boundary="b"\r\n',
    b"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n"
    b"Content-Transfer-Encoding: 7bit\r\n",
    b"Content-Type: text/plain\r\nContent-Disposition: inline\r\n"
    b"Content-Disposition: attachment\r\n",
])
def test_a_content_field_given_twice_is_malformed(fields: bytes):
    """Python's email reads the first Content-Type, nodemailer and Delta Chat the last: the
    notice went after the close delimiter, where a last-field reader never shows it."""
    original = HEAD + fields + b"\r\n--b\r\n\r\nSGVsbG8=\r\n--b--\r\n"
    assert "given twice" in (structure_facts(original).malformed or "")
    with pytest.raises(NoticeError):
        add_notice(original, notice())


@pytest.mark.parametrize("extra, name", [
    (b"Subject: another\r\n", "subject"), (b"To: john@example.org\r\n", "to"),
    (b"Date: Fri, 27 Nov 2026 10:00:00 +0000\r\nDate: Fri, 27 Nov 2026 11:00:00 +0000\r\n",
     "date"),
    (b"Message-ID: <a@example.com>\r\nmessage-id: <b@example.com>\r\n", "message-id"),
    (b"Cc: a@example.org\r\nCC: b@example.org\r\n", "cc"),
    (b"Subject: \r\n", "subject"),  # M3 read the first, the reader may see the other
])
def test_a_field_the_message_may_have_once_given_twice_is_malformed(extra: bytes, name: str):
    """Relayed and signed as they came: receivers refuse such copies after our 250 (Gmail:
    duplicate headers), and the records read one Subject while the reader saw another."""
    original = HEAD + extra + b"Content-Type: text/plain\r\n\r\nHello\r\n"
    assert structure_facts(original).malformed == (
        f"the {name} field is given twice (RFC 5322 3.6: once at most)")
    # the fields that repeat by design stay welcome
    fine = HEAD + (b"Received: from a by b; Fri, 27 Nov 2026 10:00:00 +0000\r\n" * 2
                   + b"Comments: one\r\nComments: two\r\nKeywords: a\r\nKeywords: b\r\n"
                   + b"Content-Type: text/plain\r\n\r\nHello\r\n")
    assert structure_facts(fine).malformed is None


@pytest.mark.parametrize("named", [
    b'Content-Type: text/plain; name="data.csv"\r\n',
    b'Content-Type: text/plain\r\nContent-Disposition: inline; filename="data.csv"\r\n',
    b"Content-Type: text/plain\r\nContent-Disposition: inline; filename*=utf-8''d%C3%A9.csv\r\n",
])
def test_a_named_text_file_is_an_attachment_and_left_byte_identical(named: bytes):
    """A CSV sent with a file name but no `attachment` disposition is listed as a file by
    mail clients: the notice went inside the file."""
    csv_part = named + b"\r\na,b,c\r\n1,2,3"
    original = (HEAD + b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
                b"--b\r\nContent-Type: text/plain\r\n\r\nHello\r\n--b\r\n" + csv_part
                + b"\r\n--b--\r\n")
    out = add_notice(original, notice())
    assert csv_part in out
    body, csv = parts(out)
    assert "Why you receive this message" in text_of(body)
    assert text_of(csv) == "a,b,c\n1,2,3"


def test_an_amp_or_watch_alternative_that_cannot_carry_the_notice_is_left_out():
    """Gmail shows the AMP alternative instead of the HTML one: it went out with no notice
    and no unsubscribe link. Such alternatives are removed, and so is any other text one
    (text/enriched, which Apple Mail shows, and markdown went out bare: compliance audit);
    calendar parts are not."""
    original = (HEAD + b'Content-Type: multipart/alternative; boundary="alt"\r\n\r\n'
                b"--alt\r\nContent-Type: text/plain\r\n\r\nHello\r\n"
                b"--alt\r\nContent-Type: text/x-amp-html\r\n\r\n<html amp4email>Hi</html>\r\n"
                b"--alt\r\nContent-Type: text/watch-html\r\n\r\n<b>Hi</b>\r\n"
                b"--alt\r\nContent-Type: text/markdown\r\n\r\n**Hi markdown**\r\n"
                b"--alt\r\nContent-Type: text/calendar; method=REQUEST\r\n\r\nBEGIN:VCALENDAR\r\n"
                b"--alt\r\nContent-Type: text/html\r\n\r\n<p>Hello</p>\r\n"
                b"--alt\r\nContent-Type: TEXT/Enriched\r\n\r\n<bold>Hi enriched</bold>\r\n"
                b"--alt--\r\n")
    out = add_notice(original, notice())
    assert b"amp4email" not in out and b"watch-html" not in out
    assert b"Hi markdown" not in out and b"Hi enriched" not in out
    plain, calendar, html = parts(out)
    assert [p.get_content_type() for p in (plain, calendar, html)] == [
        "text/plain", "text/calendar", "text/html"]
    assert "Why you receive this message" in text_of(plain)
    assert "Unsubscribe" in text_of(html)
    assert text_of(calendar) == "BEGIN:VCALENDAR"


def test_an_alternative_of_amp_and_watch_parts_only_is_kept_whole():
    """Both alternatives cut, "--A--" was left alone: a multipart with no part (RFC 2046
    needs one), a defect to every reader. The plain part beside it takes the notice."""
    original = (HEAD + b'Content-Type: multipart/mixed; boundary="M"\r\n\r\n'
                b"--M\r\nContent-Type: text/plain\r\n\r\nHello\r\n"
                b'--M\r\nContent-Type: multipart/alternative; boundary="A"\r\n\r\n'
                b"--A\r\nContent-Type: text/x-amp-html\r\n\r\n<html amp4email>Hi</html>\r\n"
                b"--A\r\nContent-Type: text/watch-html\r\n\r\n<b>Hi</b>\r\n--A--\r\n"
                b"--M--\r\n")
    out = add_notice(original, notice())
    message = email.message_from_bytes(out, policy=email.policy.default)
    assert not [d for p in message.walk() for d in p.defects]
    assert "Why you receive this message" in text_of(parts(out)[0])


@pytest.mark.parametrize("tail", [b"", b"\r\n", b"--M--\r\n", b"--M", b"--NC\r\n--M "])
def test_a_multipart_without_its_close_delimiter_gets_one(tail: bytes):
    """Taken as readers take it (the last part runs to the end), and passed on as it was:
    every copy carried CloseBoundaryNotFoundDefect."""
    inner = (b'--M\r\nContent-Type: multipart/alternative; boundary="NC"\r\n\r\n'
             b"--NC\r\nContent-Type: text/plain\r\n\r\nHello\r\n"
             b"--NC\r\nContent-Type: text/html\r\n\r\n<p>Hello</p>")
    original = (HEAD + b'Content-Type: multipart/mixed; boundary="M"\r\n\r\n' + inner
                + (b"\r\n" + tail if tail.startswith(b"--") else tail))
    out = add_notice(original, notice())
    message = email.message_from_bytes(out, policy=email.policy.default)
    assert not [d for p in message.walk() for d in p.defects], out
    plain, html = parts(out)
    assert "Why you receive" in text_of(plain) and "Why you receive" in text_of(html)


def test_an_html_part_keeps_its_charset_and_takes_the_notice_as_character_references():
    """An HTML part in us-ascii or iso-8859-2 became UTF-8 for a French notice while its
    <meta charset> still said the old charset: a client that believes the meta showed the
    notice (and the text) garbled."""
    import html

    original = (HEAD + b"Content-Type: text/html; charset=iso-8859-2\r\n"
                b"Content-Transfer-Encoding: 8bit\r\n\r\n"
                b'<html><head><meta http-equiv="Content-Type" content="text/html; '
                b'charset=iso-8859-2"></head><body><p>Dzi\xeakuj\xea</p></body></html>\r\n')
    out = add_notice(original, notice("fr"))
    [part] = parts(out)
    assert part.get_content_charset() == "iso-8859-2"
    content = part.get_content()
    assert content.startswith("<html><head><meta") and "Dziękuję" in content
    assert "&#" in content  # what iso-8859-2 lacks (à, è) as character references
    assert "Expéditeur" in html.unescape(content)


def test_a_text_part_whose_content_type_could_not_be_rewritten_is_malformed_at_data():
    """A parameter over 998 octets passed at DATA, and the copy failed at delivery (a DSN
    after the 250) once a French notice needed UTF-8: it is M2 at DATA now."""
    original = (HEAD + b"Content-Type: text/plain; charset=us-ascii;\r\n x-tag=\""
                + b"x" * 1200 + b"\"\r\n\r\nHello\r\n")
    assert "longer than a header line" in (structure_facts(original).malformed or "")
    with pytest.raises(NoticeError):
        add_notice(original, notice("fr"))
    # at the edge: what passes at DATA is rewritten at delivery, what cannot is caught
    for length in range(985, 1000):
        edge = (HEAD + b"Content-Type: text/plain; x-long=" + b"a" * length
                + b"; charset=us-ascii\r\n\r\nHello\r\n")
        if structure_facts(edge).malformed is None:
            add_notice(edge, notice("fr"))
        else:
            with pytest.raises(NoticeError):
                add_notice(edge, notice("fr"))


def test_a_line_break_in_a_template_is_a_space_in_the_html_notice():
    """An operator's template written as a TOML multi-line string put a bare LF into the
    HTML notice: with the bare-line-end guard every 8-bit HTML copy failed at delivery, and
    before it the copy went out with a bare LF (DKIM broken at the next hop)."""
    import dataclasses

    french = choose(TEMPLATES, "fr", "en")
    texts = {key: text.replace(" ", "\n", 1) for key, text in french.texts.items()}
    two_lines = render(dataclasses.replace(french, texts=texts), FACTS)
    assert "\n" not in two_lines.html and "\r" not in two_lines.html
    assert "\r" not in two_lines.plain
    original = (HEAD + b"Content-Type: text/html; charset=utf-8\r\n"
                b"Content-Transfer-Encoding: 8bit\r\n\r\n<p>Caf\xc3\xa9</p>\r\n")
    out = add_notice(original, two_lines)  # raised NoticeError (a bare LF)
    [part] = parts(out)
    assert "un clic" in part.get_content()


def test_a_message_whose_only_text_is_a_named_inline_part_takes_the_notice_there():
    """Named text parts are files when the message has other text; a message whose only
    text part is named (a tool rendering its body as `body.txt`, inline) had no text body
    left (M3 quarantined it): that part is its body."""
    original = (HEAD + b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
                b'--b\r\nContent-Type: text/plain; name="body.txt"\r\n'
                b"Content-Disposition: inline\r\n\r\nHello Jane\r\n"
                b"--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment\r\n"
                b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n--b--\r\n")
    assert structure_facts(original).has_text_body
    body, _pdf = parts(add_notice(original, notice()))
    assert text_of(body).startswith("Hello Jane\n\n-- \nWhy you receive this message")


def test_a_data_file_is_never_the_body_and_an_alternative_always_is():
    """A CSV sent inline, the message's only text, got the notice inside the file; a named
    plain alternative next to an unnamed HTML one got none (a plain-text reader saw no
    notice)."""
    only_csv = (HEAD + b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
                b'--b\r\nContent-Type: text/plain; name="export.csv"\r\n'
                b'Content-Disposition: inline; filename="export.csv"\r\n\r\nemail,amount\r\n'
                b"--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment\r\n"
                b"\r\nJVBERi0=\r\n--b--\r\n")
    assert not structure_facts(only_csv).has_text_body  # M3: held, never the file changed
    with pytest.raises(NoticeError):
        add_notice(only_csv, notice())
    named_plain = (HEAD + b'Content-Type: multipart/alternative; boundary="a"\r\n\r\n'
                   b'--a\r\nContent-Type: text/plain; name="body.txt"\r\n\r\nHello\r\n'
                   b"--a\r\nContent-Type: text/html\r\n\r\n<p>Hello</p>\r\n--a--\r\n")
    plain, html_part = parts(add_notice(named_plain, notice()))
    assert "Why you receive this message" in text_of(plain)
    assert "Unsubscribe" in text_of(html_part)


@pytest.mark.parametrize("body, closers", [
    ('<p>Our offer</p><div style="display:none"><img src="x.gif">', "</div>"),
    ("<p>Our offer</p><template><p>x", "</p></template>"),
    ("<div><p>Our offer<!-- left open", "--></p></div>"),
    ("<table><tr><td>Our offer", "</td></tr></table>"),
    ("<p>Our offer</p><!--[if mso]><table><tr><td><![endif]-->", ""),
    ('<p>Our offer</p><script>var s = "<div>";</script>', ""),
    ('<p>Our offer</p><!--><div style="display:none"/>', "</div>"),  # "/>" closes no div
    ('<p>Our offer</p><!-- x --!><SVG><path d="M0"/></SVG>', ""),
])
def test_the_html_notice_goes_after_the_elements_the_sender_left_open(body, closers):
    """Inside an unclosed `<div style="display:none">` (or a <template>, or a comment) the
    notice and its unsubscribe link were hidden from the reader: the elements left open are
    closed first (comments, conditional comments and scripts are not elements)."""
    original = (HEAD + b"Content-Type: text/html; charset=utf-8\r\n\r\n<html><body>"
                + body.encode() + b"</body></html>\r\n")
    [part] = parts(add_notice(original, notice()))
    html_text = part.get_content()
    if "<!-- left open" in body:  # "</body>" is comment text there: the notice goes last
        assert f"</body></html>\r\n{closers}<div lang=\"en\"" in html_text
    else:
        assert f"{body}{closers}<div lang=\"en\"" in html_text
        assert html_text.rstrip().endswith("</div></body></html>")


def test_html_without_closing_brackets_costs_linear_time():
    """Each "<a" with no ">" after it made the tag pattern scan to the end: 40 KB of them
    held the event loop (every SMTP session) 8.5 s."""
    import time

    from gateway.transform.footer import _closers

    for text in ("<a" * 100_000, "x<a " * 50_000, "<a " * 66_000 + ">"):
        _closers.cache_clear()
        started = time.perf_counter()
        _closers(text)
        assert time.perf_counter() - started < 0.5, text[:8]


def test_a_file_name_given_twice_is_malformed_not_an_error():
    """Reading parts' file names raised on `filename="a.csv"; filename="b.txt"` out of the
    structure check: the message got no decision at DATA. Readers disagree which name
    counts (a data file or a body): M2."""
    original = (HEAD + b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
                b"--b\r\nContent-Type: text/plain\r\n\r\nHello\r\n--b\r\n"
                b'Content-Type: text/plain\r\nContent-Disposition: inline; filename="a.csv"; '
                b'filename="b.txt"\r\n\r\nx\r\n--b--\r\n')
    assert "given twice" in (structure_facts(original).malformed or "")
    with pytest.raises(NoticeError):
        add_notice(original, notice())


def test_an_html_body_of_frames_is_malformed_but_a_frameset_in_a_comment_is_not():
    """Readers drop what follows a <frameset> (no body): the notice went nowhere (compliance
    audit). Held under M2 at DATA; the word in a comment or an attribute is no element."""
    from gateway.transform.footer import structure_facts

    def facts(markup: bytes):
        return structure_facts(HEAD + b"Content-Type: text/html\r\n\r\n" + markup + b"\r\n")
    assert "frameset" in (facts(b"<html><FRAMESET rows='*'><frame></frameset></html>")
                          .malformed or "")
    for fine in (b"<html><body><!-- <frameset> --><p>x</p></body></html>",
                 b'<html><body><img alt="<frameset>"><p>x</p></body></html>'):
        assert facts(fine).malformed is None, fine


def _operator_template(tmp_path, language: str, key: str, text: str) -> str:
    """The bundled template of `language` with `key` set to `text`, in a notices_dir."""
    from pathlib import Path

    import gateway
    bundled = (Path(gateway.__file__).parent / "notices" / f"{language}.toml").read_text()
    lines = [f"{key} = {text!r}" if line.startswith(f"{key} =") else line
             for line in bundled.splitlines()]
    assert any(line.startswith(f"{key} = ") for line in lines)
    (tmp_path / f"{language}.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(tmp_path)


@pytest.mark.parametrize(("key", "text", "named"), [
    ("unsubscribe", "To unsubscribe, reply STOP.", "{unsubscribe_url}"),
    ("privacy", "Ask us for our privacy notice.", "{privacy_url}"),
    ("controller", "Sender: {controller}.", "{controller_address}"),
    ("controller", "Sender: {controller_address}.", "{controller}"),
    ("source", "We bought your address.", "{sources}"),
    ("retention", "We keep your details for a while.", "{retention_years}"),
    ("why_R6", "You agreed to receive our messages.", "{consent_date}"),
])
def test_an_operator_template_that_leaves_out_what_every_notice_says_is_refused(
        tmp_path, key, text, named):
    """COMPLIANCE 4.2: a notices_dir template whose `unsubscribe` said "reply STOP" loaded,
    and every copy in its language went out without a link to object with."""
    from gateway.errors import ConfigError
    folder = _operator_template(tmp_path, "en", key, text)
    with pytest.raises(ConfigError) as refused:
        load_templates(folder)
    assert f"{key} must contain {named}" in str(refused.value)
    assert "en.toml" in str(refused.value)


def test_an_operator_template_with_an_empty_text_is_refused(tmp_path):
    from gateway.errors import ConfigError
    with pytest.raises(ConfigError, match=r"empty rights"):
        load_templates(_operator_template(tmp_path, "fr", "rights", "  "))


def test_an_operator_template_in_its_own_words_loads(tmp_path):
    folder = _operator_template(tmp_path, "en", "unsubscribe",
                                "Stop these messages: {unsubscribe_url} (one click, no login).")
    template = load_templates(folder)["en"]
    rendered = render(template, FACTS)
    assert "Stop these messages: https://gw.example/u/abc (one click" in rendered.plain


MIME_HEAD = b"From: a@example.com\r\nSubject: s\r\nMIME-Version: 1.0\r\n"


@pytest.mark.parametrize("charset_param", [
    b"charset*=us-ascii'en'us-ascii", b"charset*=''us%2Dascii",
    b"charset*0=us-; charset*1=ascii",
])
def test_a_charset_in_rfc2231_form_is_read_and_replaced_not_left_beside_the_new_one(
        charset_param):
    """charset*=...: the rewrite added charset=utf-8 and kept charset*, which Python's email
    and mail readers take: the German notice came out garbled (MIME review)."""
    original = MIME_HEAD + b"Content-Type: text/plain; " + charset_param + b"\r\n\r\nHallo\r\n"
    out = add_notice(original, notice("de"))
    head = out.split(b"\r\n\r\n")[0]
    assert b"charset*" not in head
    for policy in (email.policy.default, email.policy.compat32):
        part = email.message_from_bytes(out, policy=policy)
        assert part.get_content_charset() == "utf-8", head
    assert notice("de").plain in text_of(parts(out)[0])


def test_utf8_text_whose_charset_is_in_rfc2231_form_is_not_held_as_undecodable():
    original = (MIME_HEAD + b"Content-Type: text/plain; charset*=utf-8''utf-8\r\n"
                b"Content-Transfer-Encoding: 8bit\r\n\r\nGr\xc3\xbc\xc3\x9fe\r\n")
    assert structure_facts(original).malformed is None
    out = add_notice(original, notice("de"))
    assert text_of(parts(out)[0]).startswith("Grüße\n")


def test_a_boundary_in_rfc2231_form_is_read():
    original = (MIME_HEAD + b"Content-Type: multipart/alternative; boundary*=''b%31\r\n\r\n"
                b"--b1\r\nContent-Type: text/plain\r\n\r\nplain\r\n"
                b"--b1\r\nContent-Type: text/html\r\n\r\n<p>html</p>\r\n--b1--\r\n")
    out = add_notice(original, notice("en"))
    plain, html_part = parts(out)
    assert notice("en").plain in text_of(plain) and "/u/abc" in text_of(html_part)


@pytest.mark.parametrize("params", [
    b"charset=us-ascii; charset*=utf-8''utf-8", b"charset*=utf-8''utf-8; charset*0=x",
    b"charset*0=us-; charset*2=ascii", b"charset*=utf-8",
])
def test_a_charset_given_in_both_forms_or_broken_is_held(params):
    """Readers disagree on which of two counts: held under M2, as a charset given twice is."""
    original = MIME_HEAD + b"Content-Type: text/plain; " + params + b"\r\n\r\nHallo\r\n"
    assert structure_facts(original).malformed is not None


def test_a_parameter_beyond_ascii_is_kept_when_the_content_type_is_rewritten():
    """name="café.txt" (RFC 6532) became name=caf.txt once the charset was rewritten, and a
    Latin-1 byte in a name was dropped (MIME review)."""
    for name in (b"caf\xc3\xa9.txt", b"caf\xe9.txt"):
        original = (MIME_HEAD + b"Content-Type: text/plain; charset=us-ascii; name=\"" + name +
                    b"\"\r\n\r\nascii\r\n")
        out = add_notice(original, notice("de"))
        head = out.split(b"\r\n\r\n")[0]
        assert b'name="' + name + b'"' in head and b"charset=utf-8" in head


def test_ascii_text_declared_8bit_gets_a_notice_beyond_ascii_as_quoted_printable():
    """Under a multipart said 7bit, the UTF-8 notice went into the child as raw 8-bit octets
    (RFC 2045 6.4 forbids it), and the 7-bit clean message went out as 8BITMIME (MIME
    review)."""
    original = (MIME_HEAD + b"Content-Type: multipart/alternative; boundary=X\r\n"
                b"Content-Transfer-Encoding: 7bit\r\n\r\n"
                b"--X\r\nContent-Type: text/plain; charset=utf-8\r\n"
                b"Content-Transfer-Encoding: 8bit\r\n\r\nascii only\r\n--X--\r\n")
    out = add_notice(original, notice("de"))
    assert out.isascii()
    assert b"Content-Transfer-Encoding: quoted-printable" in out
    assert text_of(parts(out)[0]) == "ascii only\n\n" + notice("de").plain + "\n"


def test_text_already_8bit_stays_8bit():
    original = (MIME_HEAD + b"Content-Type: text/plain; charset=utf-8\r\n"
                b"Content-Transfer-Encoding: 8bit\r\n\r\nGr\xc3\xbc\xc3\x9fe\r\n")
    out = add_notice(original, notice("de"))
    assert b"Content-Transfer-Encoding: 8bit" in out and notice("de").plain.encode() in \
        out.replace(b"\r\n", b"\n")


@pytest.mark.parametrize("meta", [
    b'<meta charset="utf-8">',
    b'<META HTTP-EQUIV="Content-Type" CONTENT="text/html; charset=UTF-8">',
])
def test_html_without_a_charset_is_read_in_the_charset_its_meta_names(meta):
    """UTF-8 HTML whose Content-Type named no charset, its <meta> naming it, was held under
    M2 as undecodable: readers take the <meta> (MIME review)."""
    original = (MIME_HEAD + b"Content-Type: text/html\r\nContent-Transfer-Encoding: 8bit\r\n"
                b"\r\n<html><head>" + meta + b"</head><body><p>Gr\xc3\xbc\xc3\x9fe</p></body>"
                b"</html>\r\n")
    assert structure_facts(original).malformed is None
    out = add_notice(original, notice("de"))
    head, body = out.split(b"\r\n\r\n", 1)
    assert b"Content-Transfer-Encoding: quoted-printable" in head  # its long notice line
    decoded = binascii.a2b_qp(body).decode("utf-8")
    assert "Grüße" in decoded and "https://gw.example/u/abc" in decoded
    no_meta = original.replace(meta, b"")
    assert structure_facts(no_meta).malformed is not None  # still: nothing names it


@pytest.mark.parametrize("charset", [b"no-such-charset", b"utf-16", b"rot13"])
def test_ascii_html_whose_meta_names_a_charset_it_cannot_be_read_in_is_read_as_ascii(charset):
    """As it was before the <meta> was read: not held under M2 for an unknown charset."""
    original = (MIME_HEAD + b"Content-Type: text/html\r\n\r\n<html><head><meta charset=\""
                + charset + b"\"></head><body><p>Hello</p></body></html>\r\n")
    assert structure_facts(original).malformed is None
    assert b"https://gw.example/u/abc" in add_notice(original, notice("en"))


@pytest.mark.parametrize("original", [
    # an empty plain alternative beside the HTML one
    b"From: <news@example.com>\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/alternative; boundary="b1"\r\n\r\n'
    b"--b1\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>Bonjour</p>\r\n"
    b"--b1\r\n--b1--\r\n",
    # the empty part is the only text: the notice is nowhere else
    b"From: <news@example.com>\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
    b"--b1\r\n--b1\r\nContent-Type: application/pdf\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b1--\r\n",
], ids=["alternative", "only-text-part"])
def test_an_empty_body_part_gets_its_new_fields_in_its_header_not_its_body(original):
    """`--b1` followed at once by the next delimiter is a body part with no fields and no
    body (RFC 2046 5.1.1: text/plain us-ascii). A French notice needs UTF-8 and QP, so
    Content-Type and Content-Transfer-Encoding are written for it: they went after a blank
    line, into the body, where every reader showed them as text and the notice as raw QP
    ("Exp=C3=A9diteur"). Found by fuzzing."""
    assert structure_facts(original).malformed is None  # accepted at DATA, so relayed
    out = add_notice(original, notice("fr"))
    plain = [p for p in parts(out) if p.get_content_type() == "text/plain"]
    assert len(plain) == 1
    assert plain[0]["Content-Transfer-Encoding"] == "quoted-printable"
    assert "Content-Type:" not in text_of(plain[0])
    assert notice("fr").plain in text_of(plain[0])
