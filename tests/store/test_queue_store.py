"""The durable queue on a real SQLite file: commit, claim, take-over, outcomes."""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from gateway.errors import NotFound, Refused, StoreError
from gateway.store.db import Database
from gateway.store.queue import IncomingMessage, QueueStore, Refusal, SentMark

BY_OPERATOR = {"operator": "alice", "recipient_hash": b"\x02" * 32}


def incoming(mid: str, *rcpts: str) -> IncomingMessage:
    return IncomingMessage(mid, time.time(), "crm", "127.0.0.1", "news@example.com",
                           b"Subject: x\r\n\r\nbody\r\n", rcpts)


async def test_database_file_is_owner_only_and_migrated(db: Database):
    assert stat.S_IMODE(os.stat(db.path).st_mode) == 0o600
    rows = await db.fetchall("SELECT version FROM schema_migrations")
    assert [r[0] for r in rows][:1] == [1]


async def test_group_commit_returns_each_messages_copies(db: Database):
    q = QueueStore(db, "me")
    result = await q.commit_messages([incoming("A", "a@x.example", "b@x.example"),
                                      incoming("B", "c@x.example")])
    assert [[c.recipient for c in copies] for copies in result] == [
        ["a@x.example", "b@x.example"], ["c@x.example"]]
    entries = await q.list()
    assert [e.state for e in entries] == ["queued"] * 3


async def test_a_group_commit_numbers_its_copies_as_stored_and_sent_marks_touch_only_theirs(
        db: Database):
    """Copy ids are given by the commit (not read back a row at a time): each is the row of
    its recipient, refusals and bounces included, across commits; a batch of sent marks
    (any size) marks exactly its copies."""
    q = QueueStore(db, "me")
    refused = IncomingMessage("C", time.time(), "crm", "127.0.0.1", "news@example.com",
                              b"Subject: x\r\n\r\nbody\r\n", ("f@x.example",),
                              refused=(Refusal("g@x.example", "550 5.7.1 R3 no"),),
                              bounces=(incoming("C-dsn", "news@example.com"),))
    first = await q.commit_messages([incoming("A", "a@x.example", "b@x.example"),
                                     incoming("B", "c@x.example")])
    second = await q.commit_messages([refused, incoming("D", "h@x.example")])
    copies = [c for batch in (first, second) for message in batch for c in message]
    ids = [c.delivery_id for c in copies]
    assert len(set(ids)) == len(ids) == 6  # a, b; c; f and the DSN; h
    for copy in copies:
        entry = await q.get(copy.delivery_id)
        assert (entry.message_id, entry.recipient, entry.state) == (
            copy.message_id, copy.recipient, "queued")
    failed = [e for e in await q.list() if e.state == "failed"]
    assert [(e.message_id, e.recipient) for e in failed] == [("C", "g@x.example")]
    sent = ids[:3] + ids[4:6]  # five: not a power of two
    await q.mark_sent([SentMark(i, f"en-2026.{i}") for i in sent])
    assert {e.id: e.state for e in await q.list(("queued", "sent"))} == {
        i: "sent" if i in sent else "queued" for i in ids}
    versions = dict(tuple(row) for row in await db.fetchall(
        "SELECT id, notice_version FROM deliveries"))
    assert {i: versions[i] for i in ids} == {
        i: f"en-2026.{i}" if i in sent else None for i in ids}  # each its own


async def test_claims_of_a_dead_process_are_taken_over_at_start(db: Database):
    dead = QueueStore(db, "dead")
    await dead.register_instance()
    await db.writer.execute("UPDATE instances SET pid = 999999999 WHERE id = 'dead'")
    await dead.commit_messages([incoming("A", "a@x.example")])
    alive = QueueStore(db, "alive")
    assert await alive.claim_due() == []  # still claimed by "dead"
    assert await alive.register_instance() == 1
    (copy,) = await alive.claim_due()
    assert copy.recipient == "a@x.example" and copy.content.endswith(b"body\r\n")
    assert await alive.claim_due() == []  # claimed now: not handed out twice


async def test_claims_of_a_zombie_or_a_silent_process_are_released_while_running(
        db: Database):
    """Only a pid probe at start: a zombie (kill(pid, 0) succeeds) counted as alive, and a
    process of another host, or one that died while this one ran, left its copies claimed
    until each claim expired (10 minutes)."""
    import subprocess

    zombie = subprocess.Popen(["true"])  # exits, never waited for: a zombie meanwhile
    try:
        deadline = time.monotonic() + 5
        while "Z" not in Path(f"/proc/{zombie.pid}/stat").read_text().rpartition(")")[2][:3]:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        gone = QueueStore(db, "zombie-worker")
        await gone.register_instance()
        await db.write_one("UPDATE instances SET pid = ? WHERE id = 'zombie-worker'",
                           (zombie.pid,))
        await gone.commit_messages([incoming("Z", "z@x.example")])
        other = QueueStore(db, "other-host")
        await other.register_instance()
        await db.write_one("UPDATE instances SET host = 'mx2.example boot=x pidns=1',"
                           " heartbeat = ? WHERE id = 'other-host'", (time.time() - 600,))
        await other.commit_messages([incoming("O", "o@x.example")])
        alive = QueueStore(db, "alive")
        await alive.register_instance()
        assert await alive.release_dead() == 0  # register_instance released both already
        assert sorted(c.recipient for c in await alive.claim_due()) == [
            "o@x.example", "z@x.example"]
    finally:
        zombie.wait()


async def test_after_a_long_lock_no_process_takes_another_for_dead(db: Database):
    """A store locked for minutes (a VACUUM) silenced every heartbeat: the first process
    back took the others' copies in flight for a dead process's, and deleted their rows."""
    a, b = QueueStore(db, "A"), QueueStore(db, "B")
    await a.register_instance()
    await db.write_one("UPDATE instances SET pid = 1 WHERE id = 'A'")  # another live process
    await b.register_instance()
    await b.commit_messages([incoming("B1", "b@x.example")])  # claimed by B, in flight
    await db.write_one("UPDATE instances SET heartbeat = heartbeat - 600")  # the lock
    a._heartbeat_written -= 600  # A could not write its own either
    assert await a.release_dead() == 0 and await a.claim_due() == []
    await db.write_one("DELETE FROM instances WHERE id = 'B'")  # as an older gateway did
    await b.heartbeat()  # B's row comes back with its next heartbeat
    await db.write_one("UPDATE instances SET pid = 1")  # (both are this test's pid)
    rows = await db.fetchall("SELECT id FROM instances ORDER BY id")
    assert [r[0] for r in rows] == ["A", "B"]
    await a.heartbeat()
    await db.write_one("UPDATE instances SET heartbeat = heartbeat - 600 WHERE id = 'B'")
    assert await a.release_dead() == 1  # B alone silent, A writing: B is gone


