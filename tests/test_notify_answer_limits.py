"""An endpoint's answer must not hold the notification sender: a body that trickles in (one
byte a little faster than httpx's per-read timeout) or never ends would keep the account's
notifications stuck for as long as the endpoint likes, and be read whole into memory. The
status counts; the request and the answer's head are bounded, then at most ANSWER_BYTES of
the body, within the timeout."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import pytest

import gateway.notify as notify
from gateway.notify import Notifier, erasure_body, tell_erasure
from gateway.store.accounts import AccountStore
from gateway.store.db import Database
from gateway.store.notifications import NotificationStore, notification_body

TRICKLE_SECONDS = 0.1  # between two bytes of the answer: under TIMEOUT_SECONDS below


def trickle(monkeypatch: pytest.MonkeyPatch, head: bytes, byte: bytes) -> Iterator[str]:
    """An endpoint that sends `head`, then `byte` every TRICKLE_SECONDS for about a minute;
    each read is well within notify.TIMEOUT_SECONDS (made 0.3 s)."""
    monkeypatch.setattr(notify, "TIMEOUT_SECONDS", 0.3)
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            conn.sendall(head)
            for _ in range(600):
                if stop.wait(TRICKLE_SECONDS):
                    return
                try:
                    conn.sendall(byte)
                except OSError:
                    return

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/hook"
    stop.set()
    server.close()


@pytest.fixture
def trickling_body(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """200 at once, then an endless chunked body."""
    yield from trickle(monkeypatch, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                       b"1\r\nx\r\n")


@pytest.fixture
def trickling_headers(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A status line, then a header that never ends."""
    yield from trickle(monkeypatch, b"HTTP/1.1 200 OK\r\nX-Slow: ", b"x")


async def attempted(db: Database, url: str) -> tuple[object, ...]:
    """Queue one notification to `url`, run the sender until it has tried it (3 s at most,
    five times the bound) and return (attempts, state, last_error)."""
    await AccountStore(db).add("crm", "x", ["example.com"], notify_url=url)
    now = time.time()
    await db.write_one(
        "INSERT INTO notifications (account, url, body, next_attempt_at, created_at,"
        " updated_at) SELECT name, shown_url(notify_url), ?, ?, ?, ? FROM accounts",
        (notification_body("a@example.net", "one-click", now), now, now, now))
    notifier = Notifier(NotificationStore(db), "s3cret", scan_seconds=0.1, retry_base=30.0)
    notifier.start()
    try:
        deadline = time.monotonic() + 3.0
        while True:
            row = await db.fetchone("SELECT attempts, state, last_error FROM notifications")
            if row[0] >= 1 or time.monotonic() > deadline:
                return tuple(row)
            await asyncio.sleep(0.05)
    finally:
        await notifier.stop()


async def test_the_status_of_an_answer_is_enough_its_endless_body_is_not_read(
        db: Database, trickling_body: str) -> None:
    assert await attempted(db, trickling_body) == (1, "sent", None)


async def test_an_answer_not_complete_within_twice_the_timeout_fails_the_attempt(
        db: Database, trickling_headers: str) -> None:
    # rescheduled with backoff like any other failure, not held by the endpoint
    assert await attempted(db, trickling_headers) == (
        1, "pending", "no complete answer within 1 s")


async def test_telling_an_erasure_reads_only_the_status(trickling_body: str) -> None:
    started = time.monotonic()
    assert await asyncio.wait_for(tell_erasure(
        trickling_body, [erasure_body("a@example.net", time.time())], "s3cret"), 5.0) is None
    assert time.monotonic() - started < 2.0


async def test_telling_an_erasure_ends_within_twice_the_timeout(
        trickling_headers: str) -> None:
    started = time.monotonic()
    assert await asyncio.wait_for(tell_erasure(
        trickling_headers, [erasure_body("a@example.net", time.time())], "s3cret"),
        5.0) == "no complete answer within 1 s"
    assert time.monotonic() - started < 2.0
