"""The audit log: one append-only row per recipient decision (GDPR 5-2 accountability).

Rows name the recipient by its keyed hash only, and the chain covers a salted commitment to
that hash rather than the hash (026_audit_unlinkable): an erasure blanks the hash and the salt
of the person's rows (`unlink`), which then name no one, and the chain still verifies. Rows of
an accepted message are written in the same transaction as the message (store/queue.py);
decisions that led to no message (every recipient refused, or the client gave up before
DATA) are appended here, batched.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import sqlite3
import time
from collections.abc import Sequence
from typing import NamedTuple

import aiosqlite

from gateway.errors import StoreError
from gateway.store.db import Database, insert_rows

INSERT_HEAD = ("INSERT INTO audit (at, account, client_ip, recipient_hash, rule, decision,"
               " message_id, notice_version, recipient_salt, recipient_commit, chain)")
GENESIS = bytes(32)
SALT_BYTES = 16
HASH_BYTES = 32  # the keyed hash of an address (security.keys.AddressHasher)
RECHAIN_ROWS = 5000  # rows read and rewritten at a time by rechain_for_026
UNLINKED = b""  # the recipient_hash of a row whose recipient was erased
# Rows hashed, then inserted, at a time: the writer thread holds the interpreter lock while it
# hashes and gives it back inside each INSERT, so the event loop gets it back every 64 rows
# rather than once for a whole batch (~900 rows after the audit's linger under load).
CHAIN_CHUNK = 64
# AuditLog.append writes a large batch this many rows per transaction, a pause between them:
# the 2,000 rows of 20 sessions that end their transactions together, hashed in one go, took
# the interpreter lock from the busy event loop for ~7 ms in ~20 ms, and the RCPTs answered
# meanwhile made the p99 (bench/README.md, ledger, "eighth session"). Paced, the same work is
# spread over ~35 ms; the pace still writes ~50,000 rows/s, above what one process decides.
WRITE_ROWS = 128
WRITE_PACE_SECONDS = 0.002


def commitment(salt: bytes, recipient_hash: bytes) -> bytes:
    """What the chain covers in place of the recipient's hash: SHA-256(salt || hash). With the
    salt gone (an erasure), it cannot be tied to the address, even by whoever holds the
    hashing key."""
    return hashlib.sha256(salt + recipient_hash).digest()


def link(previous: bytes, row: Sequence[object], commit: bytes | None = None) -> bytes:
    """The chain value of an audit row: SHA-256 over the previous value and the row's
    fields (time, account, client IP, the recipient, rule, decision, message id, then the
    notice version of a 'sent' row). The recipient is its commitment (`commit`) in rows
    written since 026_audit_unlinkable, its hash in older ones. A row without a notice
    version hashes as the rows written before the field existed (022_audit_sent), so their
    chain still verifies."""
    at, account, client_ip, recipient_hash, rule, decision, message_id = row[:7]
    notice_version = row[7] if len(row) > 7 else None
    recipient = ("commit:" + commit.hex() if commit is not None
                 else bytes(recipient_hash).hex())  # type: ignore[call-overload]
    fields = [repr(float(at)),  # type: ignore[arg-type]
              str(account or ""), str(client_ip), recipient,
              str(rule), str(decision), str(message_id or "")]
    if notice_version is not None:
        fields.append(str(notice_version))
    return hashlib.sha256(previous + "\x1f".join(fields).encode("utf-8")).digest()


def _chained(previous: bytes, rows: Sequence[tuple[object, ...]]
             ) -> tuple[bytes, list[tuple[object, ...]]]:
    """`rows` (AuditRecord.row()) as inserted after the chain value `previous`: each with its
    salt, commitment and chain value. Returns the last chain value and the rows."""
    salts = os.urandom(SALT_BYTES * len(rows))
    chained = []
    for index, row in enumerate(rows):
        salt = salts[index * SALT_BYTES:(index + 1) * SALT_BYTES]
        commit = commitment(salt, bytes(row[3]))  # type: ignore[call-overload]
        previous = link(previous, row, commit)
        chained.append((*row, salt, commit, previous))
    return previous, chained


class AuditCheck(NamedTuple):
    rows: int
    first_broken: int | None
    last: tuple[int, bytes] | None  # (id, chain) of the last row: the anchor to keep outside
    at_anchor: bytes | None = None  # the chain of the row asked about (verify(anchor=ID))
    unlinked: int = 0  # rows whose recipient an erasure unlinked (their content still checked)
    broken_at_upgrade: bool = False  # first_broken was found by the upgrade to 026
    anchor_predates: bool = False  # the anchor asked about is from before that upgrade


class Unwritten(NamedTuple):
    """The rows of a batch the store refused (AuditLog.append), and why."""

    rows: list[tuple[object, ...]]
    error: StoreError


class AuditRecord(NamedTuple):
    """One decision. A named tuple: a transaction that ends builds one per recipient at once
    (100 on a 100-recipient RSET), and a frozen dataclass costs three times as much to make."""

    at: float
    account: str | None
    client_ip: str
    recipient_hash: bytes
    rule: str
    decision: str  # allow | reject | quarantine, or sent (a copy the upstream took)
    message_id: str | None = None
    notice_version: str | None = None  # 'sent': the notice the copy carried (COMPLIANCE 4.5)

    def row(self, message_id: str | None = None) -> tuple[object, ...]:
        return (self.at, self.account, self.client_ip, self.recipient_hash, self.rule,
                self.decision, message_id or self.message_id, self.notice_version)

    def as_json(self) -> dict[str, object]:
        return {"at": self.at, "account": self.account, "client_ip": self.client_ip,
                "recipient_hash": self.recipient_hash.hex(), "rule": self.rule,
                "decision": self.decision, "message_id": self.message_id,
                "notice_version": self.notice_version}


def insert_records(conn: sqlite3.Connection, rows: Sequence[tuple[object, ...]]) -> None:
    """Append audit rows (`AuditRecord.row()`) inside the caller's write transaction
    (Database.write), chained to the last row. One read of the chain's end per call: a group
    commit passes every row of its batch at once (each statement gives the GIL back to the
    event loop and waits to take it again)."""
    if not rows:
        return
    last = conn.execute("SELECT chain FROM audit ORDER BY id DESC LIMIT 1").fetchone()
    previous = (last[0] if last and last[0] else GENESIS)
    for start in range(0, len(rows), CHAIN_CHUNK):
        previous, chained = _chained(previous, rows[start:start + CHAIN_CHUNK])
        insert_rows(conn, INSERT_HEAD, chained)


async def insert_record_async(conn: aiosqlite.Connection, row: tuple[object, ...]) -> None:
    """insert_records for one row, on an aiosqlite connection inside its write transaction
    (Database.transaction: BEGIN IMMEDIATE, so no other writer moves the chain's end)."""
    async with conn.execute("SELECT chain FROM audit ORDER BY id DESC LIMIT 1") as cur:
        last = await cur.fetchone()
    previous = last[0] if last and last[0] else GENESIS
    _, [chained] = _chained(previous, [row])
    await conn.execute(INSERT_HEAD + " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", chained)


# Rows written after an erasure about the time before it: an RCPT decided before the
# erasure and audited after it (the audit lingers, and is retried when the store refuses a
# write), the 'sent' mark of a copy in flight during it (claimed for 10 minutes at most). A
# refusal decided since (R1: the suppression entry at work) names the hash, as that does.
LATE_WINDOW_SECONDS = 3600.0
_UNLINK_LATE = ("UPDATE audit SET recipient_hash = x'', recipient_salt = NULL"
                " WHERE id > ? AND recipient_hash = ? AND (decision != 'reject' OR at <= ?)")


async def unlink_late(db: Database, now: float | None = None,
                      window: float = LATE_WINDOW_SECONDS) -> int:
    """serve's housekeeping, each minute: unlink the rows written since each erasure of the
    last `window` seconds (from its audit_mark, 028) that are about the time before it
    (diff review: `subject export` found them after the erasure). How many rows."""
    now = time.time() if now is None else now
    recent = await db.fetchall(
        "SELECT id, address_hash, erased_at FROM erasures WHERE erased_at > ?"
        " AND audit_mark IS NOT NULL", (now - window,))
    if not recent:
        return 0

    def write(conn: sqlite3.Connection) -> int:
        unlinked = 0
        for erasure, digest, at in recent:
            # from the mark on, then the mark moved to the end: each minute scans only the
            # rows written since the last (in this write transaction, no row comes between)
            [(mark,)] = conn.execute("SELECT audit_mark FROM erasures WHERE id = ?",
                                     (erasure,)).fetchall()
            unlinked += max(0, conn.execute(_UNLINK_LATE, (int(mark), bytes(digest),
                                                           float(at))).rowcount)
            conn.execute("UPDATE erasures SET audit_mark = (SELECT coalesce(max(id), 0)"
                         " FROM audit) WHERE id = ?", (erasure,))
        return unlinked

    return await db.write(write)


async def rechain_for_026(conn: aiosqlite.Connection) -> None:
    """Migration 026, in its transaction: verify the old chain (over the recipients' hashes),
    then give every row a salt and commitment and chain it anew over the commitments, from
    the first row (the rows from before 006 too); what the check found goes to
    audit_upgrade. Rows are read and rewritten RECHAIN_ROWS at a time."""
    old_previous = new_previous = GENESIS
    rows = unchained = 0
    last_id = first_broken = None
    old_checked = False  # a chained row seen: the rows without a chain are before it only
    while True:
        async with conn.execute(
                "SELECT id, at, account, client_ip, recipient_hash, rule, decision,"
                " message_id, notice_version, chain FROM audit WHERE id > ? ORDER BY id"
                " LIMIT ?", (last_id if last_id is not None else -1, RECHAIN_ROWS)) as cur:
            batch = [tuple(row) for row in await cur.fetchall()]
        if not batch:
            break
        rewritten = []
        for row in batch:
            row_id, fields, chain = int(row[0]), row[1:9], row[9]
            if first_broken is None:
                if chain is None and not old_checked:
                    unchained += 1  # before 006: no chain to check
                else:
                    old_checked = True
                    try:
                        old_previous = link(old_previous, fields)
                    except (TypeError, ValueError):
                        old_previous = b""
                    if chain != old_previous:
                        first_broken = row_id
            digest = fields[3] if isinstance(fields[3], bytes) else str(fields[3]).encode()
            salt = os.urandom(SALT_BYTES)
            commit = commitment(salt, digest)
            try:
                new_previous = link(new_previous, fields, commit)
            except (TypeError, ValueError):
                # a value of another type written in by hand (an `at` of text): no chain
                # value verify could recompute, so verify names the row; the upgrade (and
                # the gateway's start) does not fail on it
                new_previous = hashlib.sha256(b"unchainable" + new_previous).digest()
            rewritten.append((salt, commit, new_previous, row_id))
            rows += 1
            last_id = row_id
        await conn.executemany("UPDATE audit SET recipient_salt = ?, recipient_commit = ?,"
                               " chain = ? WHERE id = ?", rewritten)
    await conn.execute("INSERT INTO audit_upgrade (upgraded_at, rows, last_id, unchained,"
                       " first_broken) VALUES (?, ?, ?, ?, ?)",
                       (time.time(), rows, last_id, unchained, first_broken))


async def unlink(conn: aiosqlite.Connection, recipient_hash: bytes) -> int:
    """Inside an erasure's transaction: blank the recipient's hash and salt in every audit
    row about it (the only change 026's trigger allows); how many rows. The rows keep what
    was decided, when and for which account, about no one."""
    cur = await conn.execute(
        "UPDATE audit SET recipient_hash = ?, recipient_salt = NULL WHERE recipient_hash = ?",
        (UNLINKED, recipient_hash))
    return max(0, cur.rowcount)


class AuditLog:
    def __init__(self, db: Database, write_rows: int = WRITE_ROWS,
                 pace: float = WRITE_PACE_SECONDS) -> None:
        self.db = db
        self.write_rows = write_rows
        self.pace = pace

    async def append(self, batches: Sequence[Sequence[tuple[object, ...]]]
                     ) -> list[Unwritten | None]:
        """Append several sessions' records (AuditRecords, or their `row()`s), in order, in
        transactions of `write_rows` rows `pace` seconds apart (a GroupCommitter's write: the
        next batch gathers meanwhile). Other writes, a message's commit say, go in between.
        Per batch: None when all its rows were written, else its rows not written and the
        store's error (the transactions before the failing one stay committed: a retry of
        the whole batch wrote those rows twice)."""
        rows = [(index, tuple(record)) for index, records in enumerate(batches)
                for record in records]
        results: list[Unwritten | None] = [None] * len(batches)
        for start in range(0, len(rows), self.write_rows):
            if start:
                await asyncio.sleep(self.pace)
            part = rows[start:start + self.write_rows]
            try:
                await self.db.write(functools.partial(insert_records,
                                                      rows=[row for _, row in part]))
            except StoreError as exc:
                left: dict[int, list[tuple[object, ...]]] = {}
                for index, row in rows[start:]:
                    left.setdefault(index, []).append(row)
                for index, unwritten in left.items():
                    results[index] = Unwritten(unwritten, exc)
                return results
        return results

    async def verify(self, anchor: int | None = None) -> AuditCheck:
        """Recompute the chain: the rows checked, the first row whose chain does not match,
        the last row's (id, chain), and, for `anchor`, that row's chain: an anchor kept
        outside the store by an earlier verify still matches unless rows after it were cut
        or the chain was recomputed over an edit before it."""
        upgrade = await self.db.fetchone(
            "SELECT last_id, first_broken FROM audit_upgrade ORDER BY rowid DESC LIMIT 1")
        predates = bool(upgrade and anchor is not None and upgrade[0] is not None
                        and anchor <= upgrade[0])
        if upgrade and upgrade[1] is not None:
            # the old chain was broken when 026 re-chained the log: said for good (the new
            # chain, computed over the edit, would hide it)
            return AuditCheck(0, int(upgrade[1]), None, None, broken_at_upgrade=True,
                              anchor_predates=predates)
        previous = GENESIS
        checked, last_id, at_anchor, unlinked = 0, None, None, 0
        async with self.db.reader.execute(
                "SELECT id, at, account, client_ip, recipient_hash, rule, decision,"
                " message_id, notice_version, chain, recipient_salt, recipient_commit"
                " FROM audit ORDER BY id") as cur:
            async for row in cur:
                row_id, chain, salt, commit = int(row[0]), row[9], row[10], row[11]
                erased = row[4] == UNLINKED
                try:
                    # every row has its commitment (026 gave the older ones theirs); a kept
                    # recipient must match it: 32 bytes of hash, 16 of salt (moved between
                    # the two, the commitment held and the row hid from `subject export`)
                    if not isinstance(commit, bytes) or not (
                            (erased and salt is None)
                            or (isinstance(salt, bytes) and len(salt) == SALT_BYTES
                                and len(row[4]) == HASH_BYTES
                                and commitment(salt, row[4]) == commit)):
                        return AuditCheck(checked, row_id, None, at_anchor, unlinked,
                                          anchor_predates=predates)
                    expected = link(previous, tuple(row)[1:9], commit)
                except (TypeError, ValueError):  # a value of another type written by hand
                    return AuditCheck(checked, row_id, None, at_anchor, unlinked,
                                      anchor_predates=predates)
                if chain != expected:
                    return AuditCheck(checked, row_id, None, at_anchor, unlinked,
                                      anchor_predates=predates)
                unlinked += erased
                previous = expected
                checked += 1
                last_id = row_id
                if last_id == anchor:
                    at_anchor = expected
        return AuditCheck(checked, None, None if last_id is None else (last_id, previous),
                          None if predates else at_anchor, unlinked, anchor_predates=predates)

    async def for_recipient(self, recipient_hash: bytes) -> list[AuditRecord]:
        rows = await self.db.fetchall(
            "SELECT at, account, client_ip, recipient_hash, rule, decision, message_id,"
            " notice_version FROM audit WHERE recipient_hash = ? ORDER BY id", (recipient_hash,))
        return [AuditRecord(*tuple(row)) for row in rows]
