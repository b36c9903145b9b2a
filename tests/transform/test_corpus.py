"""Real-world messages (tests/data/corpus, made by mail clients and libraries; see SOURCES.md)
through the per-copy transforms: still parseable, each text part's decoded content is the
original plus the notice exactly once, attachments byte-identical, DKIM verifies (dkimpy and
an independent verifier). Signed messages are never altered: M2 quarantines them."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage
from pathlib import Path

import dkim
import pytest

from gateway.notice_templates import load_templates
from gateway.policy.message import decide_message
from gateway.security.dkim_keys import generate_key, load_keys
from gateway.settings import DkimSettings
from gateway.transform.dkim import Signer, use_openssl_rsa
from gateway.transform.footer import add_notice, undecodable_text
from gateway.transform.mime import message_facts, scan
from gateway.transform.notice import NoticeFacts, choose, render
from gateway.transform.pipeline import Personalisation, personalise

import dkim_reference

CORPUS = Path(__file__).resolve().parents[1] / "data" / "corpus"
FILES = sorted(CORPUS.glob("*.eml"))
SIGNED = {"12-m2crypto-smime-multipart-signed.eml", "13-thunderbird-pgp-mime-multipart-signed.eml"}
NOTICE = render(choose(load_templates(), "fr", "en"), NoticeFacts(
    "ACME SAS", "https://acme.example", "https://acme.example/privacy", "dpo@acme.example", 3,
    "https://gw.example/u/abcdefghijklmnopqrstuvwxyz2345672345678", "R8",
    sources=("Salon <Cyber> 2026",)))


def as_received(path: Path) -> bytes:
    """The file as an SMTP client would send it: an mbox "From " envelope line is not part of
    a message (clients never send it), everything else unchanged."""
    data = path.read_bytes()
    if data.startswith(b"From "):
        data = data.split(b"\r\n", 1)[1]
    return data if data.endswith(b"\r\n") else data + b"\r\n"


@pytest.fixture(scope="module")
def signing(tmp_path_factory) -> tuple[Signer, dict[bytes, bytes]]:
    folder = tmp_path_factory.mktemp("keys")
    public = {}
    entries = []
    for algorithm, selector in (("rsa", "r"), ("ed25519", "e")):
        public[selector.encode()] = generate_key(folder / selector, algorithm).encode()
        entries.append(DkimSettings("example.com", selector, str(folder / selector)))
    use_openssl_rsa()
    return Signer(load_keys(tuple(entries))), public


def leaves(raw: bytes) -> list[EmailMessage]:
    """Leaf parts in order, a forwarded message/rfc822 counting as one leaf (it is content)."""
    found: list[EmailMessage] = []

    def walk(part: EmailMessage) -> None:
        if part.is_multipart() and part.get_content_type() != "message/rfc822":
            for child in part.iter_parts():
                walk(child)  # type: ignore[arg-type]
        else:
            found.append(part)

    walk(email.message_from_bytes(raw, policy=email.policy.default))  # type: ignore[arg-type]
    return found


def is_text_body(part: EmailMessage) -> bool:
    return (part.get_content_type() in ("text/plain", "text/html")
            and part.get_content_disposition() != "attachment")


def decoded(part: EmailMessage) -> str:
    return part.get_payload(decode=True).decode(part.get_content_charset() or "us-ascii")


def test_the_corpus_covers_what_the_issue_lists():
    assert len(FILES) >= 12
    kinds = " ".join(p.read_bytes().decode("latin-1").lower() for p in FILES)
    for needle in ("charset=utf-8", "iso-8859-1", "windows-1252", "8bit", "base64",
                   "quoted-printable", "multipart/alternative", "multipart/related",
                   "message/rfc822", "format=flowed", "multipart/signed"):
        assert needle in kinds, needle


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_real_world_message(path: Path, signing):
    original = as_received(path)
    facts = message_facts(original)
    if path.name in SIGNED:
        assert facts.signed_or_encrypted == "multipart/signed"
        decision = decide_message(facts)
        assert decision is not None and decision.rule == "M2"  # quarantined, never altered
        return
    problem = facts.malformed or undecodable_text(original)
    if problem is not None:  # only the broken one: quarantined under M2 rather than mangled
        assert path.name.startswith("14-"), problem
        return
    signer, public = signing
    content = personalise(original, Personalisation(
        "https://gw.example/u/tok", "unsubscribe+tok@gw.example", "<1@gw.example>",
        "Sun, 22 Nov 2026 12:00:00 +0000"))
    content = signer.sign(add_notice(content, NOTICE), "example.com")
    # DKIM over the exact bytes: dkimpy, and the independent verifier, both signatures (ours
    # are the first two fields; a message may carry its sender's own, now broken, below)
    records = {b"r._domainkey.example.com.": b"v=DKIM1; k=rsa; p=" + public[b"r"],
               b"e._domainkey.example.com.": b"v=DKIM1; k=ed25519; p=" + public[b"e"]}
    assert all(dkim.DKIM(content).verify(idx=i, dnsfunc=lambda n, timeout=5: records[n])
               for i in range(2))
    assert dkim_reference.verify(content, public)[:2] == [True, True]
    assert all(len(line) <= 998 for line in content.split(b"\r\n"))
    before, after = leaves(original), leaves(content)
    assert [p.get_content_type() for p in before] == [p.get_content_type() for p in after]
    texts = 0
    for old, new in zip(before, after, strict=True):
        if not is_text_body(old):  # attachments, images, forwarded mail: byte-identical
            assert new.as_bytes() == old.as_bytes() or (
                old.get_payload(decode=True) == new.get_payload(decode=True)), old
            continue
        texts += 1
        old_text, new_text = decoded(old), decoded(new)
        if old.get_content_type() == "text/html":
            assert new_text.count(NOTICE.html) == 1
            assert new_text.replace(NOTICE.html, "", 1) == old_text
        else:
            marker = "-- " + ("\r\n" if "\r\n" in new_text else "\n")
            assert new_text.count("Se désabonner en un clic") == 1
            head = new_text[:new_text.rindex(marker)].rstrip("\r\n")
            assert head == old_text.rstrip("\r\n")
            assert "Salon <Cyber> 2026" in new_text
    assert texts >= 1
    # every other part's raw bytes (attachments, images, forwarded mail) are still there as is
    for part in scan(original).walk():
        if part.children or (part.content_type in ("text/plain", "text/html")
                             and not part.is_attachment):
            continue
        assert original[part.start:part.end] in content, part.content_type
