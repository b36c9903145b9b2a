"""The SMTP upstream as it behaves: slow at every step but within that step's timeout
(delivery.timeout_seconds, or RFC 5321 4.5.3.2's minutes when longer) means one delivery,
not a timeout after it took the copy (and a second copy later); a
delivery cancelled half-way leaves no connection open; a refusal that is the gateway's own
settings (AUTH required) defers the copy instead of bouncing it."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import aiosmtplib
import pytest
from aiosmtpd.controller import Controller

from gateway.delivery.upstream import SmtpTransport
from gateway.delivery.worker import DeliveryService
from gateway.errors import PermanentFailure, TemporaryFailure
from gateway.settings import DeliverySettings
from gateway.store.queue import Copy, IncomingMessage, Prepared, QueueStore, SentMark

from conftest import free_port


class SlowUpstream:
    """Answers each step after `step` seconds (`hang_data`: never answers the content)."""

    def __init__(self, step: float, hang_data: bool = False,
                 data_step: float | None = None) -> None:
        self.step = step
        self.data_step = step if data_step is None else data_step  # the content's reply
        self.hang_data = hang_data
        self.accepted = 0
        self.sessions: dict[int, bool] = {}  # id(session) -> still connected

    async def handle_EHLO(self, server, session, envelope, hostname, responses):  # noqa: ANN001
        self.sessions[id(session)] = True
        await asyncio.sleep(self.step)
        session.host_name = hostname
        return responses

    async def handle_MAIL(self, server, session, envelope, address, options):  # noqa: ANN001
        await asyncio.sleep(self.step)
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, options):  # noqa: ANN001
        await asyncio.sleep(self.step)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: ANN001
        if self.hang_data:
            await asyncio.sleep(3600)
        await asyncio.sleep(self.data_step)
        self.accepted += 1
        return "250 queued"


def upstream(handler: SlowUpstream) -> tuple[Controller, DeliverySettings]:
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    settings = dataclasses.replace(DeliverySettings(), mode="smtp", host="127.0.0.1",
                                   port=port, starttls=False, timeout_seconds=0.5, workers=1)
    return controller, settings


async def deliver_one(db, handler: SlowUpstream, mid: str):
    """One copy through a DeliveryService to `handler`'s upstream; its queue entry once it
    is no longer queued (10 s at most)."""
    controller, settings = upstream(handler)
    queue = QueueStore(db, "me")
    service = DeliveryService(queue, SmtpTransport(settings, "gateway.test"), settings,
                              "gateway.test")

    async def as_stored(copy: Copy) -> Prepared:  # (not about the copy's content)
        return Prepared(copy.content, SentMark(copy.delivery_id))

    service.prepare = as_stored
    await service.start()
    try:
        [copies] = await queue.commit_messages([IncomingMessage(
            mid, time.time(), "crm", "127.0.0.1", "news@example.com",
            b"From: news@example.com\r\nSubject: x\r\n\r\nbody\r\n", ("jane@example.net",))])
        service.dispatch(copies)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            [entry] = await queue.list(states=("queued", "deferred", "failed", "sent"))
            if entry.state != "queued":
                break
            await asyncio.sleep(0.05)
        return entry
    finally:
        await service.stop(drain_seconds=1)
        controller.stop()


async def test_an_upstream_slow_at_every_step_gets_the_copy_once(db):
    handler = SlowUpstream(step=0.4)  # each step within 0.5 s; 4 steps: over 3 x 0.5 s
    entry = await deliver_one(db, handler, "S1")
    assert (entry.state, handler.accepted) == ("sent", 1), entry.last_error


async def test_an_upstream_slow_to_answer_the_content_gets_it_once(db):
    """The final dot's reply took longer than delivery.timeout_seconds (a content filter
    under load): the upstream had the copy, we timed out and sent it again, five times in
    a row. RFC 5321 4.5.3.2.6 gives that reply 10 minutes."""
    handler = SlowUpstream(step=0.0, data_step=1.5)  # over the 0.5 s of every other step
    entry = await deliver_one(db, handler, "S2")
    assert (entry.state, entry.attempts, handler.accepted) == ("sent", 1, 1), entry.last_error


async def test_an_upstream_slower_than_timeout_seconds_but_within_rfc_5321_gets_the_copy(
        db, monkeypatch):
    """RFC 5321 4.5.3.2 gives the greeting, MAIL and RCPT 5 minutes each (Postfix: 300 s).
    With delivery.timeout_seconds (60) for them, an upstream that tarpits or verifies the
    recipient by callout for 61-300 s never took the copy: deferred at each try, bounced at
    max_age_hours. The floor is scaled down here: 2 s, and timeout_seconds 0.5."""
    monkeypatch.setattr("gateway.delivery.upstream.COMMAND_SECONDS", 2.0, raising=False)
    handler = SlowUpstream(step=1.0)  # EHLO, MAIL, RCPT, the content: each over 0.5 s
    entry = await deliver_one(db, handler, "S3")
    assert (entry.state, entry.attempts, handler.accepted) == ("sent", 1, 1), entry.last_error


async def test_the_shipped_timeouts_are_at_least_rfc_5321s(monkeypatch):
    """With the default delivery.timeout_seconds the greeting (and STARTTLS, AUTH: the
    client's own timeout), EHLO, MAIL and RCPT wait 5 minutes, DATA at least 2 (4.5.3.2)."""
    seen: dict[str, float] = {}

    def spy(name: str):  # noqa: ANN202
        real = getattr(aiosmtplib.SMTP, name)

        async def step(self, *args, timeout=None, **kwargs):  # noqa: ANN001, ANN202
            seen[name] = self.timeout if name == "connect" else timeout
            if name == "connect":
                return await real(self, *args, **kwargs)
            return await real(self, *args, timeout=timeout, **kwargs)
        return step

    for name in ("connect", "ehlo", "mail", "rcpt", "data"):
        monkeypatch.setattr(aiosmtplib.SMTP, name, spy(name))
    port = free_port()
    controller = Controller(SlowUpstream(0.0), hostname="127.0.0.1", port=port)
    controller.start()
    settings = dataclasses.replace(DeliverySettings(), mode="smtp", host="127.0.0.1",
                                   port=port, starttls=False)  # the shipped timeout
    transport = SmtpTransport(settings, "gateway.test")
    try:
        await transport.send("news@example.com", "jane@example.net",
                             b"Subject: x\r\n\r\nbody\r\n")
    finally:
        await transport.close()
        controller.stop()
    assert min(seen[name] for name in ("connect", "ehlo", "mail", "rcpt")) >= 300, seen
    assert seen["data"] >= 120, seen


class NeverAnswersTheContent(asyncio.Protocol):
    """A bare SMTP server that takes everything up to the content and never answers it;
    `closed` is set when the client's connection goes."""

    closed: asyncio.Event

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.in_data = False
        transport.write(b"220 upstream.test ESMTP\r\n")  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        for line in data.split(b"\r\n"):
            if self.in_data or not line:
                continue
            verb = line[:4].upper()
            if verb == b"EHLO":
                self.transport.write(b"250 upstream.test\r\n")  # type: ignore[attr-defined]
            elif verb == b"DATA":
                self.in_data = True
                self.transport.write(b"354 go on\r\n")  # type: ignore[attr-defined]
            else:
                self.transport.write(b"250 OK\r\n")  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        NeverAnswersTheContent.closed.set()


async def bare_upstream(protocol: type[asyncio.Protocol], timeout: float
                        ) -> tuple[asyncio.Server, SmtpTransport]:
    """A hand-written SMTP server on a loopback port, and a transport to it."""
    server = await asyncio.get_running_loop().create_server(protocol, "127.0.0.1", 0)
    settings = dataclasses.replace(DeliverySettings(), mode="smtp", host="127.0.0.1",
                                   port=server.sockets[0].getsockname()[1], starttls=False,
                                   timeout_seconds=timeout)
    return server, SmtpTransport(settings, "gateway.test")


async def test_a_delivery_cancelled_half_way_closes_its_connection():
    NeverAnswersTheContent.closed = asyncio.Event()
    server, transport = await bare_upstream(NeverAnswersTheContent, 30.0)
    try:
        sending = asyncio.create_task(transport.send(
            "news@example.com", "jane@example.net", b"Subject: x\r\n\r\nbody\r\n"))
        await asyncio.sleep(0.5)  # the content sent, its reply awaited
        assert not sending.done()
        sending.cancel()  # a stop, or the worker's limit on the whole delivery
        await asyncio.gather(sending, return_exceptions=True)
        await asyncio.wait_for(NeverAnswersTheContent.closed.wait(), 3)  # it was left open
        assert transport._idle == []  # and never pooled half-way through a transaction
    finally:
        await transport.close()
        server.close()


class WantsAuth(asyncio.Protocol):
    """An upstream that refuses MAIL FROM with `reply` (no AUTH from us)."""

    reply = b"530 5.7.0 Authentication required\r\n"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.write(b"220 upstream.test ESMTP\r\n")  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        for line in data.split(b"\r\n"):
            verb = line[:4].upper()
            if verb == b"EHLO":
                self.transport.write(b"250 upstream.test\r\n")  # type: ignore[attr-defined]
            elif verb == b"MAIL":
                self.transport.write(self.reply)  # type: ignore[attr-defined]
            elif verb in (b"RSET", b"NOOP"):
                self.transport.write(b"250 OK\r\n")  # type: ignore[attr-defined]
            elif verb == b"QUIT":
                self.transport.write(b"221 bye\r\n")  # type: ignore[attr-defined]


async def test_an_upstream_wanting_auth_defers_the_copy_instead_of_bouncing_it():
    """530 to MAIL FROM is the gateway's settings (no delivery.username), not the copy's
    fault: failed, every copy would bounce until somebody noticed."""
    server, transport = await bare_upstream(WantsAuth, 5.0)
    try:
        for reply, kind in ((b"530 5.7.0 Authentication required\r\n", TemporaryFailure),
                            (b"553 5.7.1 Sender address rejected\r\n", PermanentFailure)):
            WantsAuth.reply = reply
            with pytest.raises(kind) as raised:
                await transport.send("news@example.com", "jane@example.net",
                                     b"Subject: x\r\n\r\nbody\r\n")
            assert reply[:3].decode() in str(raised.value)
            assert ("delivery.username" in str(raised.value)) == (kind is TemporaryFailure)
    finally:
        await transport.close()
        server.close()


class ScriptedUpstream(asyncio.Protocol):
    """A minimal SMTP server that takes every command and each content whole; what it does
    after a content is `content_taken`'s (answer 250 by default)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer, self.in_data, self.contents = b"", False, 0
        transport.write(b"220 upstream.test ESMTP\r\n")  # type: ignore[attr-defined]

    def content_taken(self) -> bool:
        """After a content; False: stop reading (the connection was closed)."""
        self.transport.write(b"250 2.0.0 queued\r\n")  # type: ignore[attr-defined]
        return True

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if self.in_data:
                end = self.buffer.find(b"\r\n.\r\n")
                if end < 0:
                    return
                self.buffer, self.in_data = self.buffer[end + 5:], False
                self.contents += 1
                if not self.content_taken():
                    return
                continue
            line, sep, rest = self.buffer.partition(b"\r\n")
            if not sep:
                return
            self.buffer = rest
            verb = line[:4].upper()
            if verb == b"DATA":
                self.in_data = True
                self.transport.write(b"354 go on\r\n")  # type: ignore[attr-defined]
            elif verb == b"EHLO":
                self.transport.write(b"250 upstream.test\r\n")  # type: ignore[attr-defined]
            else:
                self.transport.write(b"250 OK\r\n")  # type: ignore[attr-defined]


class SlowGreeting(ScriptedUpstream):
    """Greets `delay` seconds after the connection, and answers MAIL and RCPT as late (a
    tarpit); `greeted` when it has said 220."""

    delay = 1.0
    greeted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer, self.in_data, self.contents = b"", False, 0
        asyncio.get_running_loop().call_later(self.delay, self.greet)

    def greet(self) -> None:
        SlowGreeting.greeted = True
        self.transport.write(b"220 upstream.test ESMTP\r\n")  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if not self.in_data and data[:4].upper() in (b"MAIL", b"RCPT"):
            later = asyncio.get_running_loop().call_later
            later(self.delay, super().data_received, data)
            return
        super().data_received(data)


async def test_the_greeting_waits_as_long_as_mail_and_rcpt_not_the_connect_timeout(
        monkeypatch):
    """delivery.timeout_seconds bounds the TCP connect (Postfix smtp_connect_timeout); the
    greeting has the 5 minutes of RFC 5321 4.5.3.2.1 (smtp_helo_timeout), scaled down here."""
    monkeypatch.setattr("gateway.delivery.upstream.COMMAND_SECONDS", 2.0, raising=False)
    SlowGreeting.greeted = False
    server, transport = await bare_upstream(SlowGreeting, 0.3)
    try:
        answer = await transport.send("news@example.com", "jane@example.net",
                                      b"Subject: x\r\n\r\nbody\r\n")
        assert SlowGreeting.greeted and "queued" in answer
    finally:
        await transport.close()
        server.close()


class LosesTheReplyToTheSecondContent(ScriptedUpstream):
    """Takes each content whole (counted in `received`); on a connection's second one, it
    closes without answering: the upstream may have queued it, nobody can tell."""

    received = 0

    def content_taken(self) -> bool:
        LosesTheReplyToTheSecondContent.received += 1
        if self.contents == 2:
            self.transport.close()
            return False
        return super().content_taken()


async def test_a_reply_lost_after_the_content_defers_the_copy_instead_of_sending_it_again():
    """The pooled connection's retry on a fresh one is for a connection the upstream closed
    while idle. Lost after the content, the copy was sent again at once: a duplicate
    whenever the upstream had queued it. It is deferred, as Postfix does."""
    LosesTheReplyToTheSecondContent.received = 0
    server, transport = await bare_upstream(LosesTheReplyToTheSecondContent, 5.0)
    content = b"Subject: x\r\n\r\nbody\r\n"
    try:
        await transport.send("news@example.com", "jane@example.net", content)
        with pytest.raises(TemporaryFailure, match="during DATA"):
            await transport.send("news@example.com", "ann@example.net", content)
        assert LosesTheReplyToTheSecondContent.received == 2  # not a third: sent once each
    finally:
        await transport.close()
        server.close()


class RefusesSomeRecipients(ScriptedUpstream):
    """Answers RCPT from what the address says (greylisted@ 450, full@ 552, gone@ 550,
    bye@ 421), counts connections, and keeps the envelopes it took (RFC 5321 4.1.1.1)."""

    connections = 0
    envelopes: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        RefusesSomeRecipients.connections += 1
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self.in_data:
            for line in data.split(b"\r\n"):
                if line[:4].upper() == b"RCPT":
                    RefusesSomeRecipients.envelopes.append(line)
                    for prefix, reply in ((b"<greylisted@", b"450 4.7.1 try later"),
                                          (b"<full@", b"552 5.2.2 mailbox full"),
                                          (b"<gone@", b"550 5.1.1 no such user"),
                                          (b"<bye@", b"421 4.3.2 shutting down")):
                        if prefix in line:
                            self.transport.write(reply + b"\r\n")  # type: ignore[attr-defined]
                            data = data.replace(line + b"\r\n", b"")
        if data:
            super().data_received(data)


async def test_a_refused_recipient_keeps_the_connection_and_552_is_temporary():
    """Every 4xx/5xx closed the connection after its RSET had succeeded: a greylisting
    upstream cost a new connection (TLS, AUTH) per copy. A 552 to RCPT (RFC 5321
    4.5.3.1.10: read as 452) bounced the copy. An internationalised domain went nowhere
    when the upstream had no SMTPUTF8, although its A-label form needs none."""
    RefusesSomeRecipients.connections, RefusesSomeRecipients.envelopes = 0, []
    server, transport = await bare_upstream(RefusesSomeRecipients, 5.0)
    content = b"Subject: x\r\n\r\nbody\r\n"
    try:
        with pytest.raises(TemporaryFailure, match="^450"):
            await transport.send("news@example.com", "greylisted@example.net", content)
        with pytest.raises(TemporaryFailure, match="^552 5.2.2"):
            await transport.send("news@example.com", "full@example.net", content)
        with pytest.raises(PermanentFailure, match="^550"):
            await transport.send("news@example.com", "gone@example.net", content)
        await transport.send("news@example.com", "hans@bücher.example", content)
        assert RefusesSomeRecipients.connections == 1
        assert RefusesSomeRecipients.envelopes[-1] == b"RCPT TO:<hans@xn--bcher-kva.example>"
        with pytest.raises(TemporaryFailure, match="^421"):
            await transport.send("news@example.com", "bye@example.net", content)
        await transport.send("news@example.com", "jane@example.net", content)
        assert RefusesSomeRecipients.connections == 2  # a 421 ends the connection
        with pytest.raises(PermanentFailure, match="5.6.7"):  # a local part beyond ASCII
            await transport.send("news@example.com", "josé@example.fr", content)
    finally:
        await transport.close()
        server.close()


class RefusesOurHelo(asyncio.Protocol):
    """A relay that refuses the gateway's HELO name (smtp.hostname left "localhost")."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.write(b"220 upstream.test ESMTP\r\n")  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        for line in data.split(b"\r\n"):
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                self.transport.write(  # type: ignore[attr-defined]
                    b"550 5.7.1 <localhost>: Helo command rejected\r\n")
            elif verb == b"QUIT":
                self.transport.write(b"221 bye\r\n")  # type: ignore[attr-defined]
            elif line:
                self.transport.write(b"503 5.5.1 EHLO first\r\n")  # type: ignore[attr-defined]


async def test_an_upstream_refusing_our_helo_defers_the_copy_instead_of_bouncing_it():
    """With starttls off, EHLO went with the first transaction and its 550 failed the copy:
    every copy in the queue failed and bounced (their DSNs too), for a setting of ours."""
    server, transport = await bare_upstream(RefusesOurHelo, 5.0)
    try:
        with pytest.raises(TemporaryFailure) as raised:
            await transport.send("news@example.com", "jane@example.net",
                                 b"Subject: x\r\n\r\nbody\r\n")
        assert str(raised.value).startswith("550 5.7.1") and "upstream connection" in str(
            raised.value)
        assert raised.value.remote_mta == "127.0.0.1"  # an expiry's DSN names who refused
    finally:
        await transport.close()
        server.close()


class ClosesWhenIdle(ScriptedUpstream):
    """Takes each content; closes the connection 0.1 s after its reply (an idle timeout)."""

    accepted = 0

    def content_taken(self) -> bool:
        ClosesWhenIdle.accepted += 1
        super().content_taken()
        asyncio.get_running_loop().call_later(0.1, self.transport.close)
        return True


async def test_connections_the_upstream_closed_while_idle_are_not_tried_again():
    """The retry "on a fresh connection" took the next pooled one: with several pooled
    connections the upstream had closed (its idle timeout), copies were deferred while it
    was up."""
    ClosesWhenIdle.accepted = 0
    server, transport = await bare_upstream(ClosesWhenIdle, 5.0)
    try:
        await asyncio.gather(*(transport.send("news@example.com", f"r{i}@example.net",
                                              b"Subject: x\r\n\r\nbody\r\n")
                               for i in range(4)))
        await asyncio.sleep(0.5)  # every pooled connection closed by the upstream
        for n in range(2):
            await transport.send("news@example.com", f"again{n}@example.net",
                                 b"Subject: x\r\n\r\nbody\r\n")
        assert ClosesWhenIdle.accepted == 6
    finally:
        await transport.close()
        server.close()


@pytest.mark.parametrize("upstream_limit, warned", [(1_000_000, True), (2_000_000, False)])
async def test_an_upstream_taking_less_than_the_gateway_accepts_is_warned_of_once(
        caplog, upstream_limit: int, warned: bool):
    """Messages accepted at smtp.max_message_bytes grew by the notice and the fields and
    were bounced by an upstream of the same SIZE (durability review): the operator is told
    at the first connection, with the value that fits."""
    port = free_port()
    controller = Controller(SlowUpstream(0.0), hostname="127.0.0.1", port=port,
                            data_size_limit=upstream_limit)
    controller.start()
    settings = dataclasses.replace(DeliverySettings(), mode="smtp", host="127.0.0.1",
                                   port=port, starttls=False, timeout_seconds=2, workers=1)
    transport = SmtpTransport(settings, "gateway.test", accepted_bytes=1_000_000)
    try:
        with caplog.at_level("WARNING", "gateway.delivery.upstream"):
            for _ in range(2):
                await transport.send("news@example.com", "jane@example.net",
                                     b"Subject: x\r\n\r\nbody\r\n")
                await transport.close()
    finally:
        controller.stop()
    said = [r.getMessage() for r in caplog.records if "SIZE" in r.getMessage()]
    if warned:
        assert len(said) == 1 and "smtp.max_message_bytes to 934464 or less" in said[0], said
    else:
        assert said == []
