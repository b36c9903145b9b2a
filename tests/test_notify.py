"""The objection notifications' sender on a real store, to a real HTTP endpoint: what holds
an account back and what does not."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer

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

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
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