async def test_another_container_with_our_host_name_and_pid_keeps_its_claims(db: Database):
    """Two containers with one fixed host name, both pid 1, on one store: each took the
    other for its own earlier incarnation and sent its copies again."""
    from gateway.store.queue import process_space

    twin = QueueStore(db, "twin")
    await twin.register_instance()
    host = process_space().split(" ")[0]
    await db.write_one("UPDATE instances SET host = ?, pid = ? WHERE id = 'twin'",
                       (f"{host} boot=other pidns=4026531836", os.getpid()))
    await twin.commit_messages([incoming("T", "t@x.example")])
    me = QueueStore(db, "me")
    assert await me.register_instance() == 0
    assert await me.claim_due() == []  # still the twin's: its heartbeat is fresh


async def test_outcomes_and_operator_commands(db: Database):
    q = QueueStore(db, "me")
    (copies,) = await q.commit_messages([incoming("A", "a@x.example", "b@x.example")])
    a, b = copies
    await q.defer(a.delivery_id, "421 try later", time.time() + 3600)
    await q.fail(b.delivery_id, "550 5.1.1 unknown")
    assert {e.recipient: (e.state, e.attempts) for e in await q.list()} == {
        "a@x.example": ("deferred", 1), "b@x.example": ("failed", 1)}
    assert await q.claim_due() == []  # deferred into the future
    assert await q.flush() == 1
    (due,) = await q.claim_due()
    assert due.delivery_id == a.delivery_id and due.attempts == 1
    await q.mark_sent([SentMark(a.delivery_id)])
    assert [e.recipient for e in await q.list()] == ["b@x.example"]
    await q.retry(b.delivery_id)
    assert (await q.get(b.delivery_id)).state == "queued"
    await q.delete(b.delivery_id, **BY_OPERATOR)
    with pytest.raises(NotFound):
        await q.get(b.delivery_id)
    assert await q.drop_finished_content() == 1  # a was sent, b deleted


async def test_retry_never_takes_a_copy_from_the_process_delivering_it(db: Database):
    """`queue retry` (its own instance) of a copy process A holds: refused, as `delete` is;
    it cleared the claim, and process B then claimed and sent the copy too."""
    a, b, cli = QueueStore(db, "A"), QueueStore(db, "B"), QueueStore(db, "cli")
    (copies,) = await a.commit_messages([incoming("R", "r@x.example")])  # claimed by A
    with pytest.raises(Refused, match="being delivered by A"):
        await cli.retry(copies[0].delivery_id)
    assert await b.claim_due() == []
    await a.fail(copies[0].delivery_id, "451 4.4.1 gave up after 120.0 h in the queue")
    entered = (await cli.get(copies[0].delivery_id)).created_at
    time.sleep(0.01)
    await cli.retry(copies[0].delivery_id)  # failed: nobody holds it
    retried = await cli.get(copies[0].delivery_id)
    assert retried.state == "queued"
    assert retried.created_at > entered  # delivery.max_age_hours counts from the retry
    assert [c.delivery_id for c in await b.claim_due()] == [copies[0].delivery_id]


async def test_content_is_kept_until_every_copy_is_finished(db: Database):
    q = QueueStore(db, "me")
    (copies,) = await q.commit_messages([incoming("A", "a@x.example", "b@x.example")])
    await q.mark_sent([SentMark(copies[0].delivery_id)])
    assert await q.drop_finished_content() == 0  # b is still queued
    await q.fail(copies[1].delivery_id, "550 no")
    assert await q.drop_finished_content() == 0  # failed copies stay retryable for a while
    assert await q.drop_finished_content(keep_failed_seconds=-1) == 1
    with pytest.raises(NotFound, match="no longer kept"):
        await q.retry(copies[1].delivery_id)


