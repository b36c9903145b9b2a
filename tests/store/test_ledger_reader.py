"""The ledger reader process (gateway serve's RCPT lookups): same answers as the thread, and
nothing wrong ever taken for an answer when the process dies or a read is given up."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from gateway.errors import StoreError
from gateway.store.ledger import CONTACT_COLUMNS, LedgerLookup
from gateway.store.ledger_reader import RESTART_SECONDS, LedgerReader

from ledger_cases import import_csv

CSV = ("email,consent,consent_at,source_name,source_type,topics\n"
       + "".join(f"p{i}@example.com,granted,2026-01-0{i + 1},Form {i},direct,crm;hr\n"
                 for i in range(4)))
ADDRESSES = ["p3@example.com", "nobody@example.com", "p1@Example.COM", "p0@example.com",
             "p2@example.com"]


async def test_the_reader_process_answers_exactly_what_the_thread_reads(db, hasher):
    import_csv(db, hasher, CSV)

    def change(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE contacts SET informed_at = 1795656443.564529"
                     " WHERE address = 'p2@example.com'")
        conn.execute("INSERT INTO suppression (hash, created_at, channel)"
                     " VALUES (?, 0, 'one-click')", (hasher("p0@example.com"),))

    await db.write(change)
    by_thread = LedgerLookup(db.path, hasher)
    by_process = LedgerLookup(db.path, hasher, reader_process=True)
    inline = LedgerLookup(db.path, hasher, reader_process=True, inline=True)
    await by_process.start()
    try:
        threaded = await asyncio.gather(*(by_thread.facts(a) for a in ADDRESSES))
        processed = await asyncio.gather(*(by_process.facts(a) for a in ADDRESSES))
        inlined = await asyncio.gather(*(inline.facts(a) for a in ADDRESSES))
    finally:
        await by_thread.close()
        await by_process.close()
        await inline.close()
    assert processed == threaded
    assert inlined == threaded
    assert (inline.batches["inline"], inline.batches["reader"]) == (1, 0)
    assert (by_process.batches["inline"], by_process.batches["reader"]) == (0, 1)
    assert [f.contact.address if f.contact else None for f in processed] == [
        "p3@example.com", None, "p1@example.com", "p0@example.com", "p2@example.com"]
    assert [f.suppressed for f in processed] == [False, False, False, True, False]
    assert processed[4].contact is not None
    assert processed[4].contact.informed_at == 1795656443.564529  # every digit of the REAL
    assert processed[0].contact is not None and processed[0].contact.topics == {"crm", "hr"}


async def test_what_a_verdict_keeps_of_a_read_is_left_alone_by_the_cyclic_collector(db, hasher):
    """A transaction keeps what each RCPT read until it ends (thousands of recipients at once
    under load). Those rows are plain values: the collector stops tracking them at its first
    pass, so they add nothing to later collections; the facts are rebuilt from them whole."""
    import_csv(db, hasher, CSV)
    for lookup in (LedgerLookup(db.path, hasher), LedgerLookup(db.path, hasher,
                                                               reader_process=True)):
        try:
            reads = [await lookup.read(a) for a in ADDRESSES]
            gc.collect()
            assert [gc.is_tracked(read.row) for read in reads] == [False] * len(ADDRESSES)
            assert [read.facts() for read in reads] == [await lookup.facts(a) for a in ADDRESSES]
            assert reads[0].contact_id == reads[0].facts().contact.id is not None
            assert reads[1].contact_id is None and reads[1].facts().contact is None
        finally:
            await lookup.close()


async def test_a_locked_database_sends_inline_reads_to_the_reader_and_never_blocks_the_loop(
        db, hasher, tmp_path):
    """The inline connection never waits for a lock: the batch goes to the reader process,
    which waits (busy timeout) while the event loop goes on, and so do the next batches for
    the back-off; after it, reads are inline again."""
    import_csv(db, hasher, CSV)
    path = tmp_path / "copy.db"  # a copy no other connection holds open, so it can be locked
    source, copy = sqlite3.connect(db.path), sqlite3.connect(path)
    source.backup(copy)
    copy.execute("PRAGMA journal_mode=WAL")
    source.close()
    copy.close()
    locker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    locker.execute("PRAGMA locking_mode=EXCLUSIVE")  # readers of a WAL database locked out
    locker.execute("BEGIN EXCLUSIVE")
    locker.execute("UPDATE contacts SET first_name = 'Locked' WHERE address = 'p1@example.com'")
    release = threading.Timer(0.6, lambda: (locker.execute("COMMIT"), locker.close()))
    lookup = LedgerLookup(path, hasher, reader_process=True, inline=True, inline_backoff=1.5)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticking = asyncio.create_task(ticker())
    try:
        release.start()
        start = time.monotonic()
        facts = await lookup.facts("p1@example.com")
        waited = time.monotonic() - start
        assert facts.contact is not None and facts.contact.first_name == "Locked"
        assert waited >= 0.5 and ticks >= 20  # the reader waited; the loop did not
        assert (lookup.batches["refused"], lookup.batches["reader"]) == (1, 1)
        assert (await lookup.facts("p2@example.com")).contact is not None
        assert (lookup.batches["inline"], lookup.batches["reader"]) == (0, 2)  # backing off
        await asyncio.sleep(1.6 - (time.monotonic() - start))  # the back-off began after start
        assert (await lookup.facts("p3@example.com")).contact is not None
        assert (lookup.batches["inline"], lookup.batches["reader"]) == (1, 2)
    finally:
        ticking.cancel()
        release.join()
        await lookup.close()


async def test_inline_reads_slow_twice_in_a_row_go_to_the_reader_for_the_back_off(db, hasher):
    """A slow inline batch (pages from disk) is read all the same; two in a row send the next
    batches to the reader process until the back-off ends."""
    import_csv(db, hasher, CSV)
    lookup = LedgerLookup(db.path, hasher, reader_process=True, inline=True, inline_slow=0.0,
                          inline_backoff=0.5)
    try:
        for address in ("p0@example.com", "p1@example.com"):  # every read counts as slow
            assert (await lookup.facts(address)).contact is not None
        assert (lookup.batches["inline"], lookup.batches["slow"], lookup.batches["reader"]) \
            == (2, 2, 0)
        assert (await lookup.facts("p2@example.com")).contact is not None
        assert (lookup.batches["inline"], lookup.batches["reader"]) == (2, 1)
        await asyncio.sleep(0.6)
        assert (await lookup.facts("p3@example.com")).contact is not None
        assert (lookup.batches["inline"], lookup.batches["reader"]) == (3, 1)
    finally:
        await lookup.close()


async def test_a_batch_larger_than_one_statement_comes_back_whole_and_in_order(db, hasher):
    import_csv(db, hasher, "email,consent,consent_at,source_name,source_type\n" + "".join(
        f"m{i}@example.com,granted,2026-01-01,Form,direct\n" for i in range(150)))
    lookup = LedgerLookup(db.path, hasher, reader_process=True)
    await lookup.start()
    try:
        wanted = [f"m{i}@example.com" for i in reversed(range(150))]
        found = await asyncio.gather(*(lookup.facts(a) for a in wanted))
    finally:
        await lookup.close()
    assert [f.contact.address for f in found if f.contact] == wanted


def _reader_pid(lookup: LedgerLookup) -> int:
    assert lookup._reader is not None and lookup._reader._proc is not None
    return lookup._reader._proc.pid


async def test_a_reader_known_dead_is_replaced_before_the_next_batch(db, hasher, caplog):
    import_csv(db, hasher, CSV)
    lookup = LedgerLookup(db.path, hasher, reader_process=True)
    await lookup.start()
    try:
        first = _reader_pid(lookup)
        assert (await lookup.facts("p1@example.com")).contact is not None
        os.kill(first, signal.SIGKILL)
        await asyncio.sleep(RESTART_SECONDS + 0.1)  # reaped, and not restarted too often
        facts = await lookup.facts("p1@example.com")
        assert facts.contact is not None and facts.contact.address == "p1@example.com"
        assert _reader_pid(lookup) != first
    finally:
        await lookup.close()
    assert lookup._reader is not None and lookup._reader._proc is None
    assert "ledger reader process exited (-9): starting another" in caplog.text


class DiesOnItsFirstRequest(LedgerReader):
    """Its first process reads one request and exits without an answer."""

    starts = 0

    def command(self) -> list[str]:
        self.starts += 1
        if self.starts == 1:
            return [sys.executable, "-c", "import sys; sys.stdin.readline()"]
        return super().command()


class ExitsAtOnce(LedgerReader):
    """Every process exits as soon as it starts (a store it cannot open, say)."""

    starts = 0

    def command(self) -> list[str]:
        self.starts += 1
        return [sys.executable, "-c", "pass"]


async def test_a_reader_dying_on_a_batch_fails_that_batch_only(db, hasher, caplog):
    import_csv(db, hasher, CSV)
    reader = DiesOnItsFirstRequest(str(db.path))
    await reader.start()
    try:
        with pytest.raises(StoreError, match="ledger read failed: the ledger reader process"):
            await reader.read([(hasher("p1@example.com"), "p1@example.com")])  # RCPT: 451
        assert reader._proc is None  # abandoned
        await asyncio.sleep(RESTART_SECONDS + 0.1)
        [[item]] = await reader.read([(hasher("p1@example.com"), "p1@example.com")])
        assert reader.starts == 2
        assert "p1@example.com" in item  # a real reader, started for this batch
    finally:
        await reader.close()
    assert "the next read starts another" in caplog.text


async def test_a_reader_that_keeps_dying_is_restarted_at_most_once_a_second(db, hasher):
    reader = ExitsAtOnce(str(db.path))
    await reader.start()
    keys = [(hasher("p@example.com"), "p@example.com")]
    try:
        for _ in range(5):  # each fails at once: no process started for each
            with pytest.raises(StoreError, match="ledger read failed"):
                await reader.read(keys)
        assert reader.starts == 1
        await asyncio.sleep(RESTART_SECONDS + 0.1)
        with pytest.raises(StoreError, match="ledger read failed"):
            await reader.read(keys)
        assert reader.starts == 2
    finally:
        await reader.close()


async def test_the_answer_to_a_read_given_up_is_never_taken_for_the_next(db, hasher):
    import_csv(db, hasher, CSV)
    reader = LedgerReader(str(db.path))
    await reader.start()
    try:
        given_up = asyncio.create_task(reader.read([(hasher("p0@example.com"),
                                                    "p0@example.com")]))
        for _ in range(3):
            await asyncio.sleep(0)  # the request is written, the answer not yet read
        given_up.cancel()
        with pytest.raises(asyncio.CancelledError):
            await given_up
        [[item]] = await reader.read([(hasher("p3@example.com"), "p3@example.com")])
    finally:
        await reader.close()
    assert item[0] == 0 and "p3@example.com" in item  # p3's row, not p0's late answer


def test_the_process_answers_bad_requests_ignores_stop_signals_and_ends_at_eof(db, hasher):
    import_csv(db, hasher, CSV)
    proc = subprocess.Popen([sys.executable, "-m", "gateway.store.ledger_reader", str(db.path)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None

    def ask(line: bytes) -> bytes:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(line + b"\n")
        proc.stdin.flush()
        return proc.stdout.readline()

    try:
        assert ask(b"7 not json").startswith(b"7 !JSONDecodeError")
        assert ask(b'8 [["zz", "p1@example.com"]]').startswith(b"8 !ValueError")
        proc.send_signal(signal.SIGINT)  # a terminal's Ctrl-C reaches the whole group
        proc.send_signal(signal.SIGTERM)  # so does a service manager's stop
        digest = hasher("p1@example.com").hex()
        seq, _, answer = ask(f'9 [["{digest}", "p1@example.com"]]'.encode()).partition(b" ")
        assert seq == b"9"
        [[item]] = json.loads(answer)
        assert item[0] == 0 and "p1@example.com" in item
        assert len(item) == 3 + len(CONTACT_COLUMNS)  # position, suppressed, ..., sources
    finally:
        proc.stdin.close()
    assert proc.wait(10) == 0
    assert proc.stderr is not None and proc.stderr.read() == b""


def test_the_process_run_by_hand_says_how_it_is_used():
    result = subprocess.run([sys.executable, "-m", "gateway.store.ledger_reader"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "started by gateway serve" in result.stderr
