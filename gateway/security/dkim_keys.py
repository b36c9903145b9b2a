"""DKIM keys on disk: generate them (0600) with their DNS record, load them for the signer."""

from __future__ import annotations

import base64
import logging
import os
import re
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from gateway.addresses import normalize_domain
from gateway.errors import ConfigError, Refused
from gateway.files import make_private_dirs, owner_only
from gateway.settings import DkimSettings
from gateway.transform.dkim import ED25519, RSA, DkimKey

log = logging.getLogger("gateway.dkim")

RSA_BITS = 2048
TXT_CHUNK = 255  # RFC 7208 3.3 / RFC 1035: one character-string holds 255 octets


def generate_key(path: Path, algorithm: str) -> str:
    """Write a new private key to `path` (owner-only, never over an existing file) and return
    the p= value of its DNS record."""
    if algorithm == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
        private = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.TraditionalOpenSSL,
                                    serialization.NoEncryption())
        public = key.public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    elif algorithm == "ed25519":
        seed_key = ed25519.Ed25519PrivateKey.generate()
        private = base64.b64encode(seed_key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
            serialization.NoEncryption())) + b"\n"
        public = seed_key.public_key().public_bytes(serialization.Encoding.Raw,
                                                    serialization.PublicFormat.Raw)
    else:
        raise ConfigError(f"unknown DKIM algorithm {algorithm!r} (rsa or ed25519)")
    make_private_dirs(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise Refused(f"{path} exists already: not overwriting a key that may be in use") \
            from None
    with os.fdopen(fd, "wb") as out:
        out.write(private)
    return base64.b64encode(public).decode("ascii")


def dns_record(domain: str, selector: str, algorithm: str, public: str) -> str:
    """The TXT record to publish, split in 255-octet strings as zone files want."""
    value = f"v=DKIM1; k={algorithm}; p={public}"
    chunks = " ".join(f'"{value[i:i + TXT_CHUNK]}"' for i in range(0, len(value), TXT_CHUNK))
    return f"{selector}._domainkey.{domain}. IN TXT ( {chunks} )"


_SELECTOR = re.compile(r"[A-Za-z0-9_-]{1,63}(\.[A-Za-z0-9_-]{1,63})*")


def load_keys(entries: tuple[DkimSettings, ...]) -> list[DkimKey]:
    """The [[dkim]] keys of the config; ConfigError naming the entry when one is unusable."""
    keys = []
    for i, entry in enumerate(entries):
        where = f"dkim[{i}] ({entry.selector!r}, {entry.domain!r})"
        if not (entry.domain and entry.selector and entry.key_file):
            raise ConfigError(f"{where}: domain, selector and key_file are all required")
        # both go into every copy's DKIM-Signature header (d=, s=): DNS names only, never a
        # CR or LF that would add a header of its own
        if _SELECTOR.fullmatch(entry.selector) is None:
            raise ConfigError(f"{where}: the selector must be DNS labels (letters, digits, "
                              "'-', '_', separated by dots)")
        try:
            # as d= carries it and as From domains are looked up: "example.org." and
            # " example.org" were kept as written, and matched no copy's domain
            domain = normalize_domain(entry.domain)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if not entry.domain.isascii():
            raise ConfigError(f"{where}: write the domain in its ASCII (xn--) form")
        try:
            data = Path(entry.key_file).read_bytes()
            info = os.stat(entry.key_file)
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read {entry.key_file}: {exc}") from None
        if b"PRIVATE KEY-----" in data:
            try:
                key = serialization.load_pem_private_key(data, password=None)
            except (ValueError, TypeError) as exc:  # corrupt, or protected by a passphrase
                raise ConfigError(f"{where}: {entry.key_file} is not a usable unencrypted "
                                  f"private key: {exc}") from None
            if isinstance(key, ed25519.Ed25519PrivateKey):  # e.g. `openssl genpkey`
                algorithm, data = ED25519, base64.b64encode(key.private_bytes(
                    serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                    serialization.NoEncryption()))
            elif isinstance(key, rsa.RSAPrivateKey) and key.key_size >= 1024:
                algorithm = RSA
                if key.key_size < RSA_BITS:
                    raise ConfigError(f"{where}: RSA key of {key.key_size} bits; use "
                                      f"{RSA_BITS} (RFC 8301)")
            else:
                raise ConfigError(f"{where}: {entry.key_file} is neither an RSA nor an "
                                  "ed25519 private key")
        else:
            try:
                seed = base64.b64decode(data.strip(), validate=True)
            except ValueError:
                seed = b""
            if len(seed) != 32:
                raise ConfigError(f"{where}: {entry.key_file} is neither a PEM RSA key nor a "
                                  "base64 ed25519 seed")
            algorithm, data = ED25519, data.strip()
        # once it is known to be a key: a config naming another file (a CSV, a certificate
        # other services read) had its mode changed before it was refused (ops review)
        owner_only(where, entry.key_file, info)
        keys.append(DkimKey(domain, entry.selector, algorithm, data))
    # Gmail, Yahoo and Microsoft do not verify ed25519 signatures (2026): a domain signed
    # with ed25519 alone goes out as unsigned to them (DMARC fails, RFC 8058 one-click
    # needs a valid signature). ed25519 is a second signature beside an RSA one.
    alone = sorted({k.domain for k in keys} - {k.domain for k in keys if k.algorithm == RSA})
    if alone:
        raise ConfigError(f"dkim: {', '.join(alone)} would be signed with ed25519 only, which "
                          "the large mailbox providers do not verify: add an RSA key for it "
                          "(gateway dkim keygen --domain D --selector S)")
    return keys
