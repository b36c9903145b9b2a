"""DKIM: signatures verify, cover the RFC 8058 fields, over-sign, never l=; OpenSSL RSA is
byte-identical to dkimpy's own."""

from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from gateway.errors import ConfigError, Refused
from gateway.security.dkim_keys import dns_record, generate_key, load_keys
from gateway.settings import DkimSettings
from gateway.transform import dkim as gateway_dkim
from gateway.transform.dkim import Signer, SigningError

import dkim_reference

MESSAGE = (b"From: News <news@example.com>\r\nTo: <jane@example.net>\r\nSubject: Offer\r\n"
           b"Date: Sun, 22 Nov 2026 12:00:00 +0000\r\nMessage-ID: <1@example.com>\r\n"
           b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
           b"List-Unsubscribe: <https://gw.example/u/abc>, <mailto:unsubscribe+abc@gw.example>"
           b"\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\r\nHello Jane,\r\n")


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> tuple[Signer, dict[bytes, bytes]]:
    folder: Path = tmp_path_factory.mktemp("dkim")
    records: dict[bytes, bytes] = {}
    entries = []
    for algorithm, selector in (("rsa", "r1"), ("ed25519", "e1")):
        path = folder / f"{selector}.key"
        public = generate_key(path, algorithm)
        records[f"{selector}._domainkey.example.com.".encode()] = (
            f"v=DKIM1; k={algorithm}; p={public}".encode())
        entries.append(DkimSettings("example.com", selector, str(path)))
    return Signer(load_keys(tuple(entries))), records


def verify_all(signed: bytes, records: dict[bytes, bytes]) -> list[bool]:
    count = signed.split(b"\r\n\r\n")[0].count(b"DKIM-Signature:")
    return [dkim.DKIM(signed).verify(idx=i, dnsfunc=lambda name, timeout=5: records[name])
            for i in range(count)]


def test_rsa_and_ed25519_signatures_verify_and_cover_one_click(keys):
    signer, records = keys
    gateway_dkim.use_openssl_rsa()
    signed = signer.sign(MESSAGE, "EXAMPLE.com")
    assert verify_all(signed, records) == [True, True]
    # and by a verifier written from the RFCs, not by dkimpy
    public = {name.split(b".")[0]: value.split(b"p=")[1] for name, value in records.items()}
    assert dkim_reference.verify(signed, public) == [True, True]
    assert dkim_reference.verify(signed.replace(b"Hello", b"Hallo"), public) == [False, False]
    for field in re.findall(rb"DKIM-Signature:.*?(?=\r\n[^ \t])", signed, re.S):
        tags = dict(t.strip().split(b"=", 1) for t in re.sub(rb"\s+", b"", field.split(
            b":", 1)[1]).split(b";") if t)
        signed_headers = tags[b"h"].split(b":")
        assert b"list-unsubscribe-post" in signed_headers
        for name in (b"from", b"subject", b"list-unsubscribe", b"list-unsubscribe-post"):
            assert signed_headers.count(name) == 2  # over-signed
        assert b"l" not in tags and tags[b"c"] == b"relaxed/relaxed"
    # any change after signing breaks it, including a second List-Unsubscribe-Post
    assert not any(verify_all(signed.replace(b"Offer", b"0ffer"), records))
    added = signed.replace(b"\r\n\r\n", b"\r\nList-Unsubscribe-Post: x\r\n\r\n", 1)
    assert not any(verify_all(added, records))


def test_openssl_rsa_is_byte_identical_to_dkimpy(keys, tmp_path: Path):
    path = tmp_path / "k.pem"
    generate_key(path, "rsa")
    private = dkim.crypto.parse_pem_private_key(path.read_bytes())
    for text in (b"", b"a", MESSAGE):
        digest = hashlib.sha256(text)
        theirs = bytes(gateway_dkim._dkimpy_rsa_sign(dkim.HashThrough(digest.copy()), private))
        ours = gateway_dkim._openssl_rsa_sign(dkim.HashThrough(digest.copy()), private)
        assert ours == theirs


def test_fast_relaxed_body_is_dkimpys():
    rng = random.Random(7)
    pieces = [b"a", b"b", b" ", b"  ", b"\t", b"\r\n", b"\r\n\r\n", b" \r\n", b"x y"]
    bodies = [b"", b"\r\n", b"\r\n\r\n", b"text", b"text \r\n", MESSAGE]
    bodies += [b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 40)))
               for _ in range(3000)]
    for body in bodies:
        assert gateway_dkim._relaxed_body(body) == gateway_dkim._dkimpy_relaxed_body(body), body


