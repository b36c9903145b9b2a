"""An independent DKIM verifier for the tests: RFC 6376 relaxed/relaxed with rsa-sha256 and
RFC 8463 ed25519-sha256, written from the RFCs on `cryptography` alone, so that a signature
is not only checked by the library that made it."""

from __future__ import annotations

import base64
import hashlib
import re

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

_WSP_RUN = re.compile(rb"[ \t]+")


def split_message(message: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """([(name, raw field including name, unfolded CRLFs kept)], body)."""
    head, _, body = message.partition(b"\r\n\r\n")
    fields: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            name, raw = fields[-1]
            fields[-1] = (name, raw + b"\r\n" + line)
        else:
            fields.append((line.split(b":", 1)[0], line))
    return fields, body


def relaxed_header(raw: bytes) -> bytes:
    """RFC 6376 3.4.2."""
    name, _, value = raw.partition(b":")
    value = value.replace(b"\r\n", b"")
    value = _WSP_RUN.sub(b" ", value).strip(b" ")
    return name.strip().lower() + b":" + value


def relaxed_body(body: bytes) -> bytes:
    """RFC 6376 3.4.4."""
    lines = [_WSP_RUN.sub(b" ", line).rstrip(b" ") for line in body.split(b"\r\n")]
    while lines and lines[-1] == b"":
        lines.pop()
    return b"".join(line + b"\r\n" for line in lines)


def tags(field_value: bytes) -> dict[bytes, bytes]:
    result = {}
    for item in field_value.split(b";"):
        if b"=" in item:
            key, _, value = item.partition(b"=")
            result[key.strip()] = re.sub(rb"\s+", b"", value)
    return result


def verify(message: bytes, public_keys: dict[bytes, bytes]) -> list[bool]:
    """One result per DKIM-Signature field; `public_keys` maps selector to the p= value."""
    fields, body = split_message(message)
    results = []
    for index, (name, raw) in enumerate(fields):
        if name.strip().lower() != b"dkim-signature":
            continue
        t = tags(raw.partition(b":")[2])
        if t.get(b"s") not in public_keys:  # somebody else's signature
            results.append(False)
            continue
        if t.get(b"c") != b"relaxed/relaxed" or b"l" in t:
            results.append(False)
            continue
        body_hash = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest())
        if body_hash != t[b"bh"]:
            results.append(False)
            continue
        data = b""
        used: dict[bytes, int] = {}
        others = [f for i, f in enumerate(fields) if i != index]
        for wanted in t[b"h"].lower().split(b":"):
            matching = [raw_field for n, raw_field in others if n.strip().lower() == wanted]
            count = used.get(wanted, 0)
            if count < len(matching):  # bottom-up; a name listed once more signs "absent"
                data += relaxed_header(matching[len(matching) - 1 - count]) + b"\r\n"
            used[wanted] = count + 1
        unsigned = re.sub(rb"(\bb=)[^;]*", rb"\1", raw)
        data += relaxed_header(unsigned)
        signature = base64.b64decode(t[b"b"])
        key_data = base64.b64decode(public_keys[t[b"s"]])
        try:
            if t[b"a"] == b"rsa-sha256":
                key = serialization.load_der_public_key(key_data)
                assert isinstance(key, rsa.RSAPublicKey)
                key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
            elif t[b"a"] == b"ed25519-sha256":
                ed25519.Ed25519PublicKey.from_public_bytes(key_data).verify(
                    signature, hashlib.sha256(data).digest())
            else:
                results.append(False)
                continue
        except InvalidSignature:
            results.append(False)
            continue
        results.append(True)
    return results
