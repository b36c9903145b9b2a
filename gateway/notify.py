"""Tell the sending tools about objections: each one is POSTed (JSON, signed like the opt-out
webhook) to the notify_url of every account that has one, from the durable outbox, retried
with backoff, so the marketing tool can mark the contact too."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import logging
import secrets
import time
from urllib.parse import urlsplit

import httpx

from gateway.errors import StoreError
from gateway.security.signatures import signature
from gateway.store.notifications import Notification, NotificationStore
from gateway.urls import shown_url

log = logging.getLogger("gateway.notify")

RETRY_BASE_SECONDS = 30.0
RETRY_MAX_SECONDS = 3600.0
GIVE_UP_SECONDS = 3 * 86400.0
TIMEOUT_SECONDS = 10.0
# Answers that say the endpoint itself cannot take notifications now (it wants other
# credentials, it is throttling, it timed out), as a 5xx or no answer do: the account waits.
# Any other 4xx is about this notification (a CRM answering 404 or 422 for an address it does
# not hold): it is retried on its own, and the account's next ones go on meanwhile.
ENDPOINT_REFUSALS = frozenset({401, 403, 407, 408, 429})
# One process sends, whatever the number of `serve` processes on the store (store lease
# "notification-sender"): it renews the lease every LEASE_RENEW_SECONDS for LEASE_SECONDS,
# and sends only while its last renewal is under LEASE_VALID_SECONDS old by both clocks (a
# holder frozen past its lease does not go on with the list it read before).
LEASE_SECONDS = 60.0
LEASE_RENEW_SECONDS = 10.0
LEASE_VALID_SECONDS = 45.0


class Notifier:
    def __init__(self, store: NotificationStore, secret: str, scan_seconds: float = 1.0,
                 retry_base: float = RETRY_BASE_SECONDS, holder: str | None = None) -> None:
        self.store = store
        # this process in the sender's lease (the runtime's instance id)
        self.holder = holder or f"notifier-{secrets.token_hex(8)}"
        self._leased_at: tuple[float, float] | None = None  # (monotonic, wall) of the renewal
        self._leading: bool | None = None  # what the log last said of the lease
        self.secret = secret.encode()
        self.scan_seconds = scan_seconds
        self.retry_base = retry_base
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None
        self._warned = False
        # an account's notifications go one after another, in their order, by a task of its
        # own: none waits for another account's endpoint
        self._sending: dict[str, asyncio.Task[None]] = {}
        # an account whose endpoint failed: the time.monotonic() before which it is not
        # tried again, and the notify_url that failed (one failure backs off the account,
        # not only that notification; an operator's new URL is tried at once)
        self._held: dict[str, tuple[float, str | None]] = {}  # None: whatever its URL

    def start(self) -> None:
        self._client = httpx.AsyncClient(timeout=TIMEOUT_SECONDS, follow_redirects=False)
        self._task = asyncio.create_task(self._run(), name="notify")

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._sending.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
        if self._leased_at is not None:
            self._leased_at = None
            try:
                await self.store.release_lease(self.holder)
            except StoreError as exc:
                log.error("could not hand the notification sender's lease over (another "
                          "process takes it when it ends, within %.0f s): %s", LEASE_SECONDS,
                          exc)

    def _lease_fresh(self, seconds: float) -> bool:
        """Whether the lease was renewed less than `seconds` ago, by both clocks."""
        if self._leased_at is None:
            return False
        monotonic, wall = self._leased_at
        return time.monotonic() - monotonic < seconds and abs(time.time() - wall) < seconds

    async def _hold_lease(self) -> bool:
        """Whether this process sends now: it holds the store's lease, renewed when due."""
        if self._lease_fresh(LEASE_RENEW_SECONDS):
            return True
        renewed_at = (time.monotonic(), time.time())
        # (a StoreError leaves the last renewal standing: sending stops once it is too old)
        held = await self.store.take_lease(self.holder, LEASE_SECONDS)
        self._leased_at = renewed_at if held else None
        if held != self._leading:
            self._leading = held
            log.info("objection notifications are sent by %s", "this process" if held else
                     "another gateway process on this store (this one takes over if it stops)")
        return held

    async def _run(self) -> None:
        while True:
            try:
                now = time.monotonic()
                self._held = {a: held for a, held in self._held.items() if held[0] > now}
                by_account: dict[str, list[Notification]] = {}
                due = await self.store.due(
                    skip=self._sending.keys() | {
                        a for a, (_, url) in self._held.items() if url is None},
                    held={a: url for a, (_, url) in self._held.items() if url is not None},
                ) if await self._hold_lease() else []
                for notification in due:
                    self._held.pop(notification.account, None)  # its URL was changed
                    by_account.setdefault(notification.account, []).append(notification)
                for account, notifications in by_account.items():
                    task = asyncio.create_task(self._send_in_order(account, notifications),
                                               name=f"notify {account}")
                    self._sending[account] = task
                    task.add_done_callback(functools.partial(self._done, account))
            except StoreError as exc:
                log.error("notification outbox unavailable: %s", exc)
            except Exception:  # a bug must not stop every account's notifications for good
                log.exception("notification sender: unexpected error; going on at the next "
                              "scan")
            try:
                await asyncio.wait_for(self._wake.wait(), self.scan_seconds)
            except TimeoutError:
                pass
            self._wake.clear()

    def _done(self, account: str, _task: asyncio.Task[None]) -> None:
        self._sending.pop(account, None)
        self._wake.set()  # its next ones, if any, without waiting for the scan

    async def _send_in_order(self, account: str, notifications: list[Notification]) -> None:
        """One account's due notifications, oldest first, until one fails: then the account
        is held for that one's retry delay, and the rest wait for it (in their order) rather
        than each waiting out the timeout of an endpoint that is down."""
        try:
            for notification in notifications:
                if not self._lease_fresh(LEASE_VALID_SECONDS):
                    return  # (frozen, or the store unwritable): the lease's next holder
                    # reads the rest from the store
                delay = await self._send(notification)
                if delay is not None:
                    self._held[account] = (time.monotonic() + delay, notification.url)
                    return
        except StoreError as exc:
            log.error("notification outbox unavailable: %s", exc)
            self._held[account] = (time.monotonic() + self.scan_seconds, None)
        except Exception:  # a bug must not stop this account's notifications for good
            log.exception("notification sender: unexpected error for %s; going on at the "
                          "next scan", account)
            self._held[account] = (time.monotonic() + self.scan_seconds, None)

    async def _send(self, notification: Notification) -> float | None:
        """Send one; None when the account's next one may go now (this one was taken, or
        given up without a try), else the seconds until this one's retry (its endpoint
        failed)."""
        assert self._client is not None
        body = notification.body.encode()
        headers = signed_headers(self.secret, body)
        if not self.secret and not self._warned:
            self._warned = True
            log.warning("webhooks.notify_secret and opt_out_secret are not set: objection "
                        "notifications to notify_url go out unsigned")
        if not notification.url:  # nothing was tried: the account's next one may go
            await self.store.retry_later(notification.id, "the account has no notify_url any "
                                         "more", time.time(), give_up=True)
            log.warning("notification %d to %s given up: the account has no notify_url any "
                        "more", notification.id, notification.account)
            return None
        error: str | None = await unsafe_destination(notification.url)
        own = False
        try:
            if error is not None:
                raise ConnectionRefusedError(error)
            status = await post_status(self._client, notification.url, body, headers)
            error = None if 200 <= status < 300 else f"HTTP {status}"
            # about this notification, not the endpoint: the account's next ones go on
            own = 400 <= status < 500 and status not in ENDPOINT_REFUSALS
        except TimeoutError:
            error = no_answer()
        except Exception as exc:  # noqa: BLE001 - httpx.InvalidURL, a bad port, ...: every
            # failure of one notification is that notification's, retried or given up
            error = f"{exc.__class__.__name__}: {exc}"
        if error is None:
            await self.store.sent(notification.id, notification.url)
            log.info("objection notified to %s (%s)", notification.account,
                     shown_url(notification.url))
            return None
        now = time.time()
        # tried at least twice: one that waited out its account's long outage behind
        # another gets a try of its own
        give_up = notification.attempts > 0 and now - notification.created_at > GIVE_UP_SECONDS
        delay = min(RETRY_MAX_SECONDS,
                    self.retry_base * 2.0 ** min(notification.attempts, 64))
        shown = shown_url(notification.url)
        error = error.replace(notification.url, shown)  # httpx names the URL it failed on
        await self.store.retry_later(notification.id, error, now + delay, give_up,
                                     notification.url)
        log.warning("notifying %s at %s failed (%s)%s", notification.account, shown, error,
                    "; giving up" if give_up else f"; retry in {delay:.0f} s")
        return None if own or give_up else delay


