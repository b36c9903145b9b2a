"""The delivery workers on a real store: whatever goes wrong preparing a copy, its outcome is
recorded (deferred with the error, then failed with a DSN), never left claimed in silence."""

from __future__ import annotations

import asyncio
import dataclasses
import time

from gateway.delivery.upstream import MaildirTransport
from gateway.delivery.worker import DeliveryService
from gateway.settings import DeliverySettings
from gateway.store.db import Database
from gateway.store.queue import Copy, IncomingMessage, QueueStore


async def until(predicate, seconds: float = 5.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if result := await predicate():
            return result
        await asyncio.sleep(0.02)
    raise AssertionError("timed out")


async def run_with_a_broken_prepare(db: Database, tmp_path, max_age_hours: float):
    queue = QueueStore(db, "me")
    settings = dataclasses.replace(DeliverySettings(), maildir=str(tmp_path / "out"),
                                   workers=1, max_age_hours=max_age_hours)
    service = DeliveryService(queue, MaildirTransport(settings.maildir), settings,
                              "gateway.test")
    calls = []

    async def prepare(copy: Copy) -> bytes:
        calls.append(copy.delivery_id)
        raise RuntimeError("a bug in the transform")

    service.prepare = prepare
    await service.start()
    [copies] = await queue.commit_messages([IncomingMessage(
        "Q1", time.time(), "crm", "127.0.0.1", "news@example.com",
        b"From: news@example.com\r\nSubject: x\r\n\r\nbody\r\n", ("jane@example.net",))])
    service.dispatch(copies)
    return queue, service, calls


async def test_an_unexpected_error_preparing_a_copy_defers_it_with_the_error(db, tmp_path):
    queue, service, calls = await run_with_a_broken_prepare(db, tmp_path, max_age_hours=120)
    try:
        async def deferred():
            entries = [e for e in await queue.list() if e.state == "deferred"]
            return entries[0] if entries else None
        entry = await until(deferred)
        assert entry.attempts == 1 and calls
        assert entry.last_error == "internal error: RuntimeError: a bug in the transform"
    finally:
        await service.stop(drain_seconds=1)


async def test_past_max_age_it_fails_with_a_dsn_to_the_sender(db, tmp_path):
    queue, service, _ = await run_with_a_broken_prepare(db, tmp_path, max_age_hours=0)
    try:
        async def failed():
            entries = {e.recipient: e for e in await queue.list()}
            original = entries.get("jane@example.net")
            return entries if original and original.state == "failed" else None
        entries = await until(failed)
        assert "gave up after" in entries["jane@example.net"].last_error
        assert "news@example.com" in entries  # the DSN, queued to the envelope sender
    finally:
        await service.stop(drain_seconds=1)
