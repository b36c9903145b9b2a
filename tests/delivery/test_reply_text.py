"""An upstream reply whose text is not UTF-8 (many European MTAs answer in Latin-1) is read
as any other: a 5xx fails the copy with a DSN at once (INTERFACE: "on a permanent 5xx ...
record the failure and send a DSN"), a 4xx defers it with the reply as its last error."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable

from gateway.delivery.upstream import SmtpTransport
from gateway.delivery.worker import DeliveryService
from gateway.settings import DeliverySettings
from gateway.store.queue import Copy, IncomingMessage, Prepared, QueueStore, SentMark

Upstream = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def refusing_upstream(refusal: bytes) -> Upstream:
    """An upstream that answers every RCPT with `refusal` (raw bytes, CRLF included)."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 up.test ESMTP\r\n")
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb == b"EHLO":
                writer.write(b"250-up.test\r\n250 8BITMIME\r\n")
            elif verb == b"RCPT":
                writer.write(refusal)
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                break
            else:  # MAIL, RSET
                writer.write(b"250 OK\r\n")
            await writer.drain()
        writer.close()
    return serve


async def as_stored(copy: Copy) -> Prepared:
    return Prepared(copy.content, SentMark(copy.delivery_id))


async def deliver_once(db: object, refusal: bytes, wait_seconds: float) -> dict[str, object]:
    """Queues one copy to u0@example.net, lets the upstream refuse it; the queue's entries."""
    server = await asyncio.start_server(refusing_upstream(refusal), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    queue = QueueStore(db, "me")  # type: ignore[arg-type]
    settings = dataclasses.replace(DeliverySettings(), mode="smtp", host="127.0.0.1",
                                   port=port, workers=1, retry_base_seconds=60,
                                   retry_max_seconds=60, timeout_seconds=5.0)
    service = DeliveryService(queue, SmtpTransport(settings, "gw.test"), settings, "gw.test")
    service.prepare = as_stored  # type: ignore[method-assign]
    await service.start()
    try:
        [copies] = await queue.commit_messages([IncomingMessage(
            "Q1", time.time(), "crm", "127.0.0.1", "news@example.com",
            b"From: news@example.com\r\nSubject: x\r\n\r\nbody\r\n", ("u0@example.net",))])
        service.dispatch(copies)
        await asyncio.sleep(wait_seconds)
        return {e.recipient: e for e in await queue.list()}
    finally:
        await service.stop(drain_seconds=1)
        server.close()
        await server.wait_closed()


async def test_a_5xx_in_latin1_fails_the_copy_with_a_dsn_at_once(db):
    entries = await deliver_once(db, b"550 5.1.1 Destinataire inconnu \xe9 user unknown\r\n",
                                 1.5)
    original = entries["u0@example.net"]
    # it was deferred as "internal error: UnicodeEncodeError ... '\udce9'", for 5 days
    assert (original.state, original.attempts) == ("failed", 1), original.last_error
    assert original.last_error == "550 5.1.1 Destinataire inconnu \ufffd user unknown"
    assert "news@example.com" in entries  # the DSN to the envelope sender


async def test_a_4xx_in_latin1_defers_the_copy_with_the_reply_as_its_last_error(db):
    entries = await deliver_once(db, b"450 4.2.1 Bo\xeete pleine, r\xe9essayez\r\n", 1.0)
    original = entries["u0@example.net"]
    assert (original.state, original.attempts) == ("deferred", 1), original.last_error
    assert original.last_error.startswith("450 4.2.1 Bo\ufffdte pleine, r\ufffdessayez")
    assert "news@example.com" not in entries
