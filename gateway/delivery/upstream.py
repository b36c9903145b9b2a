"""Where copies go: a Transport protocol, the upstream SMTP relay, and the local Maildir.

Transports raise TemporaryFailure (4xx, connection trouble: retry later) or PermanentFailure
(5xx: fail and bounce). Anything else is treated as temporary by the worker.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from typing import Protocol

import aiosmtplib

from gateway.addresses import ascii_domain
from gateway.delivery import fastdata
from gateway.delivery.maildir import MaildirDelivery
from gateway.errors import ConfigError, PermanentFailure, TemporaryFailure
from gateway.settings import DeliverySettings

log = logging.getLogger(__name__)

# A pooled connection idle longer is closed rather than reused: many relays close theirs
# after 30-60 s of silence (Postfix reuses one for 2 s by default, smtp_connection_cache_time_limit)
IDLE_SECONDS = 15.0
# What a copy may grow by on its way out (the notice in each text part, the unsubscribe
# fields, Received, DKIM-Signature: a few KB; a text part re-encoded may grow more): an
# upstream whose SIZE leaves less room than this over smtp.max_message_bytes bounces copies
# of messages the gateway accepted near its limit
GROWTH_HEADROOM = 64 * 1024
# RFC 5321 4.5.3.2: a client waits at least 5 minutes for the greeting, MAIL and RCPT
# (Postfix: smtp_helo_timeout, smtp_mail_timeout, smtp_rcpt_timeout, smtp_starttls_timeout
# all 300 s). Those and EHLO, STARTTLS and AUTH wait this or delivery.timeout_seconds,
# whichever is longer; delivery.timeout_seconds alone bounds the TCP connect (Postfix:
# smtp_connect_timeout). With 60 s for every step, an upstream that tarpits or verifies the
# recipient by callout never took the copy: deferred at each try, bounced at max_age_hours.
COMMAND_SECONDS = 300.0
# Reply waits in a connection beyond the greeting, at most: EHLO and HELO after it (HELO
# when EHLO is refused), STARTTLS, both again under TLS, AUTH in two exchanges with each of
# up to three mechanisms (aiosmtplib tries the next when one is refused)
CONNECTION_COMMANDS = 1 + 2 + 1 + 2 + 6
TRANSACTION_COMMANDS = 3  # MAIL, RCPT, and RSET after a refusal (counted at the longest)


class Transport(Protocol):
    async def send(self, mail_from: str, recipient: str, content: bytes,
                   smtputf8: bool = False) -> str:
        """Deliver one copy; return the upstream's answer (for the log). `smtputf8`: the
        client's MAIL asked for SMTPUTF8."""

    async def close(self) -> None:
        """Release connections."""


class MaildirTransport:
    """The embedded default: copies land in a local Maildir, so a new user sees mail flow."""

    def __init__(self, root: str) -> None:
        self.maildir = MaildirDelivery(root)

    async def send(self, mail_from: str, recipient: str, content: bytes,
                   smtputf8: bool = False) -> str:
        try:
            name = await self.maildir.deliver(mail_from, recipient, content)
        except OSError as exc:  # disk full, permissions: the copy stays queued
            raise TemporaryFailure(f"maildir write failed: {exc}") from exc
        return f"maildir {name}"

    async def close(self) -> None:
        return None


