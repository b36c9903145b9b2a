"""The delivery workers on a real store: whatever goes wrong preparing a copy, its outcome is
recorded (deferred with the error, then failed with a DSN), never left claimed in silence."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sqlite3
import time

from gateway.delivery.upstream import MaildirTransport
from gateway.delivery.worker import DeliveryService
from gateway.errors import StoreError, TemporaryFailure
from gateway.model import Decision, Verdict
from gateway.settings import DeliverySettings
from gateway.store.db import Database
from gateway.store.quarantine import QuarantineStore
from gateway.store.queue import Copy, Held, IncomingMessage, Prepared, QueueStore, SentMark


async def until(predicate, seconds: float = 5.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if result := await predicate():
            return result
        await asyncio.sleep(0.02)
    raise AssertionError("timed out")


async def as_stored(copy: Copy) -> Prepared:
    """A prepare that changes nothing (these tests are not about the copy's content)."""
    return Prepared(copy.content, SentMark(copy.delivery_id))


async def run_with_a_broken_prepare(db: Database, tmp_path, max_age_hours: float,
                                    error: Exception | None = None):
    queue = QueueStore(db, "me")
    settings = dataclasses.replace(DeliverySettings(), maildir=str(tmp_path / "out"),
                                   workers=1, max_age_hours=max_age_hours)
    service = DeliveryService(queue, MaildirTransport(settings.maildir), settings,
                              "gateway.test")
    calls = []

    async def prepare(copy: Copy) -> Prepared:
        calls.append(copy.delivery_id)
        raise error or RuntimeError("a bug in the transform")

    service.prepare = prepare
    await service.start()
    [copies] = await queue.commit_messages([IncomingMessage(
        "Q1", time.time(), "crm", "127.0.0.1", "news@example.com",
        b"From: news@example.com\r\nSubject: x\r\n\r\nbody\r\n", ("jane@example.net",))])
    service.dispatch(copies)
    return queue, service, calls


async def first_deferred(queue: QueueStore):
    entries = [e for e in await queue.list() if e.state == "deferred"]
    return entries[0] if entries else None


async def test_an_unexpected_error_preparing_a_copy_defers_it_with_the_error(db, tmp_path):
    queue, service, calls = await run_with_a_broken_prepare(db, tmp_path, max_age_hours=120)
    try:
        entry = await until(lambda: first_deferred(queue))
        assert entry.attempts == 1 and calls
        assert entry.last_error == "internal error: RuntimeError: a bug in the transform"
    finally:
        await service.stop(drain_seconds=1)


async def test_a_store_error_preparing_a_copy_defers_it_at_once(db, tmp_path):
    """R1's re-check reads the store: a failure there (locked past its timeout) is retried
    with backoff, not left claimed in silence until the claim expires (600 s)."""
    queue, service, calls = await run_with_a_broken_prepare(
        db, tmp_path, max_age_hours=120, error=StoreError("database is locked"))
    try:
        entry = await until(lambda: first_deferred(queue))
        assert entry.attempts == 1 and calls
        assert entry.last_error == "store: database is locked"
    finally:
        await service.stop(drain_seconds=1)


async def test_an_outcome_the_store_refused_is_recorded_at_the_next_try(db, tmp_path,
                                                                         monkeypatch):
    """The deferral could not be written (the store locked past its timeout): the copy was
    dropped from the worker's hands with its claim, and waited 10 minutes in silence."""
    from gateway.delivery import worker

    monkeypatch.setattr(worker, "OUTCOME_RETRY_SECONDS", 0.2)
    queue, service, calls = await run_with_a_broken_prepare(
        db, tmp_path, max_age_hours=120, error=TemporaryFailure("421 later"))
    real_defer, refusals = queue.defer, []

    async def defer_once_refused(*args, **kwargs):
        if not refusals:
            refusals.append(args)
            raise StoreError("database is locked")
        return await real_defer(*args, **kwargs)
    monkeypatch.setattr(queue, "defer", defer_once_refused)
    try:
        entry = await until(lambda: first_deferred(queue))
        assert refusals and len(calls) == 2 and entry.last_error == "421 later"
    finally:
        await service.stop(drain_seconds=1)


async def test_a_scan_failing_again_and_again_is_logged_once_then_its_recovery(
        db, tmp_path, monkeypatch, caplog):
    """A full disk failed every queue scan, each logged (5 lines a second with a short
    scan_seconds: durability review): the first failure is said, then a line a minute at
    most, and the recovery."""
    queue = QueueStore(db, "me")
    settings = dataclasses.replace(DeliverySettings(), maildir=str(tmp_path / "out"),
                                   workers=1, scan_seconds=0.02)
    service = DeliveryService(queue, MaildirTransport(settings.maildir), settings,
                              "gateway.test")
    real_claim, refused = queue.claim_due, []

    async def claim_refused(*args, **kwargs):
        if len(refused) < 20:
            refused.append(1)
            raise StoreError("database or disk is full")
        return await real_claim(*args, **kwargs)
    monkeypatch.setattr(queue, "claim_due", claim_refused)
    with caplog.at_level("WARNING", "gateway.delivery"):
        await service.start()
        try:
            await until(lambda: asyncio.sleep(0, "works again" in caplog.text))
        finally:
            await service.stop(drain_seconds=1)
    failed = [r.getMessage() for r in caplog.records if "scan failed" in r.getMessage()]
    assert len(refused) == 20 and failed == ["queue scan failed: database or disk is full"]
    assert "queue scan works again, after 20 failed scans" in caplog.text


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


class SlowUpstream:
    """A transport that takes `delay` per copy and notes who sent what."""

    def __init__(self, name: str, log: list, delay: float) -> None:
        self.name, self.log, self.delay = name, log, delay

    async def send(self, mail_from: str, recipient: str, content: bytes,
                   smtputf8: bool = False) -> str:
        await asyncio.sleep(self.delay)
        self.log.append((self.name, recipient))
        return "250 ok"

    async def close(self) -> None:
        return None


@contextlib.asynccontextmanager
async def two_processes(db, sent: list, delay: float):
    """Two gateway processes' delivery services, A and B, on one store (smtp.processes = 2),
    with claims of 1 s, each sending through a SlowUpstream that notes (name, recipient)."""
    settings = dataclasses.replace(DeliverySettings(), workers=1, scan_seconds=0.1)
    services = []
    for name in ("A", "B"):
        queue = QueueStore(db, f"host-{name}", claim_seconds=1.0)
        service = DeliveryService(queue, SlowUpstream(name, sent, delay), settings, "gw.test")
        # as start() but for register_instance, which takes a row with this test's own pid
        # for a dead incarnation of the other
        service._tasks = [asyncio.create_task(service._worker(0)),
                          asyncio.create_task(service._scanner())]
        services.append(service)
    try:
        yield services
    finally:
        for service in services:
            service._stopping.set()
            for task in service._tasks:
                task.cancel()
            await asyncio.gather(*service._tasks, return_exceptions=True)


async def test_a_live_process_keeps_its_claims_however_long_its_backlog(db):
    """Two processes on one store (smtp.processes = 2), claims of 1 s, a backlog of 3 s in
    the first: its claims are renewed by its heartbeat, so the second never takes them and
    no copy is sent twice."""
    sent: list = []
    async with two_processes(db, sent, delay=0.6) as (first, _):
        copies = await first.queue.commit_messages([IncomingMessage(
            f"M{i}", time.time(), None, "127.0.0.1", "s@example.com", b"Subject: x\r\n\r\nb\r\n",
            (f"r{i}@example.net",)) for i in range(5)])
        first.dispatch(c for cs in copies for c in cs)
        async def all_sent() -> bool:
            return len(sent) >= 5
        await until(all_sent, seconds=10)
        await asyncio.sleep(1.5)  # time for a second sender, if there were one
    assert sorted(r for _, r in sent) == [f"r{i}@example.net" for i in range(5)], sent
    assert {name for name, _ in sent} == {"A"}


async def test_a_backlog_goes_as_fast_as_the_workers_take_it_not_one_claim_per_scan(db):
    """After an outage or a restart the due copies are found by the scan alone, which
    claimed workers x 4 of them and slept scan_seconds: 64 copies/s by default, whatever the
    upstream's pace (1,000 copies took 15.8 s). The workers wake it as they run dry."""
    sent: list = []
    queue = QueueStore(db, "host-A")
    settings = dataclasses.replace(DeliverySettings(), workers=2, scan_seconds=30.0)
    service = DeliveryService(queue, SlowUpstream("A", sent, 0.0), settings, "gw.test")
    service.prepare = as_stored
    committed = await queue.commit_messages([IncomingMessage(
        f"M{i}", time.time(), None, "127.0.0.1", "s@example.com", b"Subject: x\r\n\r\nb\r\n",
        (f"r{i}@example.net",)) for i in range(60)])
    # handed back, as at a stop or by a process that died: only a scan finds them
    await queue.release(c.delivery_id for cs in committed for c in cs)
    await service.start()
    try:
        async def all_sent() -> bool:
            return len(sent) >= 60
        await until(all_sent, seconds=8)  # not 7 scans of 10 s (the heartbeat's pace)
    finally:
        await service.stop(drain_seconds=1)
    assert sorted(r for _, r in sent) == sorted(f"r{i}@example.net" for i in range(60))


async def test_a_dsn_is_claimed_by_the_process_that_queued_it(db):
    queue = QueueStore(db, "host-A")
    [[copy]] = await queue.commit_messages([IncomingMessage(
        "M1", time.time(), "crm", "127.0.0.1", "news@example.com", b"Subject: x\r\n\r\nb\r\n",
        ("gone@example.net",))])
    dsn = IncomingMessage("D1", time.time(), None, "127.0.0.1", "", b"Subject: DSN\r\n\r\nb\r\n",
                          ("news@example.com",))
    [bounce] = await queue.fail(copy.delivery_id, "550 5.1.1 no such user", dsn)
    other = QueueStore(db, "host-B")
    assert await other.claim_due() == []  # it is A's to send, not B's too
    row = await db.fetchone("SELECT claimed_by FROM deliveries WHERE id = ?",
                            (bounce.delivery_id,))
    assert row[0] == "host-A"


async def test_a_copy_claimed_but_never_handed_to_the_workers_is_not_held_for_ever(db):
    """The client gone while its message committed: the copies are claimed, never
    dispatched. Only copies the workers hold are renewed, so these expire and a scan sends
    them."""
    sent: list = []
    settings = dataclasses.replace(DeliverySettings(), workers=1, scan_seconds=0.1)
    queue = QueueStore(db, "host-A", claim_seconds=1.0)
    service = DeliveryService(queue, SlowUpstream("A", sent, 0.0), settings, "gw.test")
    service._tasks = [asyncio.create_task(service._worker(0)),
                      asyncio.create_task(service._scanner())]
    try:
        await queue.commit_messages([IncomingMessage(
            "M1", time.time(), None, "127.0.0.1", "s@example.com", b"Subject: x\r\n\r\nb\r\n",
            ("lost@example.net",))])  # committed and claimed, never dispatched

        async def delivered() -> bool:
            return bool(sent)
        await until(delivered, seconds=5)
    finally:
        service._stopping.set()
        for task in service._tasks:
            task.cancel()
        await asyncio.gather(*service._tasks, return_exceptions=True)
    assert sent == [("A", "lost@example.net")]


async def test_a_sent_copy_whose_record_fails_is_neither_sent_again_nor_taken_over(db):
    """The upstream took the copy, then the store refused its sent mark (a long lock, a full
    disk): the worker keeps the copy and writes the mark again. It was left claimed, and sent
    a second time once its claim expired."""
    sent: list = []
    with contextlib.closing(sqlite3.connect(db.path, timeout=30,  # a busy CI
                                            check_same_thread=False)) as other:
        other.execute("CREATE TRIGGER refuse_sent BEFORE UPDATE OF state ON deliveries "
                      "WHEN NEW.state = 'sent' BEGIN SELECT RAISE(ABORT, 'disk trouble'); END")
        other.commit()
        async with two_processes(db, sent, delay=0.0) as (first, _):
            [copies] = await first.queue.commit_messages([IncomingMessage(
                "M1", time.time(), None, "127.0.0.1", "s@example.com", b"Subject: x\r\n\r\nb\r\n",
                ("jane@example.net",))])
            first.dispatch(copies)
            await until(lambda: asyncio.sleep(0, bool(sent)))
            await asyncio.sleep(2.5)  # more than two claim periods with the mark refused
            assert (await db.fetchone("SELECT state FROM deliveries"))[0] == "queued"
            def drop() -> None:  # on a thread: done on the event loop, it blocked the loop
                # while a transaction of the store's (aiosqlite, held across awaits) waited for
                # that loop to go on: neither moved until "database is locked" 30 s later
                other.execute("DROP TRIGGER refuse_sent")
                other.commit()
            await asyncio.to_thread(drop)

            async def recorded():
                return (await db.fetchone("SELECT state FROM deliveries"))[0] == "sent"
            await until(recorded)
            await asyncio.sleep(1.5)
    assert sent == [("A", "jane@example.net")]


class RefusingUpstream:
    """An upstream that answers every copy with a temporary error."""

    def __init__(self) -> None:
        self.tried: list[str] = []

    async def send(self, mail_from: str, recipient: str, content: bytes,
                   smtputf8: bool = False) -> str:
        self.tried.append(recipient)
        raise TemporaryFailure("421 4.3.0 try again later")

    async def close(self) -> None:
        return None


async def test_a_copy_released_from_the_quarantine_ages_from_its_release(db):
    """delivery.max_age_hours counts a copy's time in the queue: a message held for a week and
    then released gets its retries, not a failure at its first temporary error."""
    queue = QueueStore(db, "me")
    week_ago = time.time() - 7 * 86400
    hold = Decision(Verdict.QUARANTINE, "R9", "sensitive topic", "a human decides")
    await queue.commit_messages([IncomingMessage(
        "OLD", week_ago, "crm", "127.0.0.1", "news@example.com",
        b"From: news@example.com\r\nSubject: x\r\n\r\nbody\r\n", (),
        held=(Held("jane@example.net", hold),))])
    quarantine = QuarantineStore(db)
    [entry] = await quarantine.list()
    await quarantine.release(entry, None, "R9", "alice", "checked", b"h" * 32)
    upstream = RefusingUpstream()
    settings = dataclasses.replace(DeliverySettings(), workers=1, scan_seconds=0.1,
                                   max_age_hours=120)
    service = DeliveryService(queue, upstream, settings, "gw.test")
    service.prepare = as_stored
    await service.start()
    try:
        async def deferred_or_failed():
            row = await db.fetchone("SELECT state, last_error FROM deliveries")
            return tuple(row) if row and row[0] != "queued" else None
        state, error = await until(deferred_or_failed)
    finally:
        await service.stop(drain_seconds=1)
    assert upstream.tried == ["jane@example.net"]
    assert (state, error) == ("deferred", "421 4.3.0 try again later")


async def test_a_copy_is_never_sent_as_stored_and_backoff_never_overflows(db: Database):
    """At a restart the workers started before `prepare` was set: a backlog copy claimed in
    that window went out with no unsubscribe fields, notice or DKIM, and no R1 check. And
    past 1,024 attempts the backoff's float overflowed and ended the worker task."""
    from gateway.delivery.worker import retry_delay

    assert retry_delay(1025, 1.0, 300.0) == 300.0 and retry_delay(10**6, 60.0, 3600.0) == 3600.0
    assert retry_delay(1, 60.0, 3600.0) == 60.0 and retry_delay(3, 60.0, 3600.0) == 240.0
    queue = QueueStore(db, "me")
    [copies] = await queue.commit_messages([IncomingMessage(
        "M", time.time(), "crm", "127.0.0.1", "news@example.com",
        b"From: news@example.com\r\nSubject: x\r\n\r\nbody\r\n", ("jane@example.net",))])
    upstream = RefusingUpstream()
    settings = dataclasses.replace(DeliverySettings(), workers=1, scan_seconds=0.1)
    service = DeliveryService(queue, upstream, settings, "gw.test")  # no prepare (yet)
    await service.start()
    service.dispatch(copies)
    try:
        async def deferred():
            row = await db.fetchone("SELECT state, last_error FROM deliveries")
            return tuple(row) if row and row[0] == "deferred" else None
        state, error = await until(deferred)
    finally:
        await service.stop(drain_seconds=1)
    assert upstream.tried == []  # never handed to the upstream as stored
    assert "cannot be prepared yet" in error


def test_retries_are_spread_never_sooner_than_the_backoff():
    from gateway.delivery.worker import RETRY_JITTER, jittered
    delays = [jittered(300.0) for _ in range(200)]
    assert all(300.0 <= d <= 300.0 * (1 + RETRY_JITTER) for d in delays)
    assert len({round(d, 3) for d in delays}) > 100  # not one burst at the same second



async def test_a_process_frozen_past_its_takeover_does_not_send_its_backlog_again(db):
    """A process frozen (SIGSTOP, `docker pause`, a VM suspended) for longer than
    STALE_HEARTBEAT_SECONDS is taken for dead: another one releases its claims and sends its
    copies. Back, it held the same copies in memory and sent every one of them a second
    time (600 of 600 in a `kill -STOP` test). Now, its own heartbeat late, it asks the store
    which are still its own first."""
    from gateway.store import queue as queue_module
    sent: list = []
    settings = dataclasses.replace(DeliverySettings(), workers=2, scan_seconds=0.1)
    frozen = DeliveryService(QueueStore(db, "host-A"), SlowUpstream("A", sent, 0.0), settings,
                             "gw.test")
    committed = await frozen.queue.commit_messages([IncomingMessage(
        f"M{i}", time.time(), None, "127.0.0.1", "s@example.com", b"Subject: x\r\n\r\nb\r\n",
        (f"r{i}@example.net",)) for i in range(6)])
    copies = [c for cs in committed for c in cs]
    frozen.dispatch(copies[:5])  # its workers' backlog; the sixth is claimed, not handed over
    # the freeze: A's heartbeat stops for 200 s, by both its clocks and the store's
    with sqlite3.connect(db.path) as conn:
        conn.execute("INSERT INTO instances (id, host, pid, started_at, heartbeat)"
                     " VALUES ('host-A', 'elsewhere', 1, 0, ?)", (time.time() - 200,))
    frozen.queue._heartbeat_written -= 200
    frozen.queue._heartbeat_wall -= 200
    other = DeliveryService(QueueStore(db, "host-B"), SlowUpstream("B", sent, 0.0), settings,
                            "gw.test")
    assert await other.queue.release_dead() == 6  # B takes A for dead
    other._tasks = [asyncio.create_task(other._worker(0)),
                    asyncio.create_task(other._scanner())]
    try:
        async def six_sent() -> bool:
            return len(sent) >= 6
        await until(six_sent)
        # A thaws: its workers and scanner run again
        frozen._tasks = [asyncio.create_task(frozen._worker(i)) for i in range(2)] + [
            asyncio.create_task(frozen._scanner())]
        await asyncio.sleep(1.0)
        assert not frozen._known and frozen._pending.empty()
    finally:
        for service in (frozen, other):
            service._stopping.set()
            for task in service._tasks:
                task.cancel()
            await asyncio.gather(*service._tasks, return_exceptions=True)
    assert sorted(r for _, r in sent) == sorted(f"r{i}@example.net" for i in range(6)), sent
    assert {name for name, _ in sent} == {"B"}
    assert not frozen.queue.heartbeat_late()  # it carries on as a live process
    assert queue_module.OWN_HEARTBEAT_FRESH < queue_module.STALE_HEARTBEAT_SECONDS


class GatedUpstream:
    """An upstream that answers nothing until `open` is set (a tarpit, minutes a reply)."""

    def __init__(self, sent: list) -> None:
        self.sent = sent
        self.open = asyncio.Event()

    async def send(self, mail_from: str, recipient: str, content: bytes,
                   smtputf8: bool = False) -> str:
        await self.open.wait()
        self.sent.append(recipient)
        return "250 ok"

    async def close(self) -> None:
        return None


async def test_copies_beyond_what_the_workers_can_take_wait_in_the_store_not_in_memory(db):
    """An upstream slower than the mail coming in: every copy committed meanwhile was put in
    the process's memory queue, content and all (21,000 copies, +170 MB in two minutes of a
    soak). Now at most WAITING_PER_WORKER a worker wait there; the rest are handed back to
    the store, unclaimed, and all go once the upstream answers, each once."""
    from gateway.delivery import worker as worker_module
    sent: list = []
    upstream = GatedUpstream(sent)
    settings = dataclasses.replace(DeliverySettings(), workers=2, scan_seconds=0.1)
    service = DeliveryService(QueueStore(db, "host-A"), upstream, settings, "gw.test")
    service.prepare = as_stored
    await service.start()
    room = settings.workers * worker_module.WAITING_PER_WORKER
    body = b"Subject: x\r\n\r\n" + b"x" * 20_000 + b"\r\n"
    try:
        for batch in range(5):
            committed = await service.queue.commit_messages([IncomingMessage(
                f"M{batch}-{i}", time.time(), None, "127.0.0.1", "s@example.com", body,
                (f"r{batch}-{i}@example.net",)) for i in range(50)])
            service.dispatch(c for cs in committed for c in cs)
            await asyncio.sleep(0.05)
        assert service._pending.qsize() <= room
        assert len(service._known) <= room + settings.workers

        async def handed_back() -> bool:
            row = await db.fetchone("SELECT count(*) FROM deliveries WHERE claimed_by IS NULL")
            return row[0] >= 250 - len(service._known)
        await until(handed_back)
        upstream.open.set()

        async def all_sent() -> bool:
            return len(sent) >= 250
        await until(all_sent, seconds=20)
        await asyncio.sleep(0.5)  # a second send of any, if there were one
    finally:
        await service.stop(drain_seconds=1)
    assert sorted(sent) == sorted(f"r{b}-{i}@example.net" for b in range(5) for i in range(50))