async def test_finished_content_is_found_by_its_index_and_freed_in_short_batches(
        db: Database):
    """The housekeeping's free read the whole `messages` table (kept for years) in one
    UPDATE under the write lock, every minute: 0.8-1.9 s at 8 million messages, every
    end-of-DATA commit behind it. Now a read over the messages still holding content, then
    FREE_BATCH per transaction."""
    from gateway.store import queue as queue_module
    q = QueueStore(db, "me")
    committed = await q.commit_messages(
        [incoming(f"F{i}", f"r{i}@x.example") for i in range(450)] + [
            incoming("W", "waiting@x.example")])
    await q.mark_sent([SentMark(cs[0].delivery_id) for cs in committed[:450]])
    transactions = []
    begin = db.transaction

    def counted():
        transactions.append(1)
        return begin()
    db.transaction = counted  # type: ignore[method-assign]
    try:
        assert await q.drop_finished_content() == 450
    finally:
        del db.transaction
    assert len(transactions) == -(-450 // queue_module.FREE_BATCH) == 3
    assert await q.drop_finished_content() == 0
    held = await db.fetchall("SELECT id FROM messages WHERE content IS NOT NULL")
    assert [r[0] for r in held] == ["W"]  # its copy still waits
    plan = [r[3] for r in await db.fetchall(
        "EXPLAIN QUERY PLAN " + queue_module._FINISHED_SQL, (0,))]
    assert plan[0] == "SCAN m USING INDEX messages_holding", plan  # not the whole table


async def test_the_wal_file_is_cut_back_after_a_checkpoint(db: Database):
    """Without a journal_size_limit the WAL file keeps the size of the largest transaction
    (410 MB after a busy hour's content was freed) for as long as the gateway runs."""
    from gateway.store.db import WAL_KEPT_BYTES
    cur = await db.writer.execute("PRAGMA journal_size_limit")
    assert (await cur.fetchone())[0] == WAL_KEPT_BYTES
    assert await db.write(lambda conn: conn.execute("PRAGMA journal_size_limit").fetchone()[0]
                          ) == WAL_KEPT_BYTES  # the group writer's own connection


async def test_a_write_is_one_transaction_all_or_nothing(db: Database):
    def insert(conn) -> int:
        conn.execute("INSERT INTO maintenance (task, ran_at) VALUES ('a', 1)")
        return 7

    def insert_then_fail(conn) -> None:
        conn.execute("INSERT INTO maintenance (task, ran_at) VALUES ('b', 1)")
        raise ValueError("not this one")

    assert await db.write(insert) == 7
    with pytest.raises(ValueError):
        await db.write(insert_then_fail)
    with pytest.raises(StoreError, match="store write failed"):
        await db.write_one("INSERT INTO no_such_table VALUES (1)")
    with pytest.raises(TypeError, match="cursor"):  # finalised in the wrong thread otherwise
        await db.write(lambda conn: conn.execute("INSERT INTO maintenance VALUES ('c', 1)"))
    assert await db.write_one("UPDATE maintenance SET ran_at = ?", (2,)) == 1
    rows = await db.fetchall("SELECT task FROM maintenance ORDER BY task")
    assert [row[0] for row in rows] == ["a"]  # b rolled back with its error
    await db.close()
    with pytest.raises(StoreError, match="not open"):
        await db.write(insert)


async def test_writes_submitted_meanwhile_share_one_transaction_and_fail_alone(db: Database):
    import asyncio
    import threading
    from collections import Counter

    runs: Counter[str] = Counter()
    on_thread, release = threading.Event(), threading.Event()

    def first(conn) -> str:
        on_thread.set()
        release.wait(5)  # holds the writer thread while the others are submitted
        conn.execute("INSERT INTO maintenance (task, ran_at) VALUES ('first', 1)")
        return "first"

    def insert(task: str):
        def write(conn) -> str:
            runs[task] += 1  # only to see the reruns: a real write changes only the store
            conn.execute("INSERT INTO maintenance (task, ran_at) VALUES (?, 1)", (task,))
            return task
        return write

    def failing(conn) -> None:
        runs["bad"] += 1
        conn.execute("INSERT INTO maintenance (task, ran_at) VALUES ('bad', 1)")
        raise ValueError("not this one")

    holder = asyncio.create_task(db.write(first))
    await asyncio.to_thread(on_thread.wait, 5)
    waiting = [asyncio.create_task(db.write(fn))
               for fn in (insert("a"), failing, insert("b"), insert("c"))]
    await asyncio.sleep(0.05)
    release.set()
    assert await holder == "first"
    a, bad, b, c = await asyncio.gather(*waiting, return_exceptions=True)
    assert (a, b, c) == ("a", "b", "c") and isinstance(bad, ValueError)
    # one transaction for the four: "a" ran, then the failure rolled it back, and the three
    # others ran again, together, without it
    assert runs == {"a": 2, "bad": 1, "b": 1, "c": 1}
    rows = await db.fetchall("SELECT task FROM maintenance ORDER BY task")
    assert [row[0] for row in rows] == ["a", "b", "c", "first"]


async def test_a_write_in_flight_at_close_is_committed(tmp_path):
    import asyncio

    db = await Database(tmp_path / "close.db").open()
    writes = [asyncio.create_task(db.write_one(
        "INSERT INTO maintenance (task, ran_at) VALUES (?, 1)", (f"t{i}",))) for i in range(5)]
    await asyncio.sleep(0)  # submitted, not yet committed
    await db.close()
    assert [w.result() for w in writes] == [1] * 5
    async with Database(tmp_path / "close.db") as again:
        assert len(await again.fetchall("SELECT task FROM maintenance")) == 5


async def test_a_group_commit_chains_every_messages_audit_rows_in_order(db: Database):
    import dataclasses

    from gateway.store.audit import AuditLog, AuditRecord

    def decisions(n: int, rule: str) -> tuple[AuditRecord, ...]:
        return tuple(AuditRecord(time.time(), "crm", "127.0.0.1", bytes([n, i]) * 16, rule,
                                 "allow") for i in range(n))

    log = AuditLog(db)
    await log.append([decisions(2, "R6"), decisions(1, "R5")])  # transactions without mail
    q = QueueStore(db, "me")
    await q.commit_messages([dataclasses.replace(incoming(mid, "a@x.example"),
                                                 audit=decisions(n, "R7"))
                             for mid, n in (("A", 3), ("B", 1), ("C", 2))])
    await log.append([decisions(1, "R8")])
    rows = await db.fetchall("SELECT message_id, rule FROM audit ORDER BY id")
    assert [tuple(row) for row in rows] == (
        [(None, "R6")] * 2 + [(None, "R5")] + [("A", "R7")] * 3 + [("B", "R7")]
        + [("C", "R7")] * 2 + [(None, "R8")])
    assert (await log.verify())[:2] == (10, None)  # one chain across all of them


async def test_a_large_audit_batch_is_written_paced_and_a_message_goes_in_between(db: Database):
    import asyncio

    from gateway.store.audit import AuditLog, AuditRecord

    log = AuditLog(db, write_rows=100, pace=0.05)
    sessions = [tuple(AuditRecord(time.time(), "crm", "127.0.0.1", bytes([s, i]) * 16, "R6",
                                  "allow") for i in range(50)) for s in range(7)]
    appending = asyncio.create_task(log.append(sessions))  # 350 rows: 4 transactions
    await asyncio.sleep(0.01)
    copies = await QueueStore(db, "me").commit_messages([incoming("M", "a@x.example")])
    assert len(copies[0]) == 1 and not appending.done()  # the message did not wait for it all
    assert await appending == [None] * 7
    rows = await db.fetchall("SELECT recipient_hash FROM audit ORDER BY id")
    assert [bytes(row[0]) for row in rows] == [r.recipient_hash for s in sessions for r in s]
    assert (await log.verify())[:2] == (350, None)


async def test_a_paced_audit_batch_that_fails_half_way_says_what_was_written(db: Database):
    from gateway.store.audit import AuditLog, AuditRecord

    def refuse_r9(conn) -> None:  # on the writer's connection, the one that inserts
        conn.execute("CREATE TEMP TRIGGER refuse BEFORE INSERT ON audit WHEN NEW.rule = 'R9'"
                     " BEGIN SELECT RAISE(ABORT, 'disk full, say'); END")

    await db.write(refuse_r9)
    records = [AuditRecord(time.time(), "crm", "127.0.0.1", bytes([i]) * 32,
                           "R9" if i == 150 else "R6", "allow") for i in range(250)]
    other = [AuditRecord(time.time(), "crm", "127.0.0.1", b"\xff" * 32, "R6", "allow")]
    log = AuditLog(db, write_rows=100, pace=0)
    first, second = await log.append([records, other])
    assert (await db.fetchone("SELECT count(*) FROM audit"))[0] == 100
    # per batch, the rows not written: the first 100 are committed, so a retry of the whole
    # batch wrote them twice (and the chain verified the copies)
    assert first.rows == [tuple(r) for r in records[100:]] and "disk full" in str(first.error)
    assert second.rows == [tuple(other[0])]
    await db.write(lambda conn: conn.execute("DROP TRIGGER temp.refuse") and None)
    assert await log.append([first.rows, second.rows]) == [None, None]
    hashes = [bytes(r[0]) for r in await db.fetchall("SELECT recipient_hash FROM audit")]
    assert sorted(hashes) == sorted(r.recipient_hash for r in [*records, *other])
    assert (await log.verify())[:2] == (251, None)


@pytest.mark.parametrize("count", [0, 1, 3, 128, 129, 300])
def test_insert_rows_writes_every_row_in_order(tmp_path, count):
    import sqlite3

    from gateway.store.db import insert_rows
    conn = sqlite3.connect(tmp_path / "t.db", isolation_level=None)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, a INTEGER, b BLOB)")
    rows = [(i, bytes([i % 256]) * 3) for i in range(count)]
    insert_rows(conn, "INSERT INTO t (a, b)", rows)
    assert conn.execute("SELECT a, b FROM t ORDER BY id").fetchall() == rows
    # wide rows stay under the 999 variables of SQLite before 3.32
    conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
    conn.execute("CREATE TABLE w (c1, c2, c3, c4, c5, c6, c7, c8)")
    wide = [tuple(range(i, i + 8)) for i in range(count)]
    insert_rows(conn, "INSERT INTO w (c1, c2, c3, c4, c5, c6, c7, c8)", wide)
    assert conn.execute("SELECT * FROM w ORDER BY rowid").fetchall() == wide