class SmtpTransport:
    """Upstream relay through aiosmtplib with a pool of reused connections.

    With `starttls = true` the connection must be upgraded before anything is sent:
    aiosmtplib raises when the server does not offer STARTTLS, so neither credentials nor mail
    ever cross in clear text.
    """

    def __init__(self, settings: DeliverySettings, local_hostname: str,
                 accepted_bytes: int = 0) -> None:
        self.settings = settings
        self.local_hostname = settings.helo_name or local_hostname
        self.accepted_bytes = accepted_bytes  # smtp.max_message_bytes: checked once
        self._size_checked = accepted_bytes <= 0
        self._idle: list[tuple[aiosmtplib.SMTP, float]] = []  # (connection, last used)
        fastdata.install()
        self._tls_context: ssl.SSLContext | None = None
        if settings.starttls:
            try:
                self._tls_context = ssl.create_default_context(
                    cafile=settings.tls_ca_file or None)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"delivery.tls_ca_file {settings.tls_ca_file}: cannot load "
                                  f"the certificates: {exc}") from None

    async def _connect(self) -> aiosmtplib.SMTP:
        s = self.settings
        command = command_seconds(s)
        # the TCP connect is ours, so that delivery.timeout_seconds bounds it and the
        # greeting, STARTTLS and AUTH wait `command` (aiosmtplib's connect gives the TCP
        # connect and the greeting one timeout)
        sock = await _open_socket(s.host, s.port, s.timeout_seconds)
        try:
            client = aiosmtplib.SMTP(
                hostname=s.host, sock=sock, local_hostname=self.local_hostname,
                timeout=command, start_tls=s.starttls, tls_context=self._tls_context,
                username=s.username or None, password=s.password or None)
        except BaseException:
            sock.close()
            raise
        try:
            await client.connect()
            if client.is_ehlo_or_helo_needed:
                # here, not with the first transaction: a 5xx to EHLO/HELO (a relay that
                # refuses our HELO name) is the gateway's link to the upstream, retried, not
                # the copy's (it failed and bounced every copy when starttls was off)
                try:
                    await client.ehlo(timeout=command)
                except aiosmtplib.SMTPHeloError:
                    await client.helo(timeout=command)
        except BaseException:  # a failure or a cancellation half-way: no socket left open
            client.close()
            raise
        if not self._size_checked:
            self._size_checked = True
            self._check_size(client.esmtp_extensions.get("size", ""))
        return client

    def _check_size(self, advertised: str) -> None:
        """Warn, once, when the upstream's SIZE (RFC 1870) leaves less than GROWTH_HEADROOM
        over what the gateway accepts: a message accepted near smtp.max_message_bytes grows
        by the notice and the fields, and the upstream bounces its copies (552 and a DSN)."""
        try:
            limit = int(advertised.split()[0]) if advertised.strip() else 0
        except ValueError:
            return
        if 0 < limit < self.accepted_bytes + GROWTH_HEADROOM:
            log.warning("upstream %s:%d takes messages of at most %d bytes (SIZE), and the "
                        "gateway accepts up to %d (smtp.max_message_bytes) and adds its notice "
                        "and fields: copies of messages near that size will bounce; set "
                        "smtp.max_message_bytes to %d or less", self.settings.host,
                        self.settings.port, limit, self.accepted_bytes,
                        max(0, limit - GROWTH_HEADROOM))

    def _pooled(self) -> aiosmtplib.SMTP | None:
        """An idle connection still open and used within IDLE_SECONDS, else None (the others
        are closed: the upstream's own idle timeout, 421 or a silent close, would make the
        next copy on them fail and be deferred)."""
        now = time.monotonic()
        while self._idle:
            client, since = self._idle.pop()
            if client.is_connected and now - since < IDLE_SECONDS:
                return client
            client.close()
        return None

    async def send(self, mail_from: str, recipient: str, content: bytes,
                   smtputf8: bool = False) -> str:
        # One retry on a fresh connection: a pooled one may have been closed by the server.
        for attempt in (1, 2):
            client = self._pooled() if attempt == 1 else None
            fresh = client is None
            try:
                if client is None:
                    client = await self._connect()
            except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
                # the greeting, EHLO, STARTTLS or AUTH refused: the gateway's own link to the
                # upstream (a rotated delivery.password, say), not this copy: retried until
                # it is fixed or delivery.max_age_hours, never failed at once for every copy
                # (Postfix: smtp_sasl_auth_soft_bounce)
                # the reply first and its sender named: an expiry's DSN gives them as
                # `smtp; <reply>` and Remote-MTA (it said "X-Gateway; upstream connection:")
                said = _classify(exc, self.settings.host)
                raise TemporaryFailure(f"{said} (upstream connection)",
                                       getattr(said, "remote_mta", None)) from exc
            try:
                answer = await _transaction(client, mail_from, recipient, content,
                                            command_seconds(self.settings),
                                            self.settings.timeout_seconds, smtputf8)
            except aiosmtplib.SMTPNotSupported as exc:
                # nothing was sent: the connection is still good
                self._idle.append((client, time.monotonic()))
                raise PermanentFailure(f"554 5.6.7 the upstream does not offer SMTPUTF8, "
                                       f"which this address needs: {exc}") from exc
            except LostAfterContent as exc:
                # the upstream may have queued it: deferred, as Postfix does, not sent again
                # at once on a fresh connection (the retry below is for a pooled connection
                # the upstream closed while idle)
                client.close()
                raise TemporaryFailure(f"upstream disconnected during DATA, before the "
                                       f"content's reply (it may have been queued): {exc}"
                                       ) from exc
            except aiosmtplib.SMTPServerDisconnected as exc:
                client.close()
                if fresh or attempt == 2:
                    raise TemporaryFailure(f"upstream disconnected: {exc}") from exc
                continue
            except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
                if getattr(exc, "gateway_reset", False) and getattr(exc, "code", 0) != 421:
                    # refused, and the envelope reset (RSET 250): the connection serves the
                    # next copy (a greylisting upstream cost a connection, TLS and AUTH each)
                    self._idle.append((client, time.monotonic()))
                else:
                    await _discard(client)
                raise _classify(exc, self.settings.host) from exc
            except BaseException:  # cancelled (a stop, the worker's limit): mid-transaction,
                client.close()  # the connection is good for nothing; it was left open
                raise
            self._idle.append((client, time.monotonic()))
            return answer
        raise AssertionError("unreachable")  # pragma: no cover

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for client, _ in idle:
            await _discard(client, polite=True)