def signed_headers(secret: bytes, body: bytes) -> dict[str, str]:
    """A notification's headers: JSON, signed as the opt-out webhook is (none without a
    secret)."""
    headers = {"Content-Type": "application/json"}
    if secret:
        headers["X-Gateway-Signature"] = signature(secret, body)
    return headers


ANSWER_BYTES = 65536  # of an answer's body read (and dropped) so its connection is reused


async def post_status(client: httpx.AsyncClient, url: str, body: bytes,
                      headers: dict[str, str]) -> int:
    """POST `body` and return the answer's status code. httpx's timeout is per read, so an
    endpoint trickling an endless answer would hold the account's notifications (and fill
    memory) for as long as it likes: the request and the answer's head get twice the timeout
    (past it, TimeoutError), then at most ANSWER_BYTES of its body are read within the timeout,
    so that the connection serves the next notification (a TLS handshake each, on the event
    loop the mail shares, otherwise). A longer or slower body is left unread and its
    connection closed; the status stands."""
    request = client.build_request("POST", url, content=body, headers=headers)
    async with asyncio.timeout(2 * TIMEOUT_SECONDS):
        answer = await client.send(request, stream=True)
    try:
        async with asyncio.timeout(TIMEOUT_SECONDS):
            read = 0
            async for chunk in answer.aiter_raw():
                read += len(chunk)
                if read > ANSWER_BYTES:
                    break
    except (TimeoutError, httpx.HTTPError):
        pass  # the status is what counts; this connection is not reused
    finally:
        await answer.aclose()
    return answer.status_code