async def test_a_deleted_copys_id_is_never_given_again(db: Database):
    """Unsubscribe tokens name copies by id: once the highest copy is deleted (an erasure,
    `queue delete`), the next copy still gets a new id, whether the group commit numbers it
    or SQLite does (a refusal's row)."""
    q = QueueStore(db, "me")
    [[a, b]] = await q.commit_messages([incoming("A", "a@x.example", "b@x.example")])
    await q.delete(b.delivery_id, **BY_OPERATOR)
    [[c]] = await q.commit_messages([incoming("B", "c@x.example")])
    assert c.delivery_id > b.delivery_id
    await q.delete(c.delivery_id, **BY_OPERATOR)
    refused = IncomingMessage("C", time.time(), "crm", "127.0.0.1", "news@example.com",
                              b"Subject: x\r\n\r\nbody\r\n", (),
                              refused=(Refusal("g@x.example", "550 5.7.1 R3 no"),))
    await q.commit_messages([refused])
    [failed] = [e for e in await q.list() if e.state == "failed"]
    assert failed.id > c.delivery_id


@contextmanager
def store_before(version: int, path: Path) -> Iterator[sqlite3.Connection]:
    """A store at `path` as the migrations before `version` left it (foreign keys on, as the
    gateway runs), open to fill; committed and closed on the way out."""
    from gateway.store.db import SQL_FUNCTIONS, _migrations

    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA foreign_keys=ON")
        for name, function in SQL_FUNCTIONS:  # as every connection of the gateway has them
            conn.create_function(name, 1, function, deterministic=True)
        conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY,"
                     " name TEXT NOT NULL, applied_at REAL NOT NULL)")
        for number, name, sql in _migrations():
            if number < version:
                conn.executescript(sql)
                conn.execute("INSERT INTO schema_migrations VALUES (?, ?, 0)", (number, name))
        yield conn
        conn.commit()
    finally:
        conn.close()


def test_the_delivery_ids_migration_keeps_every_copy(tmp_path):
    """011 rebuilds `deliveries` with AUTOINCREMENT: a store made before it keeps its rows
    (every column), its indexes, and numbers on from its highest id."""
    import asyncio

    path = tmp_path / "old.db"
    with store_before(11, path) as conn:
        conn.execute("INSERT INTO messages (id, received_at, account, client_ip, mail_from,"
                     " size, content) VALUES ('M', 1, 'crm', '127.0.0.1', 'n@x.example', 1,"
                     " x'00')")
        conn.executemany(
            "INSERT INTO deliveries (id, message_id, recipient, state, attempts,"
            " next_attempt_at, last_error, claimed_by, claimed_until, created_at, updated_at,"
            " contact_id, rule) VALUES (?, 'M', ?, ?, 2, 3.5, ?, NULL, NULL, 1, 2, ?, ?)",
            [(7, "a@x.example", "sent", None, 41, "R6"),
             (9, "b@x.example", "deferred", "451 later", None, None)])
        before = conn.execute("SELECT * FROM deliveries ORDER BY id").fetchall()

    async def upgrade() -> tuple[list[tuple[object, ...]], list[str], int]:
        async with Database(path) as database:
            rows = [tuple(r) for r in await database.fetchall(  # the columns 011 knew
                "SELECT id, message_id, recipient, state, attempts, next_attempt_at,"
                " last_error, claimed_by, claimed_until, created_at, updated_at, contact_id,"
                " rule FROM deliveries ORDER BY id")]
            indexes = sorted(r[0] for r in await database.fetchall(
                "SELECT name FROM sqlite_master WHERE type = 'index'"
                " AND tbl_name = 'deliveries'"))
            q = QueueStore(database, "me")
            [[copy]] = await q.commit_messages([incoming("N", "n@x.example")])
            return rows, indexes, copy.delivery_id

    rows, indexes, new_id = asyncio.run(upgrade())
    assert rows == before
    assert indexes == ["deliveries_due", "deliveries_message"]
    assert new_id == 10


async def test_a_copy_another_process_is_delivering_is_not_deleted(db: Database):
    """`queue delete` while the gateway holds the copy: deleted under it, the copy still went
    out, and its sent mark then matched no row (no record it was ever sent)."""
    gateway = QueueStore(db, "gateway-1")
    [[held]] = await gateway.commit_messages([incoming("A", "a@x.example")])
    cli = QueueStore(db, "cli")
    with pytest.raises(Refused, match="being delivered by gateway-1"):
        await cli.delete(held.delivery_id, **BY_OPERATOR)
    assert (await cli.get(held.delivery_id)).state == "queued"
    await gateway.defer(held.delivery_id, "421 later", time.time() + 3600)  # claim let go
    await cli.delete(held.delivery_id, **BY_OPERATOR)
    with pytest.raises(NotFound):
        await cli.get(held.delivery_id)