def test_no_key_or_a_bad_key_is_a_signing_error_never_an_unsigned_copy(keys, tmp_path: Path):
    signer, _ = keys
    with pytest.raises(SigningError, match="no DKIM key for other.example"):
        signer.sign(MESSAGE, "other.example")
    broken = Signer([gateway_dkim.DkimKey("example.com", "x", gateway_dkim.RSA,
                                          b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END")])
    with pytest.raises(SigningError):
        broken.sign(MESSAGE, "example.com")


def test_key_files_are_owner_only_never_overwritten_and_checked(tmp_path: Path):
    path = tmp_path / "d" / "k.key"
    generate_key(path, "ed25519")
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(Refused, match="exists already"):
        generate_key(path, "rsa")
    garbage = tmp_path / "garbage.key"
    garbage.write_text("not a key")
    with pytest.raises(ConfigError, match="neither a PEM RSA key"):
        load_keys((DkimSettings("example.com", "s", str(garbage)),))
    with pytest.raises(ConfigError, match="required"):
        load_keys((DkimSettings("example.com", "", str(garbage)),))
    # selector and domain go into every copy's DKIM-Signature: DNS names, never a CR or LF
    for domain, selector, words in (
            ("example.com", "gw1\r\nBcc: archive@evil.example", "selector"),
            ("example.com", "gw 1", "selector"),
            ("example.com\r\nBcc: x@evil.example", "gw1", "dkim"),
            ("exämple.com", "gw1", "ASCII")):
        with pytest.raises(ConfigError, match=words):
            load_keys((DkimSettings(domain, selector, str(garbage)),))
    # keys made by openssl: ed25519 in PEM is understood; broken, encrypted, short refused
    pem = tmp_path / "ed.pem"
    pem.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    beside = tmp_path / "rsa.key"  # ed25519 goes beside an RSA key (below)
    generate_key(beside, "rsa")
    [_, key] = load_keys((DkimSettings("example.com", "r", str(beside)),
                          DkimSettings("example.com", "e", str(pem))))
    assert key.algorithm == gateway_dkim.ED25519
    Signer([key]).sign(MESSAGE, "example.com")
    broken = tmp_path / "broken.pem"
    broken.write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    encrypted = tmp_path / "enc.pem"
    encrypted.write_bytes(rsa.generate_private_key(65537, 2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    short = tmp_path / "short.pem"
    short.write_bytes(rsa.generate_private_key(65537, 1024).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    for path, why in ((broken, "not a usable"), (encrypted, "not a usable"),
                      (short, "1024 bits")):
        with pytest.raises(ConfigError, match=why):
            load_keys((DkimSettings("example.com", "s", str(path)),))


def test_dns_record_splits_long_values():
    record = dns_record("example.com", "s1", "rsa", "A" * 400)
    assert record.startswith('s1._domainkey.example.com. IN TXT ( "v=DKIM1; k=rsa; p=')
    assert all(len(chunk) <= 255 for chunk in re.findall(r'"([^"]*)"', record))


def test_an_added_reply_to_cc_or_sender_breaks_the_signature(keys):
    """They were not signed: anyone with one signed copy could add a Reply-To of theirs
    and replay it under our d= (RFC 6376 5.4.1 and 5.4.2)."""
    signer, records = keys
    with_reply_to = MESSAGE.replace(b"Subject:", b"Reply-To: <sales@example.com>\r\nSubject:")
    signed = signer.sign(with_reply_to, "example.com")
    assert verify_all(signed, records) == [True, True]
    swapped = signed.replace(b"sales@example.com", b"pay@attacker.example")
    assert not any(verify_all(swapped, records))
    for field in (b"Reply-To: <pay@attacker.example>", b"Cc: <boss@example.net>",
                  b"Sender: <x@attacker.example>"):
        added = signed.replace(b"\r\n\r\n", b"\r\n" + field + b"\r\n\r\n", 1)
        assert not any(verify_all(added, records)), field


def test_an_idn_from_domain_and_a_configured_trailing_dot_find_their_keys(tmp_path: Path):
    """From: news@bücher.de found no key (they are by A-label): every copy was deferred,
    then bounced; "example.org." in [[dkim]] matched no copy either."""
    path = tmp_path / "k.key"
    public = generate_key(path, "rsa")
    signer = Signer(load_keys((DkimSettings("xn--bcher-kva.de", "r1", str(path)),
                               DkimSettings("example.org.", "r1", str(path)))))
    assert signer.domains() == ["example.org", "xn--bcher-kva.de"]
    record = {b"r1._domainkey.xn--bcher-kva.de.": f"v=DKIM1; k=rsa; p={public}".encode()}
    idn = MESSAGE.replace(b"news@example.com", "news@bücher.de".encode())
    signed = signer.sign(idn, "bücher.de")
    assert b"d=xn--bcher-kva.de" in signed and verify_all(signed, record) == [True]
    assert b"d=example.org;" in signer.sign(MESSAGE, "example.org")


def test_a_field_added_on_top_of_a_signed_copy_breaks_the_signature(tmp_path: Path):
    """Date, Message-ID, Content-Type and MIME-Version were signed once only, and a message
    with two Subject fields left room for a third: a forged one added on top (what most
    readers show) still verified."""
    path = tmp_path / "k.key"
    public = generate_key(path, "rsa")
    signer = Signer(load_keys((DkimSettings("example.com", "s1", str(path)),)))
    record = {b"s1._domainkey.example.com.": f"v=DKIM1; k=rsa; p={public}".encode()}
    twice = MESSAGE.replace(b"Subject: ", b"Subject: first\r\nSubject: ", 1)
    for message in (MESSAGE, twice):
        signed = signer.sign(message, "example.com")
        assert verify_all(signed, record) == [True]
        for forged in (b"Subject: forged", b"Date: Mon, 1 Jan 2024 00:00:00 +0000",
                       b"Message-ID: <forged@evil.example>", b"MIME-Version: 1.0",
                       b"Content-Type: text/html"):
            # after the signature field(s), on top of the message's own fields
            head, _, rest = signed.partition(b"\r\nFrom:")
            tampered = head + b"\r\n" + forged + b"\r\nFrom:" + rest
            assert verify_all(tampered, record) == [False], forged


def test_every_from_domain_is_signed_for_whatever_the_order(tmp_path: Path):
    """Signed for the first From address's domain only: "a@example.com, b@other.example"
    went signed, the same addresses the other way round were deferred."""
    path = tmp_path / "k.key"
    generate_key(path, "rsa")
    signer = Signer(load_keys((DkimSettings("example.com", "s1", str(path)),)))
    with pytest.raises(SigningError, match="other.example"):
        signer.sign(MESSAGE, ["example.com", "other.example"])
    with pytest.raises(SigningError, match="other.example"):
        signer.sign(MESSAGE, ["other.example", "example.com"])
    both = Signer(load_keys((DkimSettings("example.com", "s1", str(path)),
                             DkimSettings("other.example", "s1", str(path)))))
    signed = both.sign(MESSAGE, ["other.example", "example.com", "example.com"])
    assert signed.count(b"DKIM-Signature") == 2
    assert b"d=example.com;" in signed and b"d=other.example;" in signed


def test_an_ed25519_key_alone_and_a_key_others_can_read(tmp_path: Path, caplog):
    """A domain with only an ed25519 key went out as unsigned to Gmail, Yahoo and Microsoft;
    a DKIM key readable by all was loaded as it was (the other keys are made owner-only)."""
    ed = tmp_path / "ed.key"
    generate_key(ed, "ed25519")
    with pytest.raises(ConfigError, match="ed25519 only"):
        load_keys((DkimSettings("example.com", "e", str(ed)),))
    loose = tmp_path / "rsa.key"
    generate_key(loose, "rsa")
    loose.chmod(0o644)
    with caplog.at_level("WARNING", "gateway.dkim"):
        load_keys((DkimSettings("example.com", "r", str(loose)),
                   DkimSettings("example.com", "e", str(ed))))
    assert loose.stat().st_mode & 0o777 == 0o600 and "made owner-only" in caplog.text
    # someone else's key (a secret volume, a key shared with a group): loaded, left, said
    import os
    if os.geteuid() == 0:
        shared = tmp_path / "shared.key"
        generate_key(shared, "rsa")
        shared.chmod(0o640)
        os.chown(shared, 65534, 65534)
        load_keys((DkimSettings("example.org", "r", str(shared)),))
        assert shared.stat().st_mode & 0o777 == 0o640 and "not this user's" in caplog.text