def no_answer() -> str:
    """The error recorded when post_status timed out."""
    return f"no complete answer within {2 * TIMEOUT_SECONDS:.0f} s"


def erasure_body(address: str, at: float) -> str:
    """The JSON document POSTed to an account's notify_url when `address` is erased."""
    return json.dumps({"id": f"erasure-{secrets.token_hex(12)}", "event": "erasure",
                       "email": address, "at": at}, separators=(",", ":"))


async def tell_erasure(url: str, bodies: list[str], secret: str) -> str | None:
    """POST `bodies` (the address's objections still to send, then its erasure) to `url`
    at once, in order, signed as the outbox's (GDPR 19: the tools holding the address delete
    it too). Nothing of it is kept for a retry, the address being erased: None when all were
    taken, else what failed, for the operator to tell the tool another way."""
    if (problem := await unsafe_destination(url)) is not None:
        return problem
    key = secret.encode()
    try:
        async with httpx.AsyncClient(timeout=TIMEOUT_SECONDS, follow_redirects=False) as client:
            for body in bodies:
                data = body.encode()
                status = await post_status(client, url, data, signed_headers(key, data))
                if not 200 <= status < 300:
                    return f"HTTP {status}"
    except TimeoutError:
        return no_answer()
    except Exception as exc:  # noqa: BLE001 - httpx's errors, a bad URL: said, not raised
        said = f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__
        return said.replace(url, shown_url(url))
    return None


def blocked_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """An address no notification goes to: link-local (169.254.169.254, the cloud metadata
    service, among them), unspecified, multicast, reserved; IPv4-mapped forms too. Loopback
    and private networks stay allowed: a CRM on the same host or LAN is usual."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:  # ::1 is in IPv6's reserved ::/8: "localhost" must stay allowed
        return False
    return ip.is_link_local or ip.is_unspecified or ip.is_multicast or ip.is_reserved


def literal_problem(host: str) -> str | None:
    """Why a URL's host, when it is an IP address, may not be a notify_url's; None."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    return (f"{host} is a link-local, unspecified, multicast or reserved address (the cloud "
            "metadata service is one): no notification goes there") if blocked_address(ip) \
        else None


async def unsafe_destination(url: str) -> str | None:
    """Why `url` may not be POSTed to, from its host as written or as it resolves now (SSRF:
    a name pointing at 169.254.169.254); None when it may. A name that does not resolve is
    left to the request, which fails with its own error."""
    host = urlsplit(url).hostname or ""
    problem = literal_problem(host)
    if problem is not None or not host:
        return problem
    try:
        found = await asyncio.get_running_loop().getaddrinfo(host, None)
    except OSError:
        return None
    for *_, sockaddr in found:
        try:
            ip = ipaddress.ip_address(sockaddr[0])
        except ValueError:
            continue
        if blocked_address(ip):
            return (f"{host} resolves to {ip}, a link-local, unspecified, multicast or "
                    "reserved address: no notification goes there")
    return None