def test_processes_opening_a_new_store_together_all_open_it(tmp_path):
    """`serve` and a CLI command started together on a new (or just upgraded) store: each
    read the migrations applied, then ran the missing ones; the slower failed on 'table
    accounts already exists' (serve itself exited once)."""
    import subprocess
    import sys

    path = tmp_path / "new.db"
    script = ("import asyncio, sys, time; from gateway.store.db import Database\n"
              "async def main():\n"
              "    time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # all at once\n"
              "    async with Database(sys.argv[1]) as db:\n"
              "        await db.fetchall('SELECT 1 FROM accounts')\n"
              "asyncio.run(main())\n")
    for attempt in range(2):
        target = path.with_name(f"new{attempt}.db")
        start = str(time.time() + 1.0)
        procs = [subprocess.Popen([sys.executable, "-c", script, str(target), start],
                                  stderr=subprocess.PIPE) for _ in range(4)]
        errors = [p.communicate(timeout=60)[1].decode() for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
        with sqlite3.connect(target) as conn:
            versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations")]
        assert versions == sorted(set(versions)) and len(versions) >= 18


async def test_a_copy_sent_while_the_cli_looked_is_neither_retried_nor_deleted(
        db: Database, monkeypatch):
    """`queue retry` read the copy deferred, a gateway process then took it and sent it, and
    the retry put it back to `queued`: delivered a second time. Same window for delete."""
    gateway = QueueStore(db, "gateway-1")
    [[copy]] = await gateway.commit_messages([incoming("A", "a@x.example")])
    cli = QueueStore(db, "cli")
    stale = await cli.get(copy.delivery_id)  # as the CLI saw it, before the send
    await gateway.mark_sent([SentMark(copy.delivery_id)])

    async def seen_before(delivery_id: int):
        return stale
    monkeypatch.setattr(cli, "get", seen_before)
    with pytest.raises(NotFound, match="already sent"):
        await cli.retry(copy.delivery_id)
    with pytest.raises(Refused, match="was sent"):
        await cli.delete(copy.delivery_id, **BY_OPERATOR)
    [row] = await db.fetchall("SELECT state FROM deliveries")
    assert row[0] == "sent"


async def test_a_copy_erased_while_it_was_tried_gets_no_dsn(db: Database):
    """`subject erase` deletes the person's copies, one a worker may hold: its failure then
    queued a DSN naming the erased address."""
    gateway = QueueStore(db, "gateway-1")
    [[copy]] = await gateway.commit_messages([incoming("A", "gone@x.example")])
    await db.write_one("DELETE FROM deliveries WHERE id = ?", (copy.delivery_id,))  # erased
    dsn = IncomingMessage("D", time.time(), None, "127.0.0.1", "",
                          b"Subject: bounce for gone@x.example\r\n\r\n", ("news@x.example",))
    assert await gateway.fail(copy.delivery_id, "550 5.7.1 R1 objected", dsn) == []
    assert await db.fetchall("SELECT id FROM messages WHERE id = 'D'") == []


def test_the_contact_ids_migration_keeps_every_contact_and_what_refers_to_it(tmp_path):
    """016 rebuilds `contacts` with AUTOINCREMENT (foreign keys off for the rebuild): the rows
    of sources and contact_events survive the old table's drop (ON DELETE CASCADE would have
    taken them), and a contact id deleted after it is never given again."""
    import asyncio

    path = tmp_path / "old.db"
    with store_before(16, path) as conn:
        conn.executemany(
            "INSERT INTO contacts (id, address, address_hash, language, consent, collected_at,"
            " created_at, updated_at) VALUES (?, ?, x'01', ?, 'granted', 1, 1, 2)",
            [(3, "ann@x.example", "fr"), (8, "jane@x.example", "de")])
        conn.executemany("INSERT INTO sources (contact_id, type, name, recorded_at)"
                         " VALUES (?, 'direct', 'fair', 1)", [(3,), (8,)])
        conn.executemany("INSERT INTO contact_events (contact_id, kind, occurred_at, channel,"
                         " recorded_at) VALUES (?, 'consent', 1, 'import', 1)", [(3,), (8,)])
        before = {table: conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()  # noqa: S608
                  for table in ("contacts", "sources", "contact_events")}

    async def upgrade() -> tuple[dict[str, list[tuple[object, ...]]], int]:
        async with Database(path) as database:
            after = {table: [tuple(r) for r in await database.fetchall(
                f"SELECT * FROM {table} ORDER BY 1")]  # noqa: S608
                for table in ("contacts", "sources", "contact_events")}
            await database.write_one("DELETE FROM contacts WHERE id = 8")  # an erasure
            await database.write_one(
                "INSERT INTO contacts (address, address_hash, collected_at, created_at,"
                " updated_at) VALUES ('bob@x.example', x'02', 1, 1, 1)")
            [(bob,)] = await database.fetchall(
                "SELECT id FROM contacts WHERE address = 'bob@x.example'")
            return after, bob

    after, bob = asyncio.run(upgrade())
    assert after == before
    assert bob == 9  # not 8 again: jane's old links never name bob


def test_the_outbox_keeps_no_notify_url_secret_after_the_migration(tmp_path):
    """018: rows queued before it kept the notify_url as written (its password too)."""
    import asyncio

    path = tmp_path / "old.db"
    with store_before(18, path) as conn:
        conn.executemany(
            "INSERT INTO notifications (account, url, body, next_attempt_at, created_at,"
            " updated_at) VALUES ('crm', ?, '{}', 1, 1, 1)",
            [("https://tool:PASS-1@crm.example/h",), ("https://crm.example/h?token=TOK-2",),
             ("https://crm.example/h",)])

    async def upgrade() -> list[str]:
        async with Database(path) as database:
            return [r[0] for r in await database.fetchall(
                "SELECT url FROM notifications ORDER BY id")]

    assert asyncio.run(upgrade()) == ["https://tool:***@crm.example/h",
                                      "https://crm.example/h?token=***",
                                      "https://crm.example/h"]


def test_a_migration_that_would_break_references_changes_nothing(tmp_path, monkeypatch):
    """Migrations run with foreign keys off (a table rebuild keeps its referencing rows), so
    the references are checked before the commit: a migration leaving a source without its
    contact is rolled back and the store is not opened."""
    import asyncio

    from gateway.store import db as store_db

    path = tmp_path / "s.db"
    with store_before(99, path) as conn:
        conn.execute("INSERT INTO contacts (id, address, address_hash, collected_at,"
                     " created_at, updated_at) VALUES (1, 'a@x.example', x'01', 1, 1, 1)")
        conn.execute("INSERT INTO sources (contact_id, type, name, recorded_at)"
                     " VALUES (1, 'direct', 'fair', 1)")
    shipped = store_db._migrations()
    monkeypatch.setattr(store_db, "_migrations", lambda: [
        *shipped, (99, "099_bad.sql", "DELETE FROM contacts;")])

    async def open_it() -> None:
        async with Database(path):
            pass

    with pytest.raises(StoreError, match="099_bad.sql would leave 1 more rows"):
        asyncio.run(open_it())
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM contacts").fetchone()[0] == 1
        assert conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0] < 99


