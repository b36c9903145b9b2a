"""The objection notifications' sender on a real store, to a real HTTP endpoint: what holds
an account back and what does not."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer

import httpx
import pytest

from gateway.notify import Notifier
from gateway.store.accounts import AccountStore
from gateway.store.db import Database
from gateway.store.notifications import NotificationStore, notification_body


class Endpoint(BaseHTTPRequestHandler):
    """A CRM: 404 for an address it does not hold (poison*), `status` for the others."""

    taken: list[str] = []
    tries: list[str] = []
    ids: list[str] = []
    status = 204
    delay = 0.0

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        time.sleep(Endpoint.delay)  # a CRM taking its time
        document = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        email = document["email"]
        Endpoint.tries.append(email)
        Endpoint.ids.append(document["id"])
        code = 404 if email.startswith("poison") else Endpoint.status
        if code < 300:
            Endpoint.taken.append(email)
        self.send_response(code)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def endpoint() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), Endpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Endpoint.taken, Endpoint.tries, Endpoint.ids, Endpoint.status = [], [], [], 204
    Endpoint.delay = 0.0
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


async def queue(db: Database, *emails: str) -> None:
    now = time.time()
    await db.write_one(
        "INSERT INTO notifications (account, url, body, next_attempt_at, created_at,"
        " updated_at) SELECT name, shown_url(notify_url), ?, ?, ?, ? FROM accounts",
        [(notification_body(e, "one-click", now), now, now, now) for e in emails], many=True)


async def until(predicate, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_one_notification_the_endpoint_refuses_holds_back_no_other(db: Database,
                                                                          endpoint: str):
    """A CRM answering 404 for an address it does not hold: that notification is retried on
    its own backoff, the account's next ones go (they waited up to 3 days behind it)."""
    await AccountStore(db).add("crm", "x", ["example.com"], notify_url=f"{endpoint}/hook")
    await queue(db, "poison@example.net", "good1@example.net", "good2@example.net")
    notifier = Notifier(NotificationStore(db), "s3cret", scan_seconds=0.1, retry_base=30.0)
    notifier.start()
    try:
        await until(lambda: len(Endpoint.taken) == 2)
        assert Endpoint.taken == ["good1@example.net", "good2@example.net"]
        # the endpoint has the body before the notifier records the answer: wait for that
        expected = [("pending", 1), ("sent", 1), ("sent", 1)]
        rows: list[tuple] = []
        deadline = time.monotonic() + 10
        while rows != expected and time.monotonic() < deadline:
            rows = [tuple(r) for r in await db.fetchall(
                "SELECT state, attempts FROM notifications ORDER BY id")]
            await asyncio.sleep(0.05)
        assert rows == expected
    finally:
        await notifier.stop()


async def test_an_endpoint_that_is_down_holds_the_account_and_a_new_url_is_tried_at_once(
        db: Database, endpoint: str):
    """A 503 is the endpoint's: the account waits its backoff (one try, not one per
    notification); once the operator sets another URL, the queued ones go there at once."""
    accounts = AccountStore(db)
    await accounts.add("crm", "x", ["example.com"], notify_url=f"{endpoint}/old")
    await queue(db, "a@example.net", "b@example.net")
    Endpoint.status = 503
    notifier = Notifier(NotificationStore(db), "s3cret", scan_seconds=0.1, retry_base=600.0)
    notifier.start()
    try:
        await until(lambda: len(Endpoint.tries) >= 1)
        await asyncio.sleep(0.5)
        assert Endpoint.tries == ["a@example.net"]  # held: b was not tried, a not again
        Endpoint.status = 204
        await accounts.update("crm", notify_url=f"{endpoint}/new")
        await until(lambda: len(Endpoint.taken) == 2)  # not 600 s later
        assert Endpoint.taken == ["a@example.net", "b@example.net"]
        # each objection has its id, the same on its retry: the receiver can tell a repeat
        assert Endpoint.ids[0] == Endpoint.ids[1] != Endpoint.ids[2]
    finally:
        await notifier.stop()


async def test_a_new_token_in_the_notify_url_is_tried_at_once(db: Database, endpoint: str):
    """A 401 (the endpoint's own refusal: the account is held) fixed by a new token in the
    URL's query: masked, old and new URL looked the same, and the row waited its backoff."""
    accounts = AccountStore(db)
    await accounts.add("crm", "x", ["example.com"], notify_url=f"{endpoint}/hook?token=old")
    await queue(db, "a@example.net")
    Endpoint.status = 401
    notifier = Notifier(NotificationStore(db), "s3cret", scan_seconds=0.1, retry_base=600.0)
    notifier.start()
    try:
        await until(lambda: len(Endpoint.tries) >= 1)
        Endpoint.status = 204
        await accounts.update("crm", notify_url=f"{endpoint}/hook?token=new")
        await until(lambda: Endpoint.taken == ["a@example.net"])
    finally:
        await notifier.stop()


