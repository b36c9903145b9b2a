"""TLS for the SMTP listener: the configured certificate, or a self-signed one for development.

Like Debian's Postfix 'snakeoil' certificate: STARTTLS works out of the box, so AUTH (which
needs TLS) works too, and an operator replaces it with a real certificate for production.

A renewed certificate (certbot, acme.sh, a secret volume updated in place) is taken without a
restart, as Postfix's next smtpd process takes it: `ServerCertificate` looks at the two files
again at a STARTTLS, at most every RECHECK_SECONDS, and loads them when either changed.
"""

from __future__ import annotations

import datetime
import logging
import os
import ssl
import time
from collections.abc import Callable
from pathlib import Path

from gateway.files import owner_only
from gateway.store.db import create_private_file

log = logging.getLogger(__name__)

RECHECK_SECONDS = 10.0  # how stale a renewal may be; a stat of two files at most this often
EXPIRY_WARNING_DAYS = 14  # Let's Encrypt's own reminder mails start at 20 days
EXPIRY_RECHECK_SECONDS = 86400.0  # a certificate near its end is said again once a day


def ensure_self_signed(cert_path: Path, key_path: Path, hostname: str) -> bool:
    """Create a self-signed certificate for `hostname` unless both files exist. True if made."""
    if cert_path.exists() and key_path.exists():
        return False
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    create_private_file(key_path)
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    create_private_file(cert_path)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return True


def server_context(cert_path: str | Path, key_path: str | Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert_path), str(key_path))
    except ssl.SSLError as exc:
        # OpenSSL's "[SSL] PEM lib" names neither file nor what is wrong
        if "PRIVATE KEY" not in Path(key_path).read_text(errors="replace"):
            raise ssl.SSLError(f"{key_path} holds no PEM private key (is it the "
                               "certificate?)") from None
        if "CERTIFICATE" not in Path(cert_path).read_text(errors="replace"):
            raise ssl.SSLError(f"{cert_path} holds no PEM certificate") from None
        if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
            raise ssl.SSLError(f"{key_path} is not the private key of the certificate "
                               f"{cert_path}") from None
        raise
    return context


Stamp = tuple[tuple[int, int, int, int], tuple[int, int, int, int]]


def _stamp(cert_path: Path, key_path: Path) -> Stamp:
    """What changes when a file is replaced or rewritten (a symlink followed, as certbot's
    live/ links are): its device, inode, size and modification time."""
    def one(path: Path) -> tuple[int, int, int, int]:
        info = os.stat(path)
        return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns
    return one(cert_path), one(key_path)


def not_valid_after(cert_path: Path) -> datetime.datetime | None:
    """The end of the first certificate of a PEM chain, or None when it cannot be read."""
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificate(cert_path.read_bytes()).not_valid_after_utc
    except (OSError, ValueError):
        return None


class ServerCertificate:
    """The SMTP listener's certificate and key, loaded again when either file changes.

    `context()` is called at each STARTTLS: at most every RECHECK_SECONDS it compares the two
    files' stamps with those of the pair loaded; on a change it loads the pair into a new
    context, which the next handshakes use (those under way keep theirs). A pair that does
    not load (a key written before its certificate, a mismatch, a file removed) leaves the
    one loaded before in use, is logged once per change, and is tried again at the next
    change. A certificate within EXPIRY_WARNING_DAYS of its end, or past it, is logged at
    each load and once a day at most after.
    """

    def __init__(self, cert_path: str | Path, key_path: str | Path, where: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cert_path, self.key_path = Path(cert_path), Path(key_path)
        self.where = where
        self._clock = clock
        self._stamp = _stamp(self.cert_path, self.key_path)
        self._context = server_context(self.cert_path, self.key_path)
        owner_only(where, self.key_path)  # once loaded: another file named is left as it is
        self._refused: Stamp | str | None = None  # a change that did not load
        self._checked = self._expiry_said = clock()
        self.expires = not_valid_after(self.cert_path)
        self._say_expiry(datetime.datetime.now(datetime.UTC))

    def context(self) -> ssl.SSLContext:
        now = self._clock()
        if now - self._checked >= RECHECK_SECONDS:
            self._checked = now
            self._reload_if_changed()
            if now - self._expiry_said >= EXPIRY_RECHECK_SECONDS:
                self._expiry_said = now
                self._say_expiry(datetime.datetime.now(datetime.UTC))
        return self._context

    def _reload_if_changed(self) -> None:
        try:
            stamp = _stamp(self.cert_path, self.key_path)
        except OSError as exc:
            self._refuse("unreadable", f"cannot read it: {exc.strerror or exc}")
            return
        if stamp == self._stamp:
            self._refused = None  # back as loaded (a file moved away and back)
            return
        if stamp == self._refused:
            return
        try:
            context = server_context(self.cert_path, self.key_path)
            owner_only(self.where, self.key_path)
        except (OSError, ssl.SSLError) as exc:
            self._refuse(stamp, str(exc))
            return
        self._stamp, self._context, self._refused = stamp, context, None
        self.expires = not_valid_after(self.cert_path)
        log.info("%s: certificate %s changed: loaded with its key %s for the next STARTTLS%s",
                 self.where, self.cert_path, self.key_path,
                 f" (valid until {self.expires:%Y-%m-%d %H:%M} UTC)" if self.expires else "")
        self._say_expiry(datetime.datetime.now(datetime.UTC))

    def _refuse(self, what: Stamp | str, why: str) -> None:
        if what == self._refused:
            return  # said once per change
        self._refused = what
        log.error("%s: the certificate %s or its key %s changed but cannot be loaded (%s); "
                  "STARTTLS keeps the certificate loaded before, and the pair is tried again "
                  "when either file changes", self.where, self.cert_path, self.key_path, why)

    def _say_expiry(self, now: datetime.datetime) -> None:
        if self.expires is None:
            return
        left = self.expires - now
        if left <= datetime.timedelta(0):
            log.error("%s: the certificate %s expired on %s UTC: clients that check it refuse "
                      "STARTTLS (and so AUTH); renew it, it is loaded again when the file "
                      "changes", self.where, self.cert_path, f"{self.expires:%Y-%m-%d %H:%M}")
        elif left <= datetime.timedelta(days=EXPIRY_WARNING_DAYS):
            log.warning("%s: the certificate %s expires on %s UTC, in %d days; renew it, it "
                        "is loaded again when the file changes", self.where, self.cert_path,
                        f"{self.expires:%Y-%m-%d %H:%M}", left.days)
