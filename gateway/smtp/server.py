"""aiosmtpd's SMTP protocol, hardened: strict CRLF, connection limits, 451 on errors.

aiosmtpd's defaults are not ours: auth is optional (an open relay), handle_exception answers
500 (the client then drops the mail), and bare LF is accepted as a line end in commands.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import sys
import time
from collections import Counter
from typing import Any

from aiosmtpd.smtp import SMTP, TLSSetupException, syntax

from gateway.peers import client_key, is_loopback
from gateway.settings import SmtpSettings
from gateway.smtp import replies
from gateway.tls import ServerCertificate
from gateway.transform.lines import has_bare_line_end

log = logging.getLogger("gateway.smtp")


class BareNewline(Exception):
    """A bare CR or LF in a command or DATA (SMTP smuggling; Postfix smtpd_forbid_bare_newline)."""


class LineTooLong(Exception):
    """An AUTH answer over the line length limit (discarded, the session goes on)."""


class StrictLineReader(asyncio.StreamReader):
    """A StreamReader whose lines must end in CRLF and hold no other CR or LF.

    Installed by swapping `__class__` on aiosmtpd's reader, so no __init__ of ours runs.
    """

    _discarded_cr = False  # the last read() (aiosmtpd discarding an overlong line) ended in CR
    _stopped = False  # see stop()
    _overlong_bare_lf = False  # the overlong line readuntil last refused ended in a bare LF

    def stop(self) -> None:
        """Read nothing more: drop what is buffered, and make every later read wait until the
        session is cancelled (the transport's close ends it).

        Closing the transport is not enough: a TLS close takes round trips, and meanwhile
        aiosmtpd's loop would go on running the commands the client pipelined after the
        offending line, out of the buffer, without ever waiting on the socket.
        """
        self._stopped = True
        self._buffer.clear()  # type: ignore[attr-defined]

    async def _wait_for_the_end(self) -> bytes:
        await asyncio.get_running_loop().create_future()  # cancelled with the session
        return b""

    async def read(self, n: int = -1) -> bytes:
        if self._stopped:
            return await self._wait_for_the_end()
        data = await super().read(n)
        self._discarded_cr = data.endswith(b"\r")
        return data

    async def readline(self) -> bytes:
        """aiosmtpd reads AUTH answers with readline: a line over the limit is discarded by
        StreamReader up to its LF, and a bare one there would go unseen."""
        try:
            return await super().readline()
        except ValueError:  # StreamReader's word for a line over the limit
            if self._overlong_bare_lf:
                self.stop()
                raise BareNewline() from None
            raise LineTooLong() from None

    async def readuntil(self, separator: bytes = b"\n") -> bytes:  # type: ignore[override]
        # aiosmtpd only ever asks for one separator, so the narrower signature is enough
        if self._stopped:
            return await self._wait_for_the_end()
        try:
            line = await super().readuntil(separator)
        except asyncio.LimitOverrunError as exc:
            buffer = self._buffer  # type: ignore[attr-defined]
            self._overlong_bare_lf = (buffer[exc.consumed:exc.consumed + 1] == b"\n"
                                      and buffer[exc.consumed - 1:exc.consumed] != b"\r")
            raise
        split_crlf = self._discarded_cr and line == b"\n"  # an overlong line's CR|LF split
        self._discarded_cr = False
        if split_crlf:
            return line
        body = line[:-2]
        if not line.endswith(b"\r\n") or b"\r" in body or b"\n" in body:
            self.stop()
            raise BareNewline()
        return line


DATA_CHUNK_LIMIT = 1 << 20  # bytes the reader may buffer while looking for the end
LINE_CHECK_SLICE = 1 << 16  # bytes of lines split at once by the line-length check
REFUSAL_LOG_SECONDS = 60.0
DATA_END = b"\r\n.\r\n"


# "<@relay:user@domain>": aiosmtpd silently strips the route (RFC 5321 Appendix C lets a server
# ignore it); we refuse it instead: a routed address is a relaying trick, never a mailbox.
SOURCE_ROUTE = re.compile(r"<\s*@")
MAX_TEXT_LINE = 998  # octets of a line's content, CRLF excluded
# RFC 4954 5: MAIL FROM's AUTH=<mailbox as xtext> or AUTH=<>, which an MTA relaying through
# us after it authenticated sends (sendmail does); "parse and discard" is what it asks of a
# server that trusts no client's claim, as this one does not
AUTH_PARAMETER = re.compile(r"(?i)(?:^|\s)AUTH=(\S*)")
XTEXT = re.compile(r"<>|(?:[!-*,-<>-~]|\+[0-9A-F]{2})+")


_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
PLAIN_ANGLE_ADDRESS = re.compile(
    rf"\s*<(({_ATEXT}(?:\.{_ATEXT})*)@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>")
TRANSACTION_VERBS = ("MAIL", "RCPT", "DATA", "RSET", "QUIT", "EHLO", "HELO")
HARD_ERROR_LIMIT = 20  # 4xx/5xx answers to a client not logged in, then 421 (Postfix's 20)
# answers that count as no error of the client's: the rule book's (a trusted network's tool
# mailing an objector), a sender outside its domains (M1), the recipient limit, our own
# store or ledger failing
_NOT_THE_CLIENTS_ERROR = re.compile(rb"55[03] 5\.7\.1 [RTM]\d|452 |451 ")
# the replies of a message taken (mail, or an objection by mail): the error count restarts
_MESSAGE_TAKEN = re.compile(rb"250 2\.0\.0 (?:\S+ Message accepted|Unsubscribe request)")
UNLIMITED = 2**62


class GatewaySMTP(SMTP):
    """One instance per connection (asyncio protocol)."""

    _dir_names: list[str] | None = None

    def __dir__(self) -> list[str]:
        """Only the smtp_* and auth_* names.

        aiosmtpd builds its command and AUTH tables from dir() / inspect.getmembers() of every
        new connection, which walks ~300 attributes: 70% of the cost of accepting a
        connection (bench/README.md). Those prefixes are all it looks for.
        """
        cls = type(self)
        if cls._dir_names is None:
            cls._dir_names = sorted(name for name in object.__dir__(self)
                                    if name.startswith(("smtp_", "auth_")))
        return list(cls._dir_names)

    def __init__(self, handler: Any, *, settings: SmtpSettings, connections: Counter[str],
                 certificate: ServerCertificate | None, accepting: asyncio.Event,
                 sessions: set[GatewaySMTP] | None = None) -> None:
        self._certificate = certificate
        super().__init__(
            handler,
            data_size_limit=settings.max_message_bytes,
            enable_SMTPUTF8=True,
            hostname=settings.hostname,
            ident="ESMTP",
            tls_context=certificate.context() if certificate is not None else None,
            timeout=settings.idle_timeout,
            auth_required=False,  # enforced by the handler at MAIL/RCPT: see handler.py
            auth_require_tls=True,
            # Postfix-like: transaction commands are not capped per session (a client may reuse
            # a connection for many messages); everything else (NOOP, VRFY, AUTH, RSET, HELP,
            # unknown verbs ...) is, against sessions that only waste a slot.
            command_call_limit={**dict.fromkeys(TRANSACTION_VERBS, UNLIMITED),
                                "*": settings.max_commands},
        )
        self.gateway_settings = settings
        self._connections = connections
        self._accepting = accepting
        self._sessions = sessions if sessions is not None else set()
        self._client_ip = ""
        self._counted = False
        self._client_key = ""  # gateway.peers.client_key: what the per-IP cap counts
        self._idle_deadline = 0.0  # see _reset_timeout
        self._committing = False  # the end of DATA is ours to answer: not the client idling
        self._stop_after_reply = False  # a stop came while committing: see close_for_stop
        self._abort_handle: asyncio.TimerHandle | None = None  # see _abort_later
        self._errors = 0  # 4xx/5xx answers to a client not logged in (push)
        self._trusted = False  # the client's address is in smtp.trusted_clients

    @property
    def tls_active(self) -> bool:
        """Whether the session went through STARTTLS (the Received field's `with`)."""
        return self._tls_protocol is not None

    @property
    def client_ip(self) -> str:
        return self._client_ip

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        super().connection_made(transport)
        if not first:
            return  # STARTTLS: same client, new session
        peer = transport.get_extra_info("peername")
        self._client_ip = peer[0] if peer else ""
        if self._client_ip.startswith("::ffff:") and "." in self._client_ip:
            # an IPv4 client of a dual-stack socket (smtp.processes > 1 on "[::]"): matched
            # against smtp.trusted_clients, the per-IP limits and the loopback rule as IPv4
            self._client_ip = self._client_ip[7:]
        if (self.gateway_settings.allow_plain_auth_on_loopback
                and is_loopback(self._client_ip)):
            self._auth_require_tls = False  # development only, explicitly configured
        self._reader.__class__ = StrictLineReader
        self._trusted = any(client.contains(self._client_ip)
                            for client in self.gateway_settings.trusted_clients)
        # IPv6: the /64, as the HTTP side counts (one host has a /64 to take turns with);
        # a trusted client by its own address (the operator's tools may share a subnet)
        self._client_key = self._client_ip if self._trusted else client_key(self._client_ip)
        self._connections[self._client_key] += 1
        self._counted = True
        self._sessions.add(self)
        too_many = (self._connections[self._client_key]
                    > self.gateway_settings.max_connections_per_ip)
        # in all, but the operator's tools: a flood from many addresses took every file
        # descriptor, and one-click POSTs and deliveries failed with it (security review)
        full = (not self._trusted
                and len(self._sessions) > self.gateway_settings.max_connections)
        if too_many or full or not self._accepting.is_set():
            reply = (replies.TOO_MANY_CONNECTIONS if too_many else replies.SERVER_FULL
                     if full else replies.SHUTTING_DOWN)
            _say_refused(self._client_ip, reply)
            if self._handler_coroutine is not None:
                self._handler_coroutine.cancel()
            transport.write(reply.encode() + b"\r\n")  # type: ignore[attr-defined]
            transport.close()
            self._abort_later()

    def connection_lost(self, error: Exception | None) -> None:
        if self._abort_handle is not None:
            self._abort_handle.cancel()
        self._release()
        self._end_transaction()
        super().connection_lost(error)

    def eof_received(self) -> bool | None:
        """The client closed its side: the session is over.

        aiosmtpd cancels the session task, and that task closes the transport, but only if it
        had started: a client that connects and closes before the greeting (a TCP health
        check, a port scan) would otherwise keep its slot in the per-IP count, and a drain
        would wait for it, until the idle timeout.
        """
        super().eof_received()
        return False  # let the transport close now

    def _set_post_data_state(self) -> None:
        """aiosmtpd discards the envelope here (after DATA, RSET, HELO/EHLO)."""
        self._end_transaction()
        super()._set_post_data_state()  # type: ignore[no-untyped-call]

    def _end_transaction(self) -> None:
        envelope = getattr(self, "envelope", None)
        ended = getattr(self.event_handler, "transaction_ended", None)
        if envelope is not None and ended is not None:
            ended(self, envelope)

    async def smtp_MAIL(self, arg: str) -> None:
        if not self._accepting.is_set() and self.transport is not None:
            # a stop: the message in progress was finished, no new one starts (RFC 5321
            # 3.8). A client pipelining its next MAIL after the dot had another accepted
            # before the drain's next round closed the session: dozens in 0.1 s.
            self.transport.write(replies.SHUTTING_DOWN.encode() + b"\r\n")  # type: ignore[attr-defined]
            self._close_now()
            return
        if arg and SOURCE_ROUTE.search(arg):
            await self.push(replies.SOURCE_ROUTE)
            return
        if arg and "=" in arg:
            found = AUTH_PARAMETER.search(arg)
            if found is not None:
                if not XTEXT.fullmatch(found.group(1)):
                    await self.push(replies.BAD_AUTH_PARAMETER)
                    return
                arg = arg[:found.start()] + arg[found.end():]  # discarded (RFC 4954 5)
        await super().smtp_MAIL(arg)

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str) -> None:
        """aiosmtpd's, refused inside TLS: it said 220 and stacked a TLS layer on the first,
        and the session broke with a traceback in the log."""
        if arg:
            await self.push(replies.STARTTLS_SYNTAX)
            return
        if self._tls_protocol is not None:
            await self.push(replies.TLS_ALREADY_ACTIVE)
            return
        if self._certificate is not None:  # a renewed certificate, once its files change
            self.tls_context = self._certificate.context()
        await super().smtp_STARTTLS(arg)

    @syntax("HELP [command]")
    async def smtp_HELP(self, arg: str) -> None:
        """aiosmtpd's, answered 214 (RFC 5321 4.3.2 allows 211, 214, 502 or 504 to HELP; it
        said 250) with an enhanced status code, as EHLO's ENHANCEDSTATUSCODES promises."""
        if await self.check_auth_needed("HELP"):
            return
        method = self._documented(arg.upper()) if arg else None
        if method is not None:
            help_str = method.__smtp_syntax__
            assert self.session is not None
            if self.session.extended_smtp and method.__smtp_syntax_extended__:
                help_str += method.__smtp_syntax_extended__
            await self.push("214 2.0.0 Syntax: " + help_str)
            return
        commands = " ".join(sorted(name for name in self._smtp_methods
                                   if self._documented(name) is not None))
        await self.push(f"{'504 5.5.4' if arg else '214 2.0.0'} Supported commands: {commands}")

    def _documented(self, name: str) -> Any:
        """The method of command `name` that carries its syntax, if offered now: ours, or
        aiosmtpd's that ours extends (an override without @syntax left MAIL, RCPT and DATA
        out of aiosmtpd's HELP)."""
        if name not in self._smtp_methods:
            return None
        ours = self._smtp_methods[name]
        method = ours if hasattr(ours, "__smtp_syntax__") else getattr(
            SMTP, f"smtp_{name}", None)
        if method is None or not hasattr(method, "__smtp_syntax__"):
            return None
        when = getattr(method, "__smtp_syntax_when__", None)
        return method if not when or getattr(self, when, None) else None

    async def smtp_AUTH(self, arg: str) -> None:
        envelope = self.envelope
        if envelope is not None and envelope.mail_from is not None:
            await self.push(replies.AUTH_IN_TRANSACTION)  # RFC 4954 4
            return
        await super().smtp_AUTH(arg)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's address parser, with a fast path for a plain <local@domain>.

        aiosmtpd parses every MAIL and RCPT argument with the email package's RFC 5322 header
        parser (and defines a typing.Protocol class per call): a tenth of the CPU of a RCPT
        here. A dot-atom local part and a plain host name, in angle brackets, is what nearly
        every client sends and parses to itself; anything else takes aiosmtpd's own path.
        """
        match = PLAIN_ANGLE_ADDRESS.match(arg)
        if match is None:
            return super()._getaddr(arg)
        address, local = match.group(1), match.group(2)
        if self.local_part_limit and len(local) > self.local_part_limit:
            return None, None
        return address, arg[match.end():].lstrip()

    async def smtp_RCPT(self, arg: str) -> None:
        if arg and SOURCE_ROUTE.search(arg):
            await self.push(replies.SOURCE_ROUTE)
            return
        await super().smtp_RCPT(arg)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """DATA read in bulk (aiosmtpd reads and checks it line by line, in Python).

        Same replies and limits as aiosmtpd's, plus the smuggling rule: a bare CR or LF anywhere
        in the data gets 521 and the session is closed, so nothing after it is ever read as a
        command or as a second message (Postfix smtpd_forbid_bare_newline).
        """
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push(replies.NEED_RECIPIENT)
            return
        if arg:
            await self.push(replies.DATA_SYNTAX)
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        ignored = getattr(self.event_handler, "content_ignored", None)
        if ignored is not None and ignored(self.envelope):
            # unsubscribe+TOKEN@ recipients only (no AUTH needed): the mail is the objection,
            # its content read and dropped, not held (50 sessions of 25 MB from one address)
            raw, too_much = await self._read_data(keep=0)
            raw = raw if too_much else b""
        else:
            raw, too_much = await self._read_data(keep=sys.maxsize)
        # (too much: `raw` is the last chunk only, maybe from the middle of a CRLF; the
        # message is refused whole, so nothing in it is ever read or relayed)
        if not too_much and has_bare_line_end(raw):
            log.warning("%s sent a bare CR or LF in DATA: closing the session", self._client_ip)
            self._reader.stop()  # type: ignore[attr-defined]
            await self.push(replies.BARE_NEWLINE)
            self._set_post_data_state()
            self._close_now()
            return
        if too_much:
            self._log_refusal(f"552 over smtp.max_message_bytes ({self.data_size_limit})")
            await self.push("552 Error: Too much mail data")
        elif self._has_long_line(raw):
            self._log_refusal("500 a line over 1000 octets (RFC 5321 4.5.3.1.6)")
            await self.push("500 Line too long (see RFC5321 4.5.3.1.6)")
        else:
            # RFC 5321 4.5.2: remove the dot a client added to lines starting with a dot
            content = raw[1:] if raw.startswith(b".") else raw
            content = content.replace(b"\r\n.", b"\r\n")
            self.envelope.content = self.envelope.original_content = content
            self._committing = True
            try:
                status = await self._call_handler_hook("DATA")
            except Exception:
                # answered by handle_exception (451); the transaction is over all the same:
                # kept, the client's next MAIL got "503 nested MAIL command"
                self._set_post_data_state()
                raise
            finally:
                self._committing = False  # and the client's idle time starts from the answer
                self._idle_deadline = self.loop.time() + self._timeout_duration
            self._set_post_data_state()
            await self.push(status)
            return
        self._set_post_data_state()

    def _log_refusal(self, why: str) -> None:
        """A message refused at DATA by the protocol's limits, logged as the policy's refusals
        are (handler.handle_DATA): who, which envelope, why."""
        assert self.envelope is not None
        account = getattr(self.session, "gateway_account", None)
        log.info("%s refused from=<%s> account=%s nrcpt=%d: %s", self._client_ip,
                 self.envelope.mail_from, account.name if account is not None else "-",
                 len(self.envelope.rcpt_tos), why)

    def _has_long_line(self, raw: bytes) -> bool:
        """RFC 5321 4.5.3.1.6: 1000 octets a line with its CRLF, not counting the dot a client
        stuffed (aiosmtpd allows 1001 in all). C-level splits (far cheaper than a regex that
        tries every position), slice by slice: one split of the whole data made an object per
        line, 300 MB for 25 MB of two-octet lines (security review)."""
        limit = MAX_TEXT_LINE
        if len(raw) <= limit:
            return False
        start, size = 0, len(raw)
        while start < size:
            end = raw.find(b"\r\n", min(start + LINE_CHECK_SLICE, size))  # at a line end
            end = size if end < 0 else end
            lines = raw[start:end].split(b"\r\n")
            if max(map(len, lines)) > limit and any(
                    len(line) > limit + line.startswith(b".") for line in lines
                    if len(line) > limit):
                return True
            start = end + 2
        return False

    async def _read_data(self, keep: int) -> tuple[bytes, bool]:
        """The data up to the final CRLF.CRLF (excluded but for the last line's CRLF), and
        whether it exceeded the size limit. Past `keep` bytes (or the size limit) only the
        last chunk is kept, for the checks; the rest is read and dropped.

        Read by CRLF.CRLF, the end itself, in chunks of up to DATA_CHUNK_LIMIT: read by
        ".\r\n", every line ending in a dot was a turn of this loop and an object kept to the
        end (25 MB of "a." lines: 780 MB and 8 s of the event loop, before any AUTH; security
        review). The one end CRLF.CRLF cannot find is an empty message's, whose CRLF is the
        DATA command's own: the first three octets are read to see it.
        """
        reader = self._reader
        limit = self.data_size_limit or 0
        first = await asyncio.StreamReader.readexactly(reader, 3)
        if first == b".\r\n":
            return b"", False
        # put back: the end may begin in them ("\r\n." of an empty first line)
        reader._buffer[0:0] = first  # type: ignore[attr-defined]
        chunks: list[bytes] = []
        size = 0
        too_much = False
        # StreamReader's limit is aiosmtpd's line length limit: raised for this read only
        saved_limit = reader._limit  # type: ignore[attr-defined]
        reader._limit = max(saved_limit, DATA_CHUNK_LIMIT)  # type: ignore[attr-defined]
        try:
            while True:
                try:
                    chunk = await asyncio.StreamReader.readuntil(reader, DATA_END)
                except asyncio.LimitOverrunError as exc:  # a stretch without the end: the
                    # reader leaves the last 4 octets, where the end may begin
                    chunk = await asyncio.StreamReader.read(reader, exc.consumed)
                size += len(chunk)
                if limit and size - 3 > limit:
                    too_much = True
                if too_much or size > keep:
                    chunks.clear()  # memory bounded: the message is refused or ignored
                chunks.append(chunk)
                if chunk.endswith(DATA_END):
                    break
        finally:
            reader._limit = saved_limit  # type: ignore[attr-defined]
        return b"".join(chunks)[:-3], too_much

    async def smtp_QUIT(self, arg: str) -> None:
        await super().smtp_QUIT(arg)
        # After QUIT the session is over, even if a TLS peer never sends its close_notify (the
        # TLS layer then waits up to 30 s before connection_lost): do not hold a drain for it.
        self._release()
        self._abort_later()

    def _release(self) -> None:
        """Stop counting this session (once) in the per-IP table the drain watches."""
        if self._counted:
            self._counted = False
            self._sessions.discard(self)
            self._connections[self._client_key] -= 1
            if self._connections[self._client_key] <= 0:
                del self._connections[self._client_key]

    def close_for_stop(self, idle_only: bool) -> bool:
        """A stop: say 421 (RFC 5321 3.8) and close, now. `idle_only`: only a session
        between transactions (a client that keeps its connection open for the next message:
        the drain would otherwise wait its whole time for it); one in a transaction is left
        to finish its message. Whether it was closed.

        A session whose message is being committed is not closed now, whatever `idle_only`:
        its DATA reply (250, or 451 if the commit fails) goes out first, then the 421. A 421
        now, with the shielded commit going on, and the client would send the message again,
        delivered twice (as `_idle_check` guards too); `committing` tells the stop to wait."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        if self._committing:
            self._stop_after_reply = True
            return False
        envelope = self.envelope
        if idle_only and envelope is not None and envelope.mail_from is not None:
            return False  # (after DATA, the envelope is reset only once its 250 is written)
        transport.write(replies.SHUTTING_DOWN.encode() + b"\r\n")  # type: ignore[attr-defined]
        if self._handler_coroutine is not None:
            self._handler_coroutine.cancel()
        self._close_now()
        return True

    @property
    def committing(self) -> bool:
        """Its message is being committed: the client waits for the DATA reply."""
        return self._committing

    def _close_after_reply(self) -> None:
        """The stop that came while committing (close_for_stop): 421 and close, now that the
        DATA reply is written; nothing the client pipelined after it is read."""
        self._stop_after_reply = False
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(replies.SHUTTING_DOWN.encode() + b"\r\n")  # type: ignore[attr-defined]
        self._reader.stop()  # type: ignore[attr-defined]
        self._close_now()
        if self._handler_coroutine is not None:
            self._handler_coroutine.cancel()

    async def push(self, status: str | bytes) -> None:
        raw = status.encode("utf-8") if isinstance(status, str) else status
        if raw[:1] in b"45" and not self._trusted and not _NOT_THE_CLIENTS_ERROR.match(raw) \
                and not (self.session is not None and self.session.authenticated):
            # Postfix's smtpd_hard_error_limit (20 errors without delivering mail): a client
            # neither logged in nor in trusted_clients that keeps being refused (530 to RCPT
            # after RCPT, guessed unsubscribe tokens, garbage) held a slot and filled the log
            # for ever; it is cut off. Our own 451 and the recipient limit's 452 are no error
            # of the client's; a message accepted starts the count again.
            self._errors += 1
            if self._errors > HARD_ERROR_LIMIT:
                log.warning("%s: %d errors in one session without a message accepted: "
                            "closing it", self._client_ip, self._errors)
                await super().push(replies.TOO_MANY_ERRORS)
                self._close_now()
                if self._handler_coroutine is not None:
                    # nothing the client pipelined after it is read as a command (a DATA
                    # already in the buffer was committed after the 421 over TLS)
                    self._handler_coroutine.cancel()
                return
        elif _MESSAGE_TAKEN.match(raw):
            self._errors = 0
        raw = replies.AIOSMTPD_REWRITES.get(raw, raw)
        await super().push(replies.with_enhanced_code(raw) if raw[:1] in b"45" else raw)
        if self._stop_after_reply and not self._committing:  # that was the DATA reply
            self._close_after_reply()

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, BareNewline):
            log.warning("%s sent a bare CR or LF: closing the session", self._client_ip)
            # After the reply is written; the rest of the input must not be read as commands.
            self.loop.call_soon(self._close_now)
            return replies.BARE_NEWLINE
        if isinstance(error, LineTooLong):
            return replies.LINE_TOO_LONG
        if isinstance(error, TLSSetupException):
            # a client that cannot agree on TLS (old protocol, no common cipher, a scanner):
            # its business, not a fault of ours; aiosmtpd closes the connection
            log.info("%s STARTTLS handshake failed: %s", self._client_ip,
                     error.__cause__ or error)
            return replies.SHUTTING_DOWN  # not sent: the connection is closed
        log.error("%s session error: %r", self._client_ip, error,
                  exc_info=(type(error), error, error.__traceback__))
        return replies.INTERNAL_ERROR

    def _reset_timeout(self, duration: float | None = None) -> None:
        """Move the idle deadline. aiosmtpd cancels its timer and schedules a new one on every
        command; here one timer per session re-arms itself for the rest when it fires early,
        and is replaced only when the deadline comes sooner than it fires."""
        span = duration or self._timeout_duration
        deadline = self.loop.time() + span
        self._idle_deadline = deadline
        handle = self._timeout_handle
        if handle is None or handle.cancelled() or handle.when() > deadline or \
                handle.when() <= self.loop.time():
            if handle is not None:
                handle.cancel()
            self._timeout_handle = self.loop.call_later(span, self._idle_check)

    def data_received(self, data: bytes) -> None:
        """Idle means nothing arriving: a long DATA transfer that keeps coming is not idle
        (RFC 5321 4.5.3.2 times each data block, not the whole DATA; aiosmtpd moves the
        deadline per command only). Moving the deadline is all it costs: the timer re-arms
        itself when it fires early."""
        self._idle_deadline = self.loop.time() + self._timeout_duration
        super().data_received(data)

    def _idle_check(self) -> None:
        remaining = self._idle_deadline - self.loop.time()
        if self._committing:
            # the client waits for our 250 (a commit behind a busy store, up to its 5 s busy
            # timeout and more): a 421 now, and the message committed after it, and the
            # client's retry would send it twice
            remaining = max(remaining, self._timeout_duration)
        if remaining > 0:
            self._timeout_handle = self.loop.call_later(remaining, self._idle_check)
        else:
            self._timeout_cb()

    def _timeout_cb(self) -> None:
        # aiosmtpd closes silently; say why first, as Postfix does ("421 4.4.2 ... timeout")
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(replies.IDLE_TIMEOUT.encode() + b"\r\n")  # type: ignore[attr-defined]
        log.info("%s idle for %.0f s: session closed", self._client_ip,
                 self.gateway_settings.idle_timeout)
        super()._timeout_cb()  # type: ignore[no-untyped-call]
        self._abort_later()

    def _close_now(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self._abort_later()

    def _abort_later(self) -> None:
        """A closing transport waits until its write buffer drains, for ever if the client
        reads nothing: the session, its per-IP slot and a stop's drain with it. Abort it if
        it is still open an idle timeout after the close."""
        if self._abort_handle is None:
            self._abort_handle = self.loop.call_later(self._timeout_duration, self._abort)

    def _abort(self) -> None:
        if self.transport is not None:
            log.info("%s read nothing of the last replies: connection aborted", self._client_ip)
            self.transport.abort()  # type: ignore[attr-defined]


_refusals = {"last": 0.0, "since": 0}  # refused connections, said once a minute at most


def _say_refused(client_ip: str, reply: str) -> None:
    """A refused connection, logged once a minute at most with how many were refused since:
    under a flood, one line per connection was the flood again, in the log."""
    now = time.monotonic()
    _refusals["since"] += 1
    if now - _refusals["last"] < REFUSAL_LOG_SECONDS:
        return
    log.warning("refusing connection from %s: %s (%d refused in the last minute)",
                client_ip, reply, _refusals["since"])
    _refusals["last"], _refusals["since"] = now, 0


async def start_smtp_server(handler: Any, settings: SmtpSettings, host: str, port: int,
                            certificate: ServerCertificate | None, accepting: asyncio.Event,
                            connections: Counter[str],
                            sock: socket.socket | None = None,
                            sessions: set[GatewaySMTP] | None = None) -> asyncio.Server:
    """Create the listening server on the running loop (not aiosmtpd's threaded Controller).

    `connections` counts open sessions per client IP; the caller reads it to drain on stop.
    """
    loop = asyncio.get_running_loop()

    def factory() -> GatewaySMTP:
        return GatewaySMTP(handler, settings=settings, connections=connections,
                           certificate=certificate, accepting=accepting, sessions=sessions)

    if sock is not None:  # shared with sibling processes (smtp.processes > 1)
        return await loop.create_server(factory, sock=sock, backlog=1024)
    return await loop.create_server(factory, host=host, port=port, reuse_address=True,
                                    backlog=1024)