class LostAfterContent(aiosmtplib.SMTPException):
    """The connection closed during DATA: aiosmtplib sends the command and the content in
    one call, so this may also be before the 354 (then nothing was sent, and the copy is
    deferred all the same: rare, and the safe side of a duplicate)."""


# RFC 5321 4.5.3.2.6: the reply to the final dot may take 10 minutes (Postfix:
# smtp_data_done_timeout = 600s). With delivery.timeout_seconds (60) for it, an upstream whose
# content filter took longer had the copy, we timed out, and sent it again and again.
DATA_DONE_SECONDS = 600.0


def command_seconds(settings: DeliverySettings) -> float:
    """How long a reply from the upstream is waited for, but the content's (COMMAND_SECONDS,
    or delivery.timeout_seconds when longer)."""
    return max(settings.timeout_seconds, COMMAND_SECONDS)


def longest_delivery(settings: DeliverySettings) -> float:
    """The longest one copy's send() can take while the upstream answers every step in its
    time: a pooled connection's transaction, the upstream found gone, then a new connection
    and the transaction again. Each transaction's DATA waits twice (aiosmtplib gives the 354
    and the content's reply one timeout, DATA_DONE_SECONDS: above the 2 minutes RFC 5321
    4.5.3.2.2 asks for DATA)."""
    command = command_seconds(settings)
    connection = settings.timeout_seconds + (1 + CONNECTION_COMMANDS) * command
    transaction = TRANSACTION_COMMANDS * command + 2 * max(command, DATA_DONE_SECONDS)
    return connection + 2 * transaction


async def _open_socket(host: str, port: int, connect_seconds: float) -> socket.socket:
    """A TCP connection to the first of `host`'s addresses that answers, each address (and
    the name's lookup) given `connect_seconds`, as Postfix's smtp_connect_timeout. The
    errors are those aiosmtplib raises for a connect of its own, in the same words."""
    loop = asyncio.get_running_loop()
    try:
        addresses = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), connect_seconds)
    except TimeoutError:
        raise aiosmtplib.SMTPConnectTimeoutError(
            f"Timed out looking up {host}") from None
    except OSError as exc:
        raise aiosmtplib.SMTPConnectError(
            f"Error connecting to {host} on port {port}: {exc}") from exc
    failure: Exception = aiosmtplib.SMTPConnectError(f"{host}: no address")
    for family, kind, proto, _, address in addresses:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            await asyncio.wait_for(loop.sock_connect(sock, address), connect_seconds)
            return sock
        except TimeoutError:
            failure = aiosmtplib.SMTPConnectTimeoutError(
                f"Timed out connecting to {host} on port {port}")
        except OSError as exc:
            failure = aiosmtplib.SMTPConnectError(
                f"Error connecting to {host} on port {port}: {exc}")
        except BaseException:
            sock.close()
            raise
        sock.close()
    raise failure


def _a_label_form(address: str) -> str:
    """The address with its domain in ASCII (IDNA A-labels) when its local part is ASCII:
    what an upstream without SMTPUTF8 can take (RFC 6531 3.2). Unchanged otherwise."""
    local, at, domain = address.rpartition("@")
    if not at or domain.isascii() or not local.isascii():
        return address
    try:
        return f"{local}@{ascii_domain(domain)}"
    except UnicodeError:
        return address


