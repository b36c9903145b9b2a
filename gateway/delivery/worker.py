"""Delivery workers: take copies from the queue, send them, record the outcome.

Nothing leaves the queue unrecorded: a copy ends `sent`, or `failed` together with a DSN to
the envelope sender, or stays `queued`/`deferred` with its last error.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable

from gateway.batch import GroupCommitter
from gateway.delivery.dsn import (
    GAVE_UP_PREFIX,
    LAST_ERROR,
    build_dsn,
    needs_smtputf8,
    should_send_dsn,
)
from gateway.delivery.upstream import Transport, longest_delivery
from gateway.errors import PermanentFailure, StoreError, TemporaryFailure
from gateway.settings import DeliverySettings
from gateway.store.queue import (
    SWEEP_SECONDS,
    Copy,
    IncomingMessage,
    Prepared,
    QueueStore,
    SentMark,
)

log = logging.getLogger("gateway.delivery")
HEADER_END = b"\r\n\r\n"


WAITING_PER_WORKER = 32  # copies waiting in memory for each worker (dispatch); the rest wait
# in the store
OUTCOME_RETRY_SECONDS = 30.0  # a copy whose outcome the store refused is tried again then
HEARTBEAT_SECONDS = 10.0  # well inside queue.STALE_HEARTBEAT_SECONDS
SCAN_ERROR_LOG_SECONDS = 60.0  # a scan failing again and again is said this often, not each time
SENT_RETRY_FIRST_SECONDS = 0.5  # a sent mark the store refused is written again after this,
SENT_RETRY_MAX_SECONDS = 30.0  # doubling up to this


def new_queue_id() -> str:
    """Short, unguessable, log-friendly (Postfix queue ids are 10-12 characters)."""
    return secrets.token_hex(8).upper()


def retry_delay(attempts: int, base: float, cap: float) -> float:
    """Exponential backoff: base, 2*base, 4*base ... capped (Postfix: 300s doubling to 4000s).
    The exponent is bounded: past 1,024 attempts (a short cap, days of outage) the float
    overflowed, and the OverflowError ended the worker task."""
    return float(min(cap, base * 2.0 ** min(max(0, attempts - 1), 64)))


RETRY_JITTER = 0.1  # a retry waits up to this much longer than its backoff, at random


def jittered(delay: float) -> float:
    """`delay`, plus up to RETRY_JITTER of it: the copies an upstream outage deferred
    together do not all come back in the same second, one burst per backoff step."""
    return delay * (1.0 + random.random() * RETRY_JITTER)


class DeliveryService:
    """A pool of worker tasks fed by an in-memory queue (fast path) and a store scan."""

    def __init__(self, queue: QueueStore, transport: Transport, settings: DeliverySettings,
                 reporting_mta: str) -> None:
        self.queue = queue
        self.transport = transport
        self.settings = settings
        self.reporting_mta = reporting_mta
        self._pending: asyncio.Queue[Copy] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._in_flight: set[int] = set()
        self._known: set[int] = set()  # claimed by us and not finished: never dispatched twice
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        # the last scan claimed all it could: more may be due, so the workers wake the scanner
        # as they run dry instead of waiting scan_seconds (a backlog after an outage or a
        # restart went at workers x 4 copies per scan_seconds: 64/s by default)
        self._more_due = False
        self._handing_back: set[asyncio.Task[None]] = set()
        self._claims_checked = asyncio.Lock()  # one check for every worker after a silence
        # A crash between the upstream's 250 and this record means one duplicate delivery,
        # never a loss; batching it saves an fsync per copy.
        self._sent: GroupCommitter[SentMark, None] = GroupCommitter(queue.mark_sent)
        # personalises and signs a copy right before it is sent (set by the runtime); raises
        # PermanentFailure (fail + DSN) or TemporaryFailure (defer) like a transport
        self.prepare: Callable[[Copy], Awaitable[Prepared]] | None = None
        self.on_sent: Callable[[Prepared], None] | None = None  # after the upstream took it

    def dispatch(self, copies: Iterable[Copy]) -> None:
        """Hand freshly committed (and claimed) copies to the workers: up to
        WAITING_PER_WORKER each waiting in memory. The others are handed back to the store
        and claimed by a scan as the workers free up: an upstream slower than the mail coming
        in (a tarpit, a content filter, minutes a reply) piled every new copy, its content
        with it, in memory for as long as that lasted (21,000 copies, +170 MB in two
        minutes)."""
        room = self.settings.workers * WAITING_PER_WORKER - self._pending.qsize()
        handed_back = []
        for copy in copies:
            if copy.delivery_id in self._known:
                continue
            if room <= 0:
                handed_back.append(copy.delivery_id)
                continue
            room -= 1
            self._known.add(copy.delivery_id)
            self._pending.put_nowait(copy)
        if handed_back:
            self._more_due = True  # the workers wake the scanner as they run dry
            task = asyncio.get_running_loop().create_task(self._hand_back(handed_back))
            self._handing_back.add(task)
            task.add_done_callback(self._handing_back.discard)

    async def _hand_back(self, delivery_ids: list[int]) -> None:
        try:
            await self.queue.hand_back(delivery_ids)
        except StoreError as exc:  # their claims expire (claim_seconds), then a scan
            log.warning("could not hand %d copies back to the queue (taken again when their "
                        "claims expire): %s", len(delivery_ids), exc)

    def wake(self) -> None:
        """Scan the store now (after `queue flush` or `retry` from another process)."""
        self._wake.set()

    async def start(self) -> None:
        released = await self.queue.register_instance()
        if released:
            log.warning("took over %d copies claimed by a gateway process that died", released)
        self._tasks = [asyncio.create_task(self._worker(i), name=f"delivery-{i}")
                       for i in range(self.settings.workers)]
        self._tasks.append(asyncio.create_task(self._scanner(), name="delivery-scan"))

    async def stop(self, drain_seconds: float = 30.0,
                   hurry: asyncio.Event | None = None) -> None:
        """Graceful: finish copies in flight (up to `drain_seconds`, or until `hurry` is set),
        hand the rest back."""
        self._stopping.set()
        self._wake.set()
        deadline = time.monotonic() + drain_seconds
        while (self._in_flight and time.monotonic() < deadline  # noqa: ASYNC110 - bounded poll
               and not (hurry is not None and hurry.is_set())):
            await asyncio.sleep(0.05)
        if self._in_flight:
            log.warning("stopping with %d copies still being delivered (ids %s): handed back, "
                        "tried again at the next start; an upstream that had taken one gets "
                        "it twice", len(self._in_flight),
                        ", ".join(map(str, sorted(self._in_flight)[:20])))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._handing_back, return_exceptions=True)
        try:
            await self.queue.unregister_instance()
        except StoreError as exc:
            log.error("could not release claims at stop (they expire on their own): %s", exc)
        await self.transport.close()

    async def _scanner(self) -> None:
        """Pick up due copies: deferred retries, and anything a dead process left behind."""
        swept = time.monotonic()
        failing, said = 0, 0.0  # scans failed in a row; when that was last logged
        while not self._stopping.is_set():
            try:
                if self.queue.heartbeat_late():
                    await self._check_claims()
                if time.monotonic() - swept >= SWEEP_SECONDS:
                    swept = time.monotonic()
                    released = await self.queue.release_dead()
                    if released:  # not only at start: a process that died meanwhile
                        log.warning("took over %d copies claimed by a gateway process that "
                                    "died", released)
                if self._pending.qsize() < self.settings.workers:
                    limit = self.settings.workers * 4
                    copies = await self.queue.claim_due(limit=limit)
                    self._more_due = len(copies) >= limit
                    self.dispatch(copies)
                await self.queue.heartbeat(self._known)  # read only when renewing
                if failing:
                    log.warning("queue scan works again, after %d failed scans", failing)
                    failing = 0
            except StoreError as exc:
                failing += 1  # (a full disk failed every scan, logged 5 times a second)
                if failing == 1 or time.monotonic() - said >= SCAN_ERROR_LOG_SECONDS:
                    said = time.monotonic()
                    log.error("queue scan failed%s: %s", f" ({failing} scans in a row)"
                              if failing > 1 else "", exc)
            try:
                # the heartbeat at least every HEARTBEAT_SECONDS, whatever scan_seconds says:
                # other processes take a silent one for dead (STALE_HEARTBEAT_SECONDS)
                await asyncio.wait_for(self._wake.wait(),
                                       min(self.settings.scan_seconds, HEARTBEAT_SECONDS))
            except TimeoutError:
                pass
            self._wake.clear()

    async def _worker(self, number: int) -> None:
        while not self._stopping.is_set():
            copy = await self._pending.get()
            if self._stopping.is_set():
                return
            if copy.delivery_id not in self._known:
                continue  # taken over by another process while this one was silent
            if self.queue.heartbeat_late():
                try:
                    if not await self._still_ours(copy):
                        continue
                except StoreError as exc:  # not known to be ours: not sent now; kept and
                    # tried again (its claim expires if the store stays unwritable)
                    log.error("delivery %d: could not check that this process still claims "
                              "it (tried again in %.0f s): %s", copy.delivery_id,
                              OUTCOME_RETRY_SECONDS, exc)
                    asyncio.get_running_loop().call_later(OUTCOME_RETRY_SECONDS,
                                                          self._retry_kept, copy)
                    continue
            self._in_flight.add(copy.delivery_id)
            kept = False
            try:
                await self._deliver(copy)
            except StoreError as exc:
                # The outcome (a deferral, a failure) could not be recorded: the copy stays
                # ours (its claim renewed) and is tried again shortly. Let go, it waited out
                # its claim (10 minutes) in silence. The upstream may see a copy twice, which
                # beats losing it.
                kept = self._keep_for_retry(copy, exc)
            except Exception as exc:
                # a bug, not the upstream's answer: retried with backoff like a 4xx, so that
                # the copy is not left claimed with nothing recorded, and after
                # delivery.max_age_hours it fails with a DSN like any other
                log.exception("delivery %d: unexpected error", copy.delivery_id)
                try:
                    await self._defer(copy, f"internal error: {exc.__class__.__name__}: {exc}")
                except Exception as again:  # nothing may end this task: the pool would
                    # shrink until nothing is delivered; kept and tried again, as above
                    kept = self._keep_for_retry(copy, again)
            finally:
                self._in_flight.discard(copy.delivery_id)
                if not kept:
                    self._known.discard(copy.delivery_id)
                if self._more_due and self._pending.qsize() < self.settings.workers:
                    self._more_due = False
                    self._wake.set()

    async def _still_ours(self, copy: Copy) -> bool:
        await self._check_claims()
        return copy.delivery_id in self._known

    async def _check_claims(self) -> None:
        """After a silence (this process frozen or the store unwritable for longer than
        queue.OWN_HEARTBEAT_FRESH), whether `copy` is still claimed by this process. Another
        one may have taken it for dead and taken its claims over: the copies it then holds in
        memory are dropped (that one sends them), not sent a second time. A copy being sent
        when the silence began is the one duplicate at-least-once delivery allows. Run by
        the workers before a copy, and by the scanner before its heartbeat (which would
        make the silence look over)."""
        async with self._claims_checked:
            if self.queue.heartbeat_late():  # (else another worker has just checked)
                ours = await self.queue.still_claimed(self._known)
                taken = self._known - ours - self._in_flight
                if taken:
                    self._known -= taken
                    log.warning("%d copies this process held were taken over by another "
                                "gateway process while this one was silent (frozen, "
                                "suspended, or its store unwritable): dropped here, sent by "
                                "that one", len(taken))

    def _keep_for_retry(self, copy: Copy, exc: Exception) -> bool:
        """The outcome of `copy` could not be recorded: it stays ours (in `_known`, its claim
        renewed) and goes back to the workers in OUTCOME_RETRY_SECONDS. True (kept)."""
        log.error("delivery %d: could not record the outcome (tried again in %.0f s): %r",
                  copy.delivery_id, OUTCOME_RETRY_SECONDS, exc)
        asyncio.get_running_loop().call_later(OUTCOME_RETRY_SECONDS, self._retry_kept, copy)
        return True

    def _retry_kept(self, copy: Copy) -> None:
        if self._stopping.is_set():
            self._known.discard(copy.delivery_id)  # its claim is released at stop
            return
        self._pending.put_nowait(copy)

    async def _deliver(self, copy: Copy) -> None:
        try:
            if self.prepare is not None:
                try:
                    prepared = await self.prepare(copy)
                except StoreError as exc:  # R1's check or the notice's facts could not be
                    # read: retried with backoff, not left claimed until the claim expires
                    raise TemporaryFailure(f"store: {exc}") from exc
            elif copy.account is None:  # a DSN: nothing to add
                prepared = Prepared(copy.content, SentMark(copy.delivery_id))
            else:  # never as stored: no unsubscribe fields, notice, DKIM, nor R1 again
                raise TemporaryFailure("the copy cannot be prepared yet (starting)")
            # each SMTP step has its own timeout (upstream.py, RFC 5321 4.5.3.2); this only
            # bounds a transport that hangs as a whole. It must not cut a slow but answering
            # upstream short of its final reply: the upstream would have the copy and we
            # would send it again
            answer = await asyncio.wait_for(
                self.transport.send(copy.mail_from, copy.recipient, prepared.content,
                                    copy.smtputf8),
                longest_delivery(self.settings))
        except PermanentFailure as exc:
            await self._fail(copy, str(exc), exc.remote_mta, exc.audit)
            return
        except (TimeoutError, TemporaryFailure, OSError) as exc:
            await self._defer(copy, str(exc) or exc.__class__.__name__,
                              getattr(exc, "remote_mta", None))
            return
        await self._record_sent(copy, prepared.mark.sent_at(time.time()))
        if self.on_sent is not None:
            self.on_sent(prepared)
        log.info("delivery %d msg %s to=<%s> sent: %s", copy.delivery_id, copy.message_id,
                 copy.recipient, answer)

    async def _record_sent(self, copy: Copy, mark: SentMark) -> None:
        """The upstream has the copy: record it, however long the store refuses.

        Until the record is written the copy stays ours (in `_known`, so the heartbeat keeps
        renewing its claim): given up, the claim would expire and the copy go out twice. Only
        a stop (this task cancelled) or a crash leaves it unrecorded, one duplicate at most.
        """
        delay = SENT_RETRY_FIRST_SECONDS
        while True:
            try:
                await self._sent.submit(mark)
                return
            except StoreError as exc:
                log.error("delivery %d msg %s to=<%s> was sent but cannot be recorded as sent "
                          "(retrying in %.1f s; it is not sent again meanwhile): %s",
                          copy.delivery_id, copy.message_id, copy.recipient, delay, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, SENT_RETRY_MAX_SECONDS)

    async def _defer(self, copy: Copy, error: str, remote_mta: str | None = None) -> None:
        """`remote_mta`: who gave `error` as its SMTP reply (an expiry's DSN names it)."""
        age_hours = (time.time() - (copy.queued_at or copy.received_at)) / 3600
        if age_hours >= self.settings.max_age_hours:
            await self._fail(copy, f"{GAVE_UP_PREFIX} {age_hours:.1f} h in the queue"
                                   f"{LAST_ERROR}{error}", remote_mta)
            return
        attempts = copy.attempts + 1
        delay = jittered(retry_delay(attempts, self.settings.retry_base_seconds,
                                     self.settings.retry_max_seconds))
        await self.queue.defer(copy.delivery_id, error, time.time() + delay)
        log.warning("delivery %d msg %s to=<%s> deferred (attempt %d, retry in %.0f s): %s",
                    copy.delivery_id, copy.message_id, copy.recipient, attempts, delay, error)

    async def _fail(self, copy: Copy, error: str, remote_mta: str | None = None,
                    audit: tuple[object, ...] | None = None) -> None:
        dsn = (self._dsn_for(copy, error, remote_mta) if should_send_dsn(copy.mail_from)
               else None)
        bounces = await self.queue.fail(copy.delivery_id, error, dsn, audit)
        log.warning("delivery %d msg %s to=<%s> failed%s: %s", copy.delivery_id,
                    copy.message_id, copy.recipient, f", DSN {dsn.id} queued" if dsn else "",
                    error)
        self.dispatch(bounces)

    def _dsn_for(self, copy: Copy, error: str, remote_mta: str | None) -> IncomingMessage:
        end = copy.content.find(HEADER_END)
        headers = copy.content[: end + 2] if end >= 0 else copy.content
        content = build_dsn(
            reporting_mta=self.reporting_mta, queue_id=copy.message_id,
            mail_from=copy.mail_from, recipient=copy.recipient, status="",
            diagnostic=error, arrival_date=copy.received_at, original_headers=headers,
            remote_mta=remote_mta)
        return IncomingMessage(new_queue_id(), time.time(), None, "127.0.0.1", "", content,
                               (copy.mail_from,), smtputf8=needs_smtputf8(content))