async def test_a_transaction_cancelled_while_it_begins_leaves_the_store_usable(db: Database):
    """A stop cancels the queue scanner while its claim's BEGIN waits for another process's
    write lock: the shared writer connection must not stay in a transaction (every later
    transaction failed 'cannot start a transaction within a transaction', and the other
    processes waited on the lock it held)."""
    import asyncio

    locker = sqlite3.connect(db.path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")  # another process writing
    q = QueueStore(db, "me")
    try:
        claiming = asyncio.create_task(q.claim_due())
        await asyncio.sleep(0.2)  # BEGIN waits in SQLite's busy handler
        claiming.cancel()
        await asyncio.sleep(0.05)
    finally:
        locker.execute("ROLLBACK")
    with pytest.raises(asyncio.CancelledError):
        await claiming
    await q.register_instance()
    await q.unregister_instance()  # failed with the old code
    assert not db.writer.in_transaction
    other = sqlite3.connect(db.path, isolation_level=None, timeout=0.5)
    other.execute("BEGIN IMMEDIATE")  # the write lock is free
    other.execute("ROLLBACK")
    other.close()
    locker.close()


async def test_rejecting_a_held_copy_keeps_the_content_a_failed_sibling_may_be_retried_with(
        db: Database):
    """The quarantine's reject freed the message while another recipient's copy had just
    failed: `queue retry`, promised for 7 days, said 'content no longer kept'."""
    import dataclasses

    from gateway.model import Decision, Verdict
    from gateway.store.quarantine import QuarantineStore
    from gateway.store.queue import Held

    held = Held("held@x.example", Decision(Verdict.QUARANTINE, "R9", "unclear", "b"))
    q = QueueStore(db, "me")
    (copies,) = await q.commit_messages([dataclasses.replace(
        incoming("M", "a@x.example"), held=(held,))])
    await q.fail(copies[0].delivery_id, "550 5.1.1 mailbox full")
    quarantine = QuarantineStore(db)
    [entry] = await quarantine.list()
    await quarantine.reject(entry, "bob", "no", b"\x01" * 32)
    await q.release([copies[0].delivery_id])
    await q.retry(copies[0].delivery_id)  # NotFound "content no longer kept" before
    assert (await q.get(copies[0].delivery_id)).state == "queued"


async def test_a_sent_copy_is_not_deleted_and_an_upstream_5_7_1_is_no_policy_refusal(
        db: Database):
    """`queue delete` of a sent copy erased what an access export lists; the report counted
    an upstream's "550 5.7.1 ... spam" as a refusal of the compliance policy."""
    from gateway.store.report import ReportStore

    q = QueueStore(db, "me")
    (copies,) = await q.commit_messages([incoming("A", "a@x.example", "b@x.example",
                                                  "c@x.example")])
    a, b, c = (copy.delivery_id for copy in copies)
    await q.mark_sent([SentMark(a)])
    with pytest.raises(Refused, match="was sent"):
        await q.delete(a, **BY_OPERATOR)
    await q.fail(b, "550 5.7.1 Message rejected as spam by upstream policy")
    await q.fail(c, "550 5.7.1 R1 recipient objected to prospecting (suppression list)")
    counts = {(d.account, d.state): d.count for d in await ReportStore(db).deliveries(None)}
    assert counts == {("crm", "sent"): 1, ("crm", "failed"): 1, ("crm", "refused"): 1}


async def test_emptying_the_wal_under_a_reader_does_not_hold_the_writes(db: Database):
    """Each try waited 5 s for a reader with the write lock held: a retention run beside
    an `audit verify` stalled every commit for ~50 s, then gave up without a word."""
    import asyncio

    await db.write_one("CREATE TABLE t (x)")
    await db.write_one("INSERT INTO t VALUES (1)")
    reader = sqlite3.connect(db.path)
    reader.execute("BEGIN")
    reader.execute("SELECT * FROM t").fetchall()  # a snapshot held
    try:
        started = time.monotonic()
        emptying = asyncio.create_task(db.empty_wal(tries=4))
        await asyncio.sleep(0.2)
        await asyncio.wait_for(db.write_one("INSERT INTO t VALUES (2)"), 2.0)  # not stalled
        assert await emptying is False
        assert time.monotonic() - started < 6.0
    finally:
        reader.close()
    assert await db.empty_wal() is True  # the reader gone


async def test_the_listing_shows_what_is_still_to_send_before_old_failures(db: Database):
    """Past its limit, the listing showed the oldest failures (kept until R4 purges them)
    and hid the live backlog; a flush counted copies a process was trying already."""
    q = QueueStore(db, "me")
    (failures,) = await q.commit_messages([incoming("A", *(f"f{i}@x.example"
                                                           for i in range(5)))])
    for copy in failures:
        await q.fail(copy.delivery_id, "550 5.1.1 unknown")
    (late,) = await q.commit_messages([incoming("B", "late@x.example", "busy@x.example")])
    await q.defer(late[0].delivery_id, "451 greylisted", time.time() + 3600)
    await q.defer(late[1].delivery_id, "451 greylisted", time.time() - 1)
    [busy] = await q.claim_due()  # a process is trying it right now
    assert [e.recipient for e in await q.list(limit=3)] == [
        "late@x.example", "busy@x.example", "f4@x.example"]
    assert await q.flush() == 1 and busy.recipient == "busy@x.example"


async def test_the_cli_frees_a_crashed_processs_claims_before_retry_or_delete(db: Database):
    """Killed to stop a bad send, the gateway left its copies claimed for 10 minutes: retry
    and delete said "being delivered right now", and the restart sent them. The CLI frees
    the claims of this machine's dead processes first, and no others (it writes no
    heartbeat: a silent process elsewhere is not its to judge)."""
    from gateway.store.queue import process_space

    dead, elsewhere = QueueStore(db, "dead"), QueueStore(db, "elsewhere")
    async with db.transaction() as conn:
        await conn.executemany(
            "INSERT INTO instances (id, host, pid, started_at, heartbeat) VALUES (?, ?, ?, 0, ?)",
            [("dead", process_space(), 999_999_999, time.time()),  # this machine, pid gone
             ("elsewhere", "other-host", os.getpid(), 0.0)])  # silent, on another host
    [[mine]] = await dead.commit_messages([incoming("A", "a@x.example")])
    [[theirs]] = await elsewhere.commit_messages([incoming("B", "b@x.example")])
    cli = QueueStore(db, "cli")
    assert await cli.release_dead(by_pid_only=True) == 1
    await cli.delete(mine.delivery_id, **BY_OPERATOR)
    with pytest.raises(Refused):
        await cli.delete(theirs.delivery_id, **BY_OPERATOR)


def test_the_audit_sent_migration_keeps_the_chain_and_takes_sent_rows(tmp_path):
    """022 rebuilds `audit` to take 'sent' rows with their notice version: the rows of an
    older store keep their ids and chain (verify and kept anchors still hold), the table
    stays append-only, and a sent mark appends its chained row."""
    import asyncio

    from gateway.store.audit import GENESIS, AuditLog, AuditRecord, link

    path = tmp_path / "old.db"
    with store_before(22, path) as conn:
        with pytest.raises(sqlite3.IntegrityError):  # the old CHECK: no 'sent' decision
            conn.execute("INSERT INTO audit (at, account, client_ip, recipient_hash, rule,"
                         " decision) VALUES (1, 'crm', 'delivery', x'00', 'R6', 'sent')")
        previous = GENESIS
        for i, decision in ((3, "allow"), (5, "reject"), (8, "quarantine")):
            row = (float(i), "crm", "127.0.0.1", bytes([i]) * 32, "R6", decision, "M")
            previous = link(previous, row)
            conn.execute("INSERT INTO audit (id, at, account, client_ip, recipient_hash, rule,"
                         " decision, message_id, chain) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (i, *row, previous))
        before = conn.execute("SELECT * FROM audit ORDER BY id").fetchall()

    async def upgrade() -> tuple[list[tuple[object, ...]], object, object, list[object]]:
        async with Database(path) as database:
            kept = [tuple(r)[:9] for r in await database.fetchall(
                "SELECT id, at, account, client_ip, recipient_hash, rule, decision,"
                " message_id, chain FROM audit ORDER BY id")]
            log = AuditLog(database)
            old = await log.verify(anchor=8)  # (026 re-chained the log since)
            q = QueueStore(database, "me")
            [[copy]] = await q.commit_messages([incoming("N", "n@x.example")])
            await q.mark_sent([SentMark(copy.delivery_id, "fr-2026.11b", AuditRecord(
                9.0, "crm", "delivery", b"\x09" * 32, "R6", "sent", "N", "fr-2026.11b").row())])
            new = await log.verify()
            with pytest.raises(StoreError, match="append-only"):
                await database.write_one("UPDATE audit SET notice_version = 'x'", ())
            sent = [tuple(r) for r in await database.fetchall(
                "SELECT decision, notice_version FROM audit WHERE decision = 'sent'")]
            return kept, old, new, sent

    kept, old, new, sent = asyncio.run(upgrade())
    # ids and contents kept (the chain values too until 026 re-chained them: below)
    assert [r[:8] for r in kept] == [tuple(r)[:8] for r in before]
    assert old.first_broken is None and old.rows == 3 and old.anchor_predates
    assert new.first_broken is None and new.rows == 4
    assert sent == [("sent", "fr-2026.11b")]


def test_the_unlinkable_audit_migration_rechains_old_rows_so_an_erasure_unlinks_them(
        tmp_path):
    """026 adds the salted commitment the chain covers, and re-chains the rows already there
    after checking their old chain: a row unlinked later can no longer be tied to its hash
    by its chain value (diff review: SHA-256(previous || fields) recomputed with each
    suppression hash found it), and every row verifies, none taken as recorded."""
    import asyncio

    from gateway.store.audit import GENESIS, AuditLog, AuditRecord, link, unlink

    jane, bob = b"\x0a" * 32, b"\x0b" * 32

    def old_store(path: Path, edit: bool = False) -> bytes:
        with store_before(26, path) as conn:
            previous = GENESIS
            conn.execute("INSERT INTO audit (id, at, account, client_ip, recipient_hash, rule,"
                         " decision) VALUES (1, 0.5, 'crm', 'x', ?, 'R6', 'allow')", (bob,))
            for i, digest in ((2, jane), (3, bob), (4, jane)):  # row 1: from before 006
                row = (float(i), "crm", "127.0.0.1", digest, "R6", "allow", f"M{i}")
                previous = link(previous, row)
                conn.execute("INSERT INTO audit (id, at, account, client_ip, recipient_hash,"
                             " rule, decision, message_id, chain)"
                             " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (i, *row, previous))
            if edit:  # an edit made before the upgrade, the triggers dropped
                conn.execute("DROP TRIGGER audit_no_update")
                conn.execute("UPDATE audit SET decision = 'reject' WHERE id = 3")
            return previous

    async def upgrade(path: Path) -> tuple[object, ...]:
        async with Database(path) as database:
            log = AuditLog(database)
            first = await log.verify(anchor=4)
            await log.append([[AuditRecord(5.0, "crm", "127.0.0.1", jane, "R1", "reject")]])
            async with database.transaction() as conn:
                unlinked = await unlink(conn, jane)
            after = await log.verify()
            rows = [tuple(r) for r in await database.fetchall(
                "SELECT id, at, account, client_ip, recipient_hash, rule, decision, message_id,"
                " chain, recipient_salt FROM audit ORDER BY id")]
            upgrade_row = tuple(await database.fetchone(
                "SELECT rows, last_id, unchained, first_broken FROM audit_upgrade") or ())
            return first, unlinked, after, rows, upgrade_row

    path = tmp_path / "old.db"
    old_store(path)
    first, unlinked, after, rows, upgrade_row = asyncio.run(upgrade(path))
    assert upgrade_row == (4, 4, 1, None)  # all re-chained, the pre-006 row too
    assert (first.rows, first.first_broken, first.at_anchor, first.anchor_predates) == (
        4, None, None, True)  # the old anchor cannot hold: said, not taken as an edit
    assert unlinked == 3 and (after.rows, after.first_broken, after.unlinked) == (5, None, 3)
    assert [r[0] for r in rows if r[4] == b""] == [2, 4, 5]
    previous = GENESIS
    for row in rows:  # no chain value is the old formula over jane's hash any more
        assert row[8] != link(previous, (*row[1:4], jane, *row[5:8]))
        previous = row[8]

    garbage = tmp_path / "garbage.db"  # a value of another type: the upgrade still runs
    old_store(garbage)
    with sqlite3.connect(garbage) as conn:
        conn.execute("DROP TRIGGER audit_no_update")
        conn.execute("UPDATE audit SET at = 'noon' WHERE id = 3")
    first, _, after, _, upgrade_row = asyncio.run(upgrade(garbage))
    assert upgrade_row[3] == 3 and (after.first_broken, after.broken_at_upgrade) == (3, True)

    broken = tmp_path / "edited.db"
    old_store(broken, edit=True)
    first, _, after, _, upgrade_row = asyncio.run(upgrade(broken))
    assert upgrade_row[3] == 3  # the edit before the upgrade is kept as found
    assert (first.first_broken, first.broken_at_upgrade) == (3, True)
    assert (after.first_broken, after.broken_at_upgrade) == (3, True)  # for good


async def test_a_row_passed_off_as_unlinked_or_born_after_an_erasure(tmp_path):
    """Diff review: a row with its hash blanked and no commitment was taken as an old
    unlinked row, its chain as recorded: any row could be edited (and rows before it cut)
    so. And rows written after an erasure (an RCPT's audit that lingered, a copy in flight's
    'sent' mark) named the person again."""
    from gateway.security.keys import AddressHasher
    from gateway.store.audit import AuditLog, AuditRecord, unlink_late
    from gateway.store.subject import SubjectStore

    hasher = AddressHasher(b"k" * 32)
    async with Database(tmp_path / "g.db") as database:
        log = AuditLog(database)
        jane = hasher("jane@example.net")
        decided = time.time()
        await log.append([[AuditRecord(decided + i, "crm", "127.0.0.1", jane, "R6", "allow")
                           for i in range(3)]])
        await SubjectStore(database, hasher).erase("jane@example.net", "dpo")
        erased_at = time.time()
        await log.append([[AuditRecord(decided, "crm", "127.0.0.1", jane, "R6", "allow"),
                           AuditRecord(decided + 1, "crm", "delivery", jane, "R6", "sent"),
                           AuditRecord(erased_at + 1, "crm", "127.0.0.1", jane, "R1",
                                       "reject")]])
        # serve's housekeeping, each minute: the two about the time before go
        assert await unlink_late(database) == 2
        assert [r.decision for r in await log.for_recipient(jane)] == ["reject"]
        await log.append([[AuditRecord(decided, "crm", "127.0.0.1", jane, "R6", "allow")]])
        assert await unlink_late(database) == 1  # the next minute: only the rows since
        assert await unlink_late(database, now=time.time() + 7200) == 0  # an hour on: done
        check = await log.verify()
        assert (check.rows, check.first_broken, check.unlinked) == (7, None, 6)
    with sqlite3.connect(tmp_path / "g.db") as raw:
        raw.execute("DROP TRIGGER audit_no_update")
        raw.execute("UPDATE audit SET decision = 'reject', recipient_hash = x'',"
                    " recipient_salt = NULL, recipient_commit = NULL WHERE id = 2")
    async with Database(tmp_path / "g.db") as database:
        assert (await AuditLog(database).verify()).first_broken == 2


def test_a_start_waits_for_a_long_migration_of_another_process(tmp_path):
    """A migration holds the write lock as long as it takes (022 rebuilds the audit table:
    ~2 s per million rows); another process opening the store meanwhile failed after the
    usual 5 s ("database is locked") instead of waiting and finding it applied."""
    import asyncio
    import threading

    path = tmp_path / "old.db"
    with store_before(22, path):
        pass
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("PRAGMA journal_mode=WAL")  # as every store the gateway made
    other.execute("BEGIN IMMEDIATE")  # the other process, in the middle of its migration
    threading.Timer(6.0, lambda: other.execute("COMMIT")).start()

    async def open_store() -> list[int]:
        async with Database(path) as database:
            return [r[0] for r in await database.fetchall(
                "SELECT version FROM schema_migrations ORDER BY version")]

    started = time.monotonic()
    versions = asyncio.run(open_store())
    other.close()
    assert 22 in versions and time.monotonic() - started >= 5.5


async def test_a_deleted_copy_leaves_an_operator_record_in_the_audit_chain(db: Database):
    """`queue delete` removed a copy without a trace (INTERFACE: nothing leaves the queue
    unrecorded): the copy's account, rule and the operator are now in the audit log."""
    from gateway.store.audit import AuditLog

    q = QueueStore(db, "cli")
    ((copy,),) = await q.commit_messages([incoming("A", "a@x.example")])
    await q.delete(copy.delivery_id, operator="alice", recipient_hash=b"\x07" * 32)
    rows = await db.fetchall("SELECT account, client_ip, recipient_hash, rule, decision,"
                             " message_id FROM audit")
    assert [tuple(r) for r in rows] == [("crm", "operator alice", b"\x07" * 32, "OP",
                                         "reject", "A")]
    check = await AuditLog(db).verify()
    assert check.rows == 1 and check.first_broken is None


async def test_copies_refused_by_the_policy_are_counted_for_metrics(db: Database):
    """/metrics said 0 failed while `queue list --failed` held the copies the policy refused
    after DATA (inserted failed, never counted); one refused at delivery counted as an
    upstream failure."""
    q = QueueStore(db, "me")
    refusal = Refusal("r@x.example", "550 5.7.1 R10 campaign topics unrelated")
    message = dataclasses.replace(incoming("A", "a@x.example", "b@x.example"),
                                  refused=(refusal,))
    ((a, b),) = await q.commit_messages([message])
    await q.fail(a.delivery_id, "550 5.7.1 R1 recipient objected to prospecting")
    await q.fail(b.delivery_id, "550 5.1.1 no such user")
    counts = await q.outcome_counts()
    assert (counts["refused"], counts["failed"]) == (2, 1)


def test_a_store_that_carried_mail_before_the_chain_existed_still_verifies(tmp_path):
    """Migration 006 added the chain with NULL for the rows already there: `audit verify`
    said BROKEN at row 1 for ever (a false tamper alarm on every upgraded store). 026
    chains them with the rest (over their commitments); a row without a chain or a
    commitment is a break."""
    import asyncio

    from gateway.store.audit import AuditLog, AuditRecord

    path = tmp_path / "old.db"
    with store_before(6, path) as conn:
        for i in range(3):
            conn.execute("INSERT INTO audit (at, account, client_ip, recipient_hash, rule,"
                         " decision) VALUES (?, 'crm', '127.0.0.1', ?, 'R6', 'allow')",
                         (float(i), bytes([i]) * 32))

    async def upgrade() -> tuple[object, object]:
        async with Database(path) as database:
            log = AuditLog(database)
            await log.append([[AuditRecord(9.0, "crm", "127.0.0.1", b"\x09" * 32, "R6",
                                           "allow").row()]])
            intact = await log.verify()
            await database.write_one("INSERT INTO audit (at, account, client_ip,"  # a downgrade
                                     " recipient_hash, rule, decision) VALUES"
                                     " (10, 'crm', '127.0.0.1', x'00', 'R6', 'allow')")
            return intact, await log.verify()

    intact, broken = asyncio.run(upgrade())
    assert (intact.first_broken, intact.rows) == (None, 4)
    assert broken.first_broken == 5 and broken.rows == 4


def test_contacts_that_objected_before_029_have_their_consent_withdrawn(tmp_path):
    """Objections recorded before the person's objection withdrew consent left it granted:
    lifted, R6 came back. 029 withdraws it for the person's own objections made after the
    consent, not for an operator's entry nor for a consent given again since."""
    import asyncio

    from gateway.store.db import Database

    path = tmp_path / "old.db"
    with store_before(29, path) as conn:
        for cid, address in enumerate(("click@x.example", "request@x.example",
                                       "bounce@x.example", "again@x.example"), 1):
            conn.execute(
                "INSERT INTO contacts (id, address, address_hash, kind, audience, relationship,"
                " consent, consent_at, consent_method, collected_at, created_at, updated_at)"
                " VALUES (?, ?, ?, 'person', 'b2c', 'prospect', 'granted', ?, 'web form', 0,"
                " 0, 0)", (cid, address, bytes([cid]) * 32, 1000.0 if cid < 4 else 3000.0))
        for cid, channel, wording in ((1, "one-click", None), (2, "manual", "objection request"),
                                      (3, "manual", "hard bounce"), (4, "one-click", None)):
            conn.execute("INSERT INTO contact_events (contact_id, kind, occurred_at, channel,"
                         " wording, recorded_at) VALUES (?, 'objection', 2000, ?, ?, 2000)",
                         (cid, channel, wording))

    async def upgrade() -> None:
        async with Database(path):
            pass
    asyncio.run(upgrade())
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT consent, consent_method FROM contacts ORDER BY id").fetchall()
    assert rows == [("withdrawn", "web form"), ("withdrawn", "web form"),
                    ("granted", "web form"), ("granted", "web form")]