async def _transaction(client: aiosmtplib.SMTP, mail_from: str, recipient: str,
                       content: bytes, step_seconds: float, rset_seconds: float,
                       requested_utf8: bool = False) -> str:
    """MAIL, RCPT and DATA as aiosmtplib's sendmail does them, but the content's final reply
    waited for up to DATA_DONE_SECONDS (the other steps `step_seconds`, the RSET after a
    refusal `rset_seconds`). The reply's text. A refusal raised after a successful RSET
    carries `gateway_reset = True`."""
    if client.is_ehlo_or_helo_needed:  # a new connection: its extensions are not known yet
        try:
            await client.ehlo(timeout=step_seconds)
        except aiosmtplib.SMTPHeloError:
            await client.helo(timeout=step_seconds)
    options: list[str] = []
    if not (mail_from.isascii() and recipient.isascii()):
        if not client.supports_extension("smtputf8"):  # hans@bücher.example can still go
            mail_from, recipient = _a_label_form(mail_from), _a_label_form(recipient)
        # an address beyond ASCII (the gateway takes them, it offers SMTPUTF8) needs the
        # upstream's SMTPUTF8 too (RFC 6531); without it the copy cannot go: 5.6.7
        if not (mail_from.isascii() and recipient.isascii()):
            options = ["SMTPUTF8"]
    if requested_utf8 and "SMTPUTF8" not in options and client.supports_extension("smtputf8"):
        # the client asked for it (header fields in UTF-8, RFC 6532): passed on, as Postfix
        # does; an upstream without it gets the copy as before (ASCII addresses)
        options = [*options, "SMTPUTF8"]
    if not content.isascii() and client.supports_extension("8bitmime"):
        # RFC 6152 3: 8-bit content (a part the notice was added to in 8bit, say) is
        # declared. A server without 8BITMIME gets it as it is (sendmail's "pass8"): RFC 6152
        # wants it converted to 7 bits, as Postfix does, but the copy is DKIM-signed before
        # the upstream is known, and a conversion now would break the signature. Relays
        # without 8BITMIME are rare; README says so.
        options = [*options, "BODY=8BITMIME"]
    encoding = "ascii"
    if "SMTPUTF8" in options:
        if not client.supports_extension("smtputf8"):
            raise aiosmtplib.SMTPNotSupported("SMTPUTF8 is not supported by this server")
        encoding = "utf-8"
    if client.supports_extension("size"):  # RFC 1870: the octets as sent (CRLF already)
        options = [f"SIZE={len(content)}", *options]
    try:
        await client.mail(mail_from, options=options, encoding=encoding, timeout=step_seconds)
        await client.rcpt(recipient, encoding=encoding, timeout=step_seconds)
        try:
            response = await client.data(content,
                                         timeout=max(step_seconds, DATA_DONE_SECONDS))
        except aiosmtplib.SMTPServerDisconnected as exc:
            raise LostAfterContent(str(exc)) from exc
    except aiosmtplib.SMTPResponseException as exc:
        # the envelope reset for the connection's next copy, as sendmail does. Its answer
        # only decides whether the connection is kept: not waited for minutes with the
        # refusal in hand (Postfix: smtp_rset_timeout = 20s)
        try:
            await client.rset(timeout=rset_seconds)
            exc.gateway_reset = True  # type: ignore[attr-defined]
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            pass
        raise
    return response.message


async def _discard(client: aiosmtplib.SMTP, polite: bool = False) -> None:
    try:
        if polite and client.is_connected:
            await asyncio.wait_for(client.quit(), 5)
    except (TimeoutError, aiosmtplib.SMTPException, OSError):
        pass
    finally:
        client.close()


def _classify(exc: BaseException, remote_mta: str | None = None) -> Exception:
    """5xx answers are permanent; 4xx, timeouts and connection errors are temporary.
    `remote_mta`: who answered (the DSN's Remote-MTA)."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        exc = exc.recipients[0]
    code = getattr(exc, "code", None)
    message = getattr(exc, "message", None) or str(exc) or exc.__class__.__name__
    # aiosmtplib decodes replies with surrogateescape: a Latin-1 byte ("inconnu \xe9")
    # stays a lone surrogate, which neither the DSN nor SQLite can encode. Cleaned once
    # here, so the 5xx fails with its DSN and the 4xx is stored as last_error
    message = message.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    text = f"{code} {message}" if isinstance(code, int) else message
    if isinstance(exc, aiosmtplib.SMTPSenderRefused) and code in GATEWAY_SIDE_REFUSALS:
        # the upstream wants AUTH (or TLS for it) from the gateway: its settings, not this
        # copy. Failing would bounce every copy until an operator noticed; retried, they go
        # once delivery.username / starttls are set (Postfix: smtp_sasl_auth_soft_bounce)
        return TemporaryFailure(f"{text} (the upstream requires authentication: set "
                                f"delivery.username, delivery.password and delivery.starttls)")
    if isinstance(exc, aiosmtplib.SMTPRecipientRefused) and code == 552:
        # RFC 5321 4.5.3.1.10: a 552 to RCPT is the old "too many recipients", to be read
        # as 452 (Postfix does); bounced, a full mailbox's copy was lost for good
        return TemporaryFailure(text, remote_mta)
    if isinstance(code, int) and 500 <= code < 600:
        return PermanentFailure(text, remote_mta)
    # (aiosmtplib's -1 is its own: a reply it could not read)
    return TemporaryFailure(text, remote_mta if isinstance(code, int) and code >= 400 else None)


# RFC 4954 6: 530 authentication required, 538 encryption required for the mechanism
GATEWAY_SIDE_REFUSALS = frozenset({530, 538})


def make_transport(settings: DeliverySettings, local_hostname: str,
                   accepted_bytes: int = 0) -> Transport:
    """`accepted_bytes`: smtp.max_message_bytes, checked against the upstream's SIZE."""
    if settings.mode == "maildir":
        return MaildirTransport(settings.maildir)
    return SmtpTransport(settings, local_hostname, accepted_bytes)