class KeepAliveEndpoint(BaseHTTPRequestHandler):
    """An HTTP/1.1 CRM answering 200 with a short body, keeping its connections open."""

    protocol_version = "HTTP/1.1"
    peers: list[tuple[str, int]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers["Content-Length"]))
        KeepAliveEndpoint.peers.append(self.client_address)
        self.send_response(200)
        self.send_header("Content-Length", "12")
        self.end_headers()
        self.wfile.write(b'{"ok": true}')

    def log_message(self, *args: object) -> None:
        return None


async def test_notifications_to_one_endpoint_share_its_connection(db: Database):
    """The answer's short body is read, so its connection serves the next notification
    (reading only the status closed it each time: a TCP, or TLS, handshake per objection on
    the event loop the mail shares)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), KeepAliveEndpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    KeepAliveEndpoint.peers = []
    await AccountStore(db).add("crm", "x", ["example.com"],
                               notify_url=f"http://127.0.0.1:{server.server_port}/hook")
    notifier = Notifier(NotificationStore(db), "s3cret", scan_seconds=0.05)
    notifier.start()
    try:
        for n in range(3):
            await queue(db, f"a{n}@example.net")
            notifier.wake()
            await until(lambda n=n: len(KeepAliveEndpoint.peers) == n + 1)
        for _ in range(100):  # the mark follows the answer
            states = [row[0] for row in await db.fetchall("SELECT state FROM notifications")]
            if states == ["sent"] * 3:
                break
            await asyncio.sleep(0.05)
        assert states == ["sent"] * 3
        assert len(set(KeepAliveEndpoint.peers)) == 1, KeepAliveEndpoint.peers
    finally:
        await notifier.stop()
        server.shutdown()
        server.server_close()


async def test_two_serve_processes_on_one_store_send_each_notification_once(
        db: Database, endpoint: str):
    """Two `serve` processes sharing the store (a rolling restart, two listen addresses) each
    ran a sender over the same outbox: with a CRM taking 0.2 s an answer, 5 objections were
    POSTed 9 times. One process holds the sender's lease; when it stops, the other takes
    over at once (not when the lease would have run out)."""
    await AccountStore(db).add("crm", "x", ["example.com"], notify_url=f"{endpoint}/hook")
    Endpoint.delay = 0.2
    first = Notifier(NotificationStore(db), "s3cret", scan_seconds=0.05, holder="host-A")
    second = Notifier(NotificationStore(db), "s3cret", scan_seconds=0.05, holder="host-B")
    first.start()
    await until(lambda: first._leased_at is not None)
    second.start()
    try:
        await queue(db, *(f"r{i}@example.net" for i in range(5)))
        await until(lambda: len(Endpoint.taken) == 5)
        await asyncio.sleep(1.0)  # time for a second POST of each, if there were one
        assert sorted(Endpoint.taken) == [f"r{i}@example.net" for i in range(5)]
        assert len(Endpoint.ids) == len(set(Endpoint.ids)) == 5
        await first.stop()
        await queue(db, "after@example.net")
        started = time.monotonic()
        await until(lambda: "after@example.net" in Endpoint.taken, seconds=5)
        assert time.monotonic() - started < 5
    finally:
        await second.stop()
    assert len(Endpoint.ids) == len(set(Endpoint.ids)) == 6


async def test_a_sender_frozen_past_its_lease_does_not_go_on_with_the_list_it_read(
        db: Database, endpoint: str):
    """The holder frozen (SIGSTOP, a VM suspended) longer than its lease: another process
    took the lease and sent the outbox. Back, the first one must not POST the rest of the
    list it had read before the freeze."""
    await AccountStore(db).add("crm", "x", ["example.com"], notify_url=f"{endpoint}/hook")
    await queue(db, *(f"r{i}@example.net" for i in range(3)))
    frozen = Notifier(NotificationStore(db), "s3cret", scan_seconds=0.05, holder="host-A")
    assert await frozen._hold_lease()
    read_before = await frozen.store.due()
    # the freeze: its last renewal 100 s ago by both clocks, its lease over in the store
    monotonic, wall = frozen._leased_at
    frozen._leased_at = (monotonic - 100, wall - 100)
    await db.write_one("UPDATE leases SET until = ?", (time.time() - 40,))
    other = Notifier(NotificationStore(db), "s3cret", scan_seconds=0.05, holder="host-B")
    other.start()
    try:
        await until(lambda: len(Endpoint.taken) == 3)
        frozen._client = httpx.AsyncClient()
        await frozen._send_in_order("crm", read_before)  # the thaw
        await asyncio.sleep(0.5)
        assert not await frozen._hold_lease()  # host-B's now
    finally:
        await other.stop()
        await frozen._client.aclose()
    assert sorted(Endpoint.ids) == sorted(set(Endpoint.ids)) and len(Endpoint.ids) == 3
