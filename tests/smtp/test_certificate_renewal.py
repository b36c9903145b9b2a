"""A renewed certificate is used without a restart: real STARTTLS over a real socket.

certbot renews every 60 days and replaces the files in place; the gateway kept the one it
had loaded at start until it expired, and clients that check it then refused STARTTLS (so
AUTH too). Postfix's next smtpd process reads the new files; ours reads them at the next
STARTTLS once they change.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import ssl
from collections import Counter
from pathlib import Path

import aiosmtplib
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway import tls
from gateway.settings import SmtpSettings
from gateway.smtp.server import start_smtp_server
from gateway.tls import ServerCertificate


class NoHooks:
    """aiosmtpd's defaults for every hook: only the handshake is under test."""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def write_pair(folder: Path, name: str, days: float = 90, key_path: Path | None = None,
               cert_path: Path | None = None) -> tuple[Path, Path]:
    """A certificate for `name` valid `days` more days and its key, written as a renewal
    does: a new file renamed over the old one."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=days))
            .sign(key, hashes.SHA256()))
    cert_path = cert_path or folder / "cert.pem"
    key_path = key_path or folder / "key.pem"
    for path, data in ((key_path, key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())),
            (cert_path, cert.public_bytes(serialization.Encoding.PEM))):
        if path is not None:
            fresh = path.with_suffix(".new")
            fresh.write_bytes(data)
            fresh.chmod(0o600)
            os.replace(fresh, path)
    return cert_path, key_path


def key_only(folder: Path, name: str) -> None:
    """A renewal caught half-way: the new key written, its certificate not yet."""
    spare = folder / "spare"
    spare.mkdir(exist_ok=True)
    _, key = write_pair(spare, name)
    os.replace(key, folder / "key.pem")


async def served_name(port: int) -> str:
    """The common name of the certificate a STARTTLS on `port` presents."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False,
                             validate_certs=False, timeout=10)
    await client.connect()
    try:
        await client.ehlo()
        await client.starttls()
        ssl_object = client.transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True)
        cert = x509.load_der_x509_certificate(der)
        return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
    finally:
        await client.quit()


async def serving(certificate: ServerCertificate) -> asyncio.Server:
    accepting = asyncio.Event()
    accepting.set()
    settings = SmtpSettings()
    return await start_smtp_server(NoHooks(), settings, "127.0.0.1", 0, certificate, accepting,
                                   Counter())


def port_of(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])


async def test_a_renewed_certificate_is_served_at_the_next_starttls_after_the_recheck(
        tmp_path: Path, caplog):
    cert, key = write_pair(tmp_path, "first.example")
    clock = Clock()
    server = await serving(ServerCertificate(cert, key, "smtp.tls_key", clock=clock))
    try:
        port = port_of(server)
        assert await served_name(port) == "first.example"
        write_pair(tmp_path, "renewed.example")
        assert await served_name(port) == "first.example"  # not yet looked at again
        clock.now += tls.RECHECK_SECONDS
        with caplog.at_level(logging.INFO, logger="gateway.tls"):
            assert await served_name(port) == "renewed.example"
        assert "certificate" in caplog.text and "changed: loaded" in caplog.text
        assert await served_name(port) == "renewed.example"
    finally:
        server.close()


async def test_a_pair_that_does_not_load_keeps_the_one_before_and_is_said_once(
        tmp_path: Path, caplog):
    cert, key = write_pair(tmp_path, "first.example")
    clock = Clock()
    server = await serving(ServerCertificate(cert, key, "smtp.tls_key", clock=clock))
    try:
        port = port_of(server)
        key_only(tmp_path, "next.example")  # the key of a certificate not yet written
        with caplog.at_level(logging.ERROR, logger="gateway.tls"):
            for _ in range(3):
                clock.now += tls.RECHECK_SECONDS
                assert await served_name(port) == "first.example"
        said = [r for r in caplog.records if "cannot be loaded" in r.getMessage()]
        assert len(said) == 1 and "keeps the certificate loaded before" in said[0].getMessage()
        write_pair(tmp_path, "next.example")  # the renewal completes
        clock.now += tls.RECHECK_SECONDS
        assert await served_name(port) == "next.example"
    finally:
        server.close()


