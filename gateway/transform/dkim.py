"""DKIM signing (dkimpy), always the last change to a copy.

relaxed/relaxed, never an `l=` tag, and an explicit header list: dkimpy's default leaves out
List-Unsubscribe-Post, and RFC 8058 section 4 wants List-Unsubscribe and List-Unsubscribe-Post
signed. Every signed field is over-signed (listed once more than it occurs), so nobody can add
one after us without breaking the signature.

dkimpy's RSA is pure-Python arithmetic (~7-12 ms per signature here); RSA-PKCS#1 v1.5 is
deterministic, so OpenSSL (through `cryptography`) computes the very same signature in
~0.3 ms. `use_openssl_rsa` swaps dkimpy's signing primitive for that, caches the parsed key
and skips needless canonicalisation passes; tests/transform/test_dkim.py checks that the
output is byte-identical to dkimpy's own.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import dkim
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils
from dkim import canonicalization

from gateway.addresses import ascii_domain
from gateway.transform.headers import header_end

RSA = b"rsa-sha256"
ED25519 = b"ed25519-sha256"
# RFC 6376 5.4.1's list where a copy has them (Reply-To, Cc, Sender...: left out, anyone
# holding one signed copy could add a Reply-To of theirs and replay it under our d=), and
# over-signed (5.4.2: listed once more than present) where an added field would change
# who the mail is from, to, or where replies go
SIGNED = (b"from", b"sender", b"reply-to", b"to", b"cc", b"subject", b"date", b"message-id",
          b"in-reply-to", b"references", b"mime-version", b"content-type",
          b"content-transfer-encoding", b"list-id", b"list-unsubscribe",
          b"list-unsubscribe-post")
_SIGNED = frozenset(SIGNED)


def include_headers(message: bytes) -> list[bytes]:
    """Every SIGNED field listed once more than the copy has it (RFC 6376 5.4.2): each
    instance signed and one more "null" one, so that nobody can add a field of these after
    us, on top (the one most readers show) or anywhere. A fixed list signed Date, Message-ID,
    Content-Type and MIME-Version once only, and a second Subject or To of the message's own
    left room for a third: the copy still verified with a forged one on top."""
    counts = dict.fromkeys(SIGNED, 0)
    for line in message[:header_end(message)].split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            continue  # a folded line
        name = line.partition(b":")[0].strip().lower()
        if name in _SIGNED:
            counts[name] += 1
    return [name for name in SIGNED for _ in range(counts[name] + 1)]


class SigningError(Exception):
    """The copy could not be signed: it must be deferred, never sent unsigned."""


@dataclass(frozen=True)
class DkimKey:
    """One signing key: RSA as PEM (PKCS#1 or PKCS#8), ed25519 as its base64 32-byte seed."""

    domain: str
    selector: str
    algorithm: bytes
    private: bytes


class Signer:
    """Signs copies with every key of their From domain (RSA and ed25519 when both exist)."""

    def __init__(self, keys: list[DkimKey]) -> None:
        self.by_domain: dict[str, list[DkimKey]] = {}
        for key in keys:
            self.by_domain.setdefault(key.domain.lower(), []).append(key)

    def domains(self) -> list[str]:
        return sorted(self.by_domain)

    def sign(self, message: bytes, domain: str | list[str]) -> bytes:
        """`message` with its DKIM-Signature field(s) in front, by the keys of each of its
        From domains (`domain`: one, or the From field's several); SigningError on any
        failure, and when a domain has no key (RFC 8058 one-click needs a valid signature,
        DMARC one aligned with the From domain: signed for the first of several only, the
        others' alignment depended on the order the sender wrote them in)."""
        keys: list[DkimKey] = []
        for each in dict.fromkeys([domain] if isinstance(domain, str) else domain):
            name = each.lower().rstrip(".")
            if not name.isascii():  # a From header's IDN (bücher.de): keys are by A-label
                try:
                    name = ascii_domain(name)
                except UnicodeError:
                    pass
            found = self.by_domain.get(name)
            if not found:
                raise SigningError(f"no DKIM key for {each}")
            keys += [key for key in found if key not in keys]
        if not keys:
            raise SigningError("no From domain to sign for")
        include = include_headers(message)
        fields: list[bytes] = []
        for key in keys:
            try:
                field = dkim.sign(message, key.selector.encode("ascii"),
                                  key.domain.encode("ascii"), key.private,
                                  signature_algorithm=key.algorithm,
                                  canonicalize=(b"relaxed", b"relaxed"),
                                  include_headers=include, length=False)
            except Exception as exc:  # dkimpy raises several unrelated types
                raise SigningError(f"DKIM signing for {domain} ({key.selector}) failed: "
                                   f"{exc}") from exc
            fields.append(field)
        return b"".join(fields) + message


_rsa_keys: dict[int, rsa.RSAPrivateKey] = {}
_dkimpy_rsa_sign = dkim.RSASSA_PKCS1_v1_5_sign


def _openssl_rsa_sign(hash_object: Any, private_key: dict[str, int]) -> bytes:
    """Drop-in for dkim.crypto.RSASSA_PKCS1_v1_5_sign: same inputs, same bytes, OpenSSL."""
    if getattr(hash_object, "name", "") != "sha256":
        return bytes(_dkimpy_rsa_sign(hash_object, private_key))
    key = _rsa_keys.get(private_key["modulus"])
    if key is None:
        key = rsa.RSAPrivateNumbers(
            p=private_key["prime1"], q=private_key["prime2"], d=private_key["privateExponent"],
            dmp1=private_key["exponent1"], dmq1=private_key["exponent2"],
            iqmp=private_key["coefficient"],
            public_numbers=rsa.RSAPublicNumbers(private_key["publicExponent"],
                                                private_key["modulus"]),
        ).private_key()
        _rsa_keys[private_key["modulus"]] = key
    return key.sign(hash_object.digest(), padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))


_dkimpy_parse_pem = dkim.parse_pem_private_key
# dkimpy parses the PEM key (ASN.1, in Python) on every signature: ~0.17 ms, once is enough
_cached_parse_pem = functools.lru_cache(maxsize=64)(_dkimpy_parse_pem)


_dkimpy_relaxed_body = canonicalization.Relaxed.canonicalize_body


def _relaxed_body(body: bytes) -> bytes:
    """dkimpy's relaxed body canonicalisation (RFC 6376 3.4.4) without its two regex passes
    when they cannot change anything: no tab, no run of spaces, no space before a line end
    (the usual case). Same output either way (tests/transform/test_dkim.py)."""
    if b"\t" in body or b"  " in body or b" \r\n" in body:
        return bytes(_dkimpy_relaxed_body(body))
    return bytes(canonicalization.correct_empty_body(
        canonicalization.strip_trailing_lines(body)))


def use_openssl_rsa(enabled: bool = True) -> None:
    """dkimpy's fast paths: RSA signed through OpenSSL (the RSA step ~20x faster), each PEM
    key parsed once, and relaxed body canonicalisation without needless regex passes. Every
    output byte stays what dkimpy alone would give."""
    dkim.RSASSA_PKCS1_v1_5_sign = _openssl_rsa_sign if enabled else _dkimpy_rsa_sign
    dkim.parse_pem_private_key = _cached_parse_pem if enabled else _dkimpy_parse_pem
    canonicalization.Relaxed.canonicalize_body = staticmethod(
        _relaxed_body if enabled else _dkimpy_relaxed_body)