async def test_removed_files_keep_the_loaded_certificate(tmp_path: Path, caplog):
    cert, key = write_pair(tmp_path, "first.example")
    clock = Clock()
    server = await serving(ServerCertificate(cert, key, "smtp.tls_key", clock=clock))
    try:
        cert.unlink()
        with caplog.at_level(logging.ERROR, logger="gateway.tls"):
            for _ in range(2):
                clock.now += tls.RECHECK_SECONDS
                assert await served_name(port_of(server)) == "first.example"
        assert sum("cannot read it" in r.getMessage() for r in caplog.records) == 1
    finally:
        server.close()


def test_a_certificate_near_its_end_or_past_it_is_said_at_load_and_daily(tmp_path: Path,
                                                                          caplog):
    cert, key = write_pair(tmp_path, "soon.example", days=5)
    clock = Clock()
    with caplog.at_level(logging.WARNING, logger="gateway.tls"):
        certificate = ServerCertificate(cert, key, "smtp.tls_key", clock=clock)
        assert [r.levelname for r in caplog.records] == ["WARNING"]
        assert "expires on" in caplog.text and "in 4 days" in caplog.text
        clock.now += tls.RECHECK_SECONDS
        certificate.context()
        assert len(caplog.records) == 1  # not at every STARTTLS
        clock.now += tls.EXPIRY_RECHECK_SECONDS
        certificate.context()
        assert len(caplog.records) == 2
    caplog.clear()
    write_pair(tmp_path, "late.example", days=-1)
    with caplog.at_level(logging.WARNING, logger="gateway.tls"):
        ServerCertificate(cert, key, "smtp.tls_key", clock=clock)
    assert [r.levelname for r in caplog.records] == ["ERROR"] and "expired on" in caplog.text
    caplog.clear()
    write_pair(tmp_path, "fine.example", days=60)
    with caplog.at_level(logging.WARNING, logger="gateway.tls"):
        ServerCertificate(cert, key, "smtp.tls_key", clock=clock)
    assert not caplog.records


def test_a_renewed_key_readable_by_others_is_made_owner_only(tmp_path: Path):
    cert, key = write_pair(tmp_path, "first.example")
    clock = Clock()
    certificate = ServerCertificate(cert, key, "smtp.tls_key", clock=clock)
    write_pair(tmp_path, "renewed.example")
    key.chmod(0o644)
    clock.now += tls.RECHECK_SECONDS
    context = certificate.context()
    assert isinstance(context, ssl.SSLContext)
    assert key.stat().st_mode & 0o077 == 0


def test_a_file_that_is_no_key_keeps_its_mode_and_the_error_says_what_it_is(tmp_path: Path):
    """smtp.tls_key naming the certificate (a 0644 file other services read) made it 0600
    before OpenSSL's "[SSL] PEM lib" refused it; a DKIM key_file naming a CSV too (ops
    review)."""
    import pytest

    from gateway.errors import ConfigError
    from gateway.security.dkim_keys import load_keys
    from gateway.settings import DkimSettings
    cert, key = write_pair(tmp_path, "first.example")
    cert.chmod(0o644)
    with pytest.raises(ssl.SSLError, match="holds no PEM private key"):
        ServerCertificate(cert, cert, "smtp.tls_key")
    assert cert.stat().st_mode & 0o777 == 0o644
    (tmp_path / "other").mkdir()
    _, other_key = write_pair(tmp_path / "other", "other.example")
    with pytest.raises(ssl.SSLError, match="is not the private key of the certificate"):
        ServerCertificate(cert, other_key, "smtp.tls_key")
    csv = tmp_path / "contacts.csv"
    csv.write_text("email\njane@example.net\n")
    csv.chmod(0o644)
    with pytest.raises(ConfigError, match="neither a PEM RSA key"):
        load_keys((DkimSettings("example.com", "s1", str(csv)),))
    assert csv.stat().st_mode & 0o777 == 0o644
