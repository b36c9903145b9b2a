"""The durable delivery queue: messages stored once, one delivery row per recipient copy.

A copy is *claimed* by the gateway process delivering it (claimed_by, claimed_until), so
several processes can share one store; the claims of a process that died are taken over at the
next start (same host, dead pid) or when the claim expires.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

from gateway.errors import NotFound, Refused
from gateway.model import Decision
from gateway.store.audit import AuditRecord, insert_record_async, insert_records
from gateway.store.db import Database, insert_rows, with_rows

STATES = ("queued", "deferred", "failed", "sent")
_NEXT_DELIVERY_ID_SQL = (
    "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'deliveries'), 0),"
    " coalesce((SELECT max(id) FROM deliveries), 0)) + 1")
_RENEW_CLAIMS_SQL = ("UPDATE deliveries SET claimed_until = ? WHERE claimed_by = ?"
                     " AND id IN (SELECT id FROM k) AND state IN ('queued', 'deferred')")
POLICY_REFUSAL = re.compile(r"550 5\.7\.1 (R\d+|M\d|T\d) ")
PENDING = ("queued", "deferred")
# the messages no copy of which is left to send or retry (? : the cutoff of failed copies),
# found by a read (the index messages_holding), then freed by id, checked again
_FINISHED_SQL = (
    "SELECT m.id FROM messages m WHERE m.content IS NOT NULL"
    " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.message_id = m.id"
    " AND (d.state IN ('queued', 'deferred') OR (d.state = 'failed' AND d.updated_at > ?)))"
    " AND NOT EXISTS (SELECT 1 FROM quarantine q WHERE q.message_id = m.id"
    " AND q.state = 'held')")
_FREE_SQL = (
    "UPDATE messages AS m SET content = NULL WHERE m.id IN (SELECT value FROM json_each(?))"
    " AND m.content IS NOT NULL"
    " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.message_id = m.id"
    " AND (d.state IN ('queued', 'deferred') OR (d.state = 'failed' AND d.updated_at > ?)))"
    " AND NOT EXISTS (SELECT 1 FROM quarantine q WHERE q.message_id = m.id"
    " AND q.state = 'held')")
FREE_BATCH = 200  # messages freed per transaction (drop_finished_content)
KEEP_FAILED_SECONDS = 7 * 86400  # a failed copy's content is kept this long for `queue retry`
# /metrics' delivery counters (017_delivery_counts), in the outcome's own transaction
_COUNT_SQL = ("INSERT INTO delivery_counts (state, total) VALUES (?, ?)"
              " ON CONFLICT (state) DO UPDATE SET total = total + excluded.total")


@dataclass(frozen=True)
class Held:
    """A recipient whose copy goes to the quarantine instead of the queue."""

    recipient: str
    decision: Decision


@dataclass(frozen=True)
class Refusal:
    """A recipient refused after DATA (its copy is recorded failed, and bounced)."""

    recipient: str
    error: str


@dataclass(frozen=True)
class IncomingMessage:
    """A message accepted at DATA, before it is committed.

    `recipients` are queued for delivery, `held` go to the quarantine, `refused` are recorded
    failed with their `bounces` (DSNs); `audit` rows are written with the message id. All of
    it commits in one transaction, before the 250.
    """

    id: str
    received_at: float
    account: str | None
    client_ip: str
    mail_from: str
    content: bytes
    recipients: tuple[str, ...]
    subject: str = ""
    held: tuple[Held, ...] = ()
    refused: tuple[Refusal, ...] = ()
    bounces: tuple[IncomingMessage, ...] = ()
    audit: tuple[AuditRecord, ...] = ()
    basis: tuple[tuple[str, int | None, str], ...] = ()  # (recipient, contact id, rule)
    # what the X-Gateway-* headers narrowed the campaign to (";"-joined; None: no header),
    # kept with held copies: a release decides again with it (014_quarantine_steering)
    steering: tuple[str | None, str | None] = (None, None)
    smtputf8: bool = False  # the client's MAIL said SMTPUTF8: its copies go up with it
    helo: str = ""  # the session's EHLO/HELO name and protocol, for the Received field
    protocol: str = "ESMTP"  # (032_message_trace)


@dataclass(frozen=True)
class Copy:
    """One recipient's copy, as a delivery worker needs it."""

    delivery_id: int
    message_id: str
    account: str | None
    mail_from: str
    recipient: str
    content: bytes
    attempts: int
    received_at: float
    contact_id: int | None = None  # the ledger contact it was decided for
    rule: str | None = None  # the rule that allowed it (None for DSNs)
    # when the copy entered the queue (delivery.max_age_hours counts from here): a quarantined
    # copy enters it when released, maybe days after the message was received
    queued_at: float = 0.0
    smtputf8: bool = False  # its message's MAIL said SMTPUTF8 (020_message_smtputf8)
    client_ip: str = ""  # who handed its message over (the trace field, RFC 5321 4.4)
    helo: str | None = None  # its session's EHLO/HELO name and protocol (032_message_trace;
    protocol: str | None = None  # None for a message stored before it)


class SentMark(NamedTuple):
    """A copy the upstream took: its delivery id, the version of the notice it carried, and
    the audit row that records the sending (`AuditRecord.row()`, decision 'sent'; None for a
    copy without a notice: DSNs)."""

    delivery_id: int
    notice_version: str | None = None
    audit: tuple[object, ...] | None = None

    def sent_at(self, when: float) -> SentMark:
        """This mark with its audit row dated `when` (the upstream's answer)."""
        if self.audit is None:
            return self
        return self._replace(audit=(when, *self.audit[1:]))


class Prepared(NamedTuple):
    """A copy made ready to send: its bytes, its sent mark (recorded once the upstream took
    it), and (contact id, notice version) when it carries the full notice that marks the
    person informed (GDPR 14) once sent. Travelling with the copy, they cannot be lost or
    mixed up while it waits or is retried."""

    content: bytes
    mark: SentMark
    informed: tuple[int, str] | None = None


@dataclass(frozen=True)
class QueueEntry:
    """A delivery row as `gateway queue list` shows it."""

    id: int
    message_id: str
    mail_from: str
    recipient: str
    state: str
    attempts: int
    next_attempt_at: float
    last_error: str | None
    created_at: float
    updated_at: float

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.id, "message_id": self.message_id, "mail_from": self.mail_from,
            "recipient": self.recipient, "state": self.state, "attempts": self.attempts,
            "next_attempt_at": self.next_attempt_at, "last_error": self.last_error,
            "created_at": self.created_at, "updated_at": self.updated_at,
        }


class QueueStore:
    """All queue SQL. `instance_id` names this process in claims."""

    def __init__(self, db: Database, instance_id: str, claim_seconds: float = 600.0) -> None:
        self.db = db
        self.instance_id = instance_id
        self.claim_seconds = claim_seconds
        self._claims_renewed_at = time.time()
        self._heartbeat_written = time.monotonic()  # when this process last wrote its own
        self._heartbeat_wall = time.time()  # the same by the wall clock (a VM suspended)

    # --- the hot path -------------------------------------------------------------------

    async def commit_messages(self, messages: Sequence[IncomingMessage]) -> list[list[Copy]]:
        """Commit several accepted messages in ONE transaction (group commit), claimed by us.

        Returns each message's copies to deliver (its bounces' included), with their delivery
        ids, for in-process delivery.
        """
        now = time.time()
        claim_until = now + self.claim_seconds
        instance = self.instance_id
        stored = [(m.id, m.received_at, m.account, m.client_ip, m.mail_from, len(m.content),
                   m.content, m.subject, m.smtputf8, m.helo, m.protocol) for message in messages
                  for m in (message, *message.bounces)]
        audit = [record.row(message.id) for message in messages for record in message.audit]

        def write(conn: sqlite3.Connection) -> list[list[Copy]]:
            insert_rows(conn, "INSERT INTO messages (id, received_at, account, client_ip,"
                        " mail_from, size, content, subject, smtputf8, helo, protocol)",
                        stored)
            # the ids as SQLite would give them (AUTOINCREMENT: one past the highest ever
            # given, 011_delivery_ids), so that every copy is one multi-row insert, not one
            # statement (one GIL hand-off) each; nobody else writes inside this transaction
            [(delivery_id,)] = conn.execute(_NEXT_DELIVERY_ID_SQL).fetchall()
            rows: list[tuple[object, ...]] = []
            refused: list[tuple[object, ...]] = []
            held: list[tuple[object, ...]] = []
            result = []
            for message in messages:
                copies = []
                for m in (message, *message.bounces):
                    basis = {rcpt: (contact, rule) for rcpt, contact, rule in m.basis}
                    for rcpt in m.recipients:
                        contact_id, rule = basis.get(rcpt, (None, None))
                        rows.append((delivery_id, m.id, rcpt, "queued", 0, now, instance,
                                     claim_until, now, now, contact_id, rule))
                        copies.append(Copy(delivery_id, m.id, m.account, m.mail_from, rcpt,
                                           m.content, 0, m.received_at, contact_id, rule, now,
                                           m.smtputf8, m.client_ip, m.helo, m.protocol))
                        delivery_id += 1
                refused.extend((message.id, r.recipient, "failed", 0, now, r.error, now, now)
                               for r in message.refused)
                held.extend((message.id, now, message.account, message.client_ip,
                             message.mail_from, h.recipient, message.subject, h.decision.rule,
                             h.decision.reason, h.decision.basis, *message.steering)
                            for h in message.held)
                result.append(copies)
            insert_rows(conn, "INSERT INTO deliveries (id, message_id, recipient, state,"
                        " attempts, next_attempt_at, claimed_by, claimed_until, created_at,"
                        " updated_at, contact_id, rule)", rows)
            # after the copies: their ids are taken
            insert_rows(conn, "INSERT INTO deliveries (message_id, recipient, state, attempts,"
                        " next_attempt_at, last_error, created_at, updated_at)", refused)
            if refused:
                conn.execute(_COUNT_SQL, ("refused", len(refused)))
            insert_rows(conn, "INSERT INTO quarantine (message_id, created_at, account,"
                        " client_ip, mail_from, recipient, subject, rule, reason, basis,"
                        " steering_topics, steering_products)", held)
            insert_records(conn, audit)
            return result

        return await self.db.write(write)

    async def mark_sent(self, sent: Sequence[SentMark]) -> list[None]:
        """Record copies as sent, with the notice version each carried, and their audit rows
        (COMPLIANCE 4.5), in one transaction (the worker batches them)."""
        now = time.time()
        rows = [(mark.delivery_id, mark.notice_version) for mark in sent]
        audit = [mark.audit for mark in sent if mark.audit is not None]
        # one statement for the batch, not one per copy (each waits for the GIL behind the
        # event loop: ledger.record_objections)
        def write(conn: sqlite3.Connection) -> None:
            before = conn.total_changes
            with_rows(
                conn, "k(id, v)", rows,
                "UPDATE deliveries SET state = 'sent', attempts = attempts + 1,"
                " last_error = NULL, claimed_by = NULL, claimed_until = NULL, updated_at = ?,"
                " notice_version = (SELECT v FROM k WHERE k.id = deliveries.id)"
                " WHERE id IN (SELECT id FROM k)", (now,))
            conn.execute(_COUNT_SQL, ("sent", conn.total_changes - before))
            # written even for a copy `subject erase` took meanwhile: it was sent; serve's
            # housekeeping unlinks the row within a minute (store/audit.unlink_late)
            insert_records(conn, audit)

        await self.db.write(write)
        return [None] * len(rows)

    async def defer(self, delivery_id: int, error: str, next_attempt_at: float) -> None:
        """A temporary failure: try again at `next_attempt_at`, by whichever process is free."""
        params = (error, next_attempt_at, time.time(), delivery_id)

        def write(conn: sqlite3.Connection) -> None:
            changed = conn.execute(
                "UPDATE deliveries SET state = 'deferred', attempts = attempts + 1,"
                " last_error = ?, next_attempt_at = ?, claimed_by = NULL, claimed_until = NULL,"
                " updated_at = ? WHERE id = ?", params).rowcount
            conn.execute(_COUNT_SQL, ("deferred", changed))

        await self.db.write(write)

    async def fail(self, delivery_id: int, error: str, dsn: IncomingMessage | None = None,
                   audit: tuple[object, ...] | None = None) -> list[Copy]:
        """A permanent failure, recorded together with its DSN and the audit row of a
        decision taken at delivery (`AuditRecord.row()`) in the same transaction."""
        now = time.time()

        def write(conn: sqlite3.Connection) -> list[Copy]:
            changed = conn.execute(
                "UPDATE deliveries SET state = 'failed', attempts = attempts + 1, last_error = ?,"
                " claimed_by = NULL, claimed_until = NULL, updated_at = ? WHERE id = ?",
                (error, now, delivery_id)).rowcount
            # the policy's refusal at delivery (an objection made while it waited) is no
            # upstream failure: counted apart, as the report has it
            conn.execute(_COUNT_SQL, ("refused" if is_policy_refusal(error) else "failed",
                                      changed))
            if audit is not None and changed:
                insert_records(conn, [audit])
            if dsn is None or not changed:
                # not changed: the copy is gone (`subject erase` took it while this process
                # was trying it): no DSN, which would name the erased address again
                return []
            conn.execute(
                "INSERT INTO messages (id, received_at, account, client_ip, mail_from, size,"
                " content, smtputf8) VALUES (?, ?, NULL, ?, '', ?, ?, ?)",
                (dsn.id, dsn.received_at, dsn.client_ip, len(dsn.content), dsn.content,
                 dsn.smtputf8))
            copies = []
            for rcpt in dsn.recipients:  # claimed by this process, which delivers it now:
                # unclaimed, another process's scanner could take it and send it too
                cur = conn.execute(
                    "INSERT INTO deliveries (message_id, recipient, state, attempts,"
                    " next_attempt_at, claimed_by, claimed_until, created_at, updated_at)"
                    " VALUES (?, ?, 'queued', 0, ?, ?, ?, ?, ?)",
                    (dsn.id, rcpt, now, self.instance_id, now + self.claim_seconds, now, now))
                assert cur.lastrowid is not None
                copies.append(Copy(cur.lastrowid, dsn.id, None, "", rcpt, dsn.content, 0,
                                   dsn.received_at, queued_at=now, smtputf8=dsn.smtputf8))
            return copies

        return await self.db.write(write)

    async def outcome_counts(self) -> dict[str, int]:
        """Copies sent, deferred (each time), failed and refused (by the policy, after DATA
        or at delivery) so far, by every process sharing the store (/metrics' counters: they
        never go down). Sent counts the DSNs too."""
        rows = await self.db.fetchall("SELECT state, total FROM delivery_counts")
        counts = dict.fromkeys(("sent", "deferred", "failed", "refused"), 0)
        counts.update({row[0]: row[1] for row in rows})
        return counts

    async def claim_due(self, limit: int = 100) -> list[Copy]:
        """Claim copies that are due and not claimed by a live process, for this process."""
        now = time.time()
        async with self.db.transaction() as conn:
            async with conn.execute(
                "UPDATE deliveries SET claimed_by = ?, claimed_until = ?"
                " WHERE id IN (SELECT id FROM deliveries WHERE state IN ('queued', 'deferred')"
                "   AND next_attempt_at <= ? AND (claimed_until IS NULL OR claimed_until < ?)"
                "   ORDER BY next_attempt_at LIMIT ?)"
                " RETURNING id", (self.instance_id, now + self.claim_seconds, now, now, limit),
            ) as cur:
                ids = [row[0] for row in await cur.fetchall()]
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        rows = await self.db.fetchall(
            "SELECT d.id, d.message_id, m.account, m.mail_from, d.recipient, m.content,"  # noqa: S608 - marks are "?" only
            " d.attempts, m.received_at, d.contact_id, d.rule, d.created_at, m.smtputf8,"
            " m.client_ip, m.helo, m.protocol FROM deliveries d"
            " JOIN messages m ON m.id = d.message_id"
            f" WHERE d.id IN ({marks}) ORDER BY d.next_attempt_at", ids)
        return [Copy(*tuple(row)) for row in rows]

    # --- processes ----------------------------------------------------------------------

    async def register_instance(self) -> int:
        """Record this process; release the claims of dead processes (release_dead).

        Returns how many copies were released for redelivery.
        """
        released = await self.release_dead(starting=True)
        now = time.time()
        async with self.db.transaction() as conn:
            await conn.execute(
                "INSERT OR REPLACE INTO instances (id, host, pid, started_at, heartbeat)"
                " VALUES (?, ?, ?, ?, ?)", (self.instance_id, process_space(), os.getpid(),
                                            now, now))
        return released

    async def release_dead(self, starting: bool = False, by_pid_only: bool = False) -> int:
        """Release the claims of gateway processes that are gone, so their copies go now and
        not when each claim expires (claim_seconds, 10 minutes): a process of this machine
        and pid namespace whose pid is dead (or a zombie), and any process, anywhere, whose
        heartbeat stopped STALE_HEARTBEAT_SECONDS ago (another host, a host renamed, a
        reboot, a container restarted). At start, also a row with our own pid in our own
        namespace (an earlier incarnation restarted as pid 1). Run at start and every
        SWEEP_SECONDS by the scanner. How many copies were released. `by_pid_only`: the
        CLI's, which writes no heartbeat: only processes of this machine found dead."""
        now = time.time()
        space = process_space()
        # a heartbeat is silent only if ours is not: a store locked for minutes (a VACUUM)
        # silenced every process's, and the first back took the others' copies in flight
        judge_silence = not by_pid_only and (
            time.monotonic() - self._heartbeat_written < OWN_HEARTBEAT_FRESH)
        rows = await self.db.fetchall("SELECT id, host, pid, heartbeat FROM instances")
        dead = [row["id"] for row in rows
                if row["id"] != self.instance_id and (
                    (judge_silence and now - row["heartbeat"] > STALE_HEARTBEAT_SECONDS)
                    or (row["host"] == space and (
                        (starting and row["pid"] == os.getpid())
                        or not _pid_alive(row["pid"]))))]
        if not dead:
            return 0
        released = 0
        async with self.db.transaction() as conn:
            for instance in dead:
                cur = await conn.execute(
                    "UPDATE deliveries SET claimed_by = NULL, claimed_until = NULL"
                    " WHERE claimed_by = ?", (instance,))
                released += cur.rowcount
                await conn.execute("DELETE FROM instances WHERE id = ?", (instance,))
        return released

    async def heartbeat(self, held: Collection[int] = ()) -> None:
        """This process is alive. Every third of the claim period, the claims on the copies it
        `held` (in its workers' queue or being sent, however long its backlog) are renewed: a
        claim that expired under a live process would let another one send the same copy.
        Only those: a copy claimed but never handed to the workers (the client gone during
        the commit) must still expire and be taken up by a scan."""
        now = time.time()
        async with self.db.transaction() as conn:
            # an upsert: a row another process took for dead (and deleted) comes back
            await conn.execute(
                "INSERT INTO instances (id, host, pid, started_at, heartbeat)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET heartbeat = ?",
                (self.instance_id, process_space(), os.getpid(), now, now, now))
        self._heartbeat_written, self._heartbeat_wall = time.monotonic(), now
        if held and now - self._claims_renewed_at >= self.claim_seconds / 3:
            rows = [(delivery_id,) for delivery_id in held]
            await self.db.write(lambda conn: with_rows(
                conn, "k(id)", rows, _RENEW_CLAIMS_SQL, (now + self.claim_seconds,
                                                         self.instance_id)))
            self._claims_renewed_at = now

    def heartbeat_late(self) -> bool:
        """Whether this process's own heartbeat is older than OWN_HEARTBEAT_FRESH, by either
        clock: it was frozen (SIGSTOP, `docker pause`, a VM suspended or migrated, swapping)
        or could not write, and another process may have taken it for dead and its claims
        with it (release_dead, STALE_HEARTBEAT_SECONDS). A copy it holds in memory must not
        be sent before `still_claimed` says it is still its own."""
        return (time.monotonic() - self._heartbeat_written > OWN_HEARTBEAT_FRESH
                or abs(time.time() - self._heartbeat_wall) > OWN_HEARTBEAT_FRESH)

    async def still_claimed(self, delivery_ids: Collection[int]) -> set[int]:
        """Of `delivery_ids`, those this process still claims (queued or deferred), their
        claims renewed, and its heartbeat written: the others were taken over by another
        process while this one was silent, and are that one's to send now."""
        now = time.time()
        ids = json.dumps(sorted(delivery_ids))

        def write(conn: sqlite3.Connection) -> set[int]:
            conn.execute(
                "INSERT INTO instances (id, host, pid, started_at, heartbeat)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET heartbeat = ?",
                (self.instance_id, process_space(), os.getpid(), now, now, now))
            return {row[0] for row in conn.execute(
                "UPDATE deliveries SET claimed_until = ? WHERE claimed_by = ?"
                " AND state IN ('queued', 'deferred')"
                " AND id IN (SELECT value FROM json_each(?)) RETURNING id",
                (now + self.claim_seconds, self.instance_id, ids)).fetchall()}

        ours = await self.db.write(write)
        self._heartbeat_written, self._heartbeat_wall = time.monotonic(), now
        return ours

    async def unregister_instance(self) -> None:
        """Clean stop: hand every copy we still hold back to the queue at once."""
        async with self.db.transaction() as conn:
            await conn.execute(
                "UPDATE deliveries SET claimed_by = NULL, claimed_until = NULL"
                " WHERE claimed_by = ?", (self.instance_id,))
            await conn.execute("DELETE FROM instances WHERE id = ?", (self.instance_id,))

    async def hand_back(self, delivery_ids: Collection[int]) -> None:
        """Copies this process claimed at commit and will not hold in memory: left to the
        next scan of any process (shares the writer's next transaction)."""
        ids = json.dumps(sorted(delivery_ids))
        await self.db.write(lambda conn: conn.execute(
            "UPDATE deliveries SET claimed_by = NULL, claimed_until = NULL WHERE claimed_by = ?"
            " AND id IN (SELECT value FROM json_each(?))", (self.instance_id, ids)).rowcount)

    async def release(self, delivery_ids: Iterable[int]) -> None:
        async with self.db.transaction() as conn:
            await conn.executemany(
                "UPDATE deliveries SET claimed_by = NULL, claimed_until = NULL"
                " WHERE id = ? AND claimed_by = ?", [(i, self.instance_id) for i in delivery_ids])

    async def drop_finished_content(self, keep_failed_seconds: float = KEEP_FAILED_SECONDS) -> int:
        """Free the raw content of messages whose copies are all finished.

        Failed copies keep it for `keep_failed_seconds`, so `queue retry` can still resend them
        once the operator fixed the cause.

        The finished ones are found by a read (the messages_holding index: those still holding
        content, not the whole table), then freed FREE_BATCH at a time, each batch its own
        short transaction checking again: one statement over everything held the write lock
        for seconds after a busy minute (its pages zeroed by secure_delete), and every
        end-of-DATA commit waited behind it.
        """
        cutoff = time.time() - keep_failed_seconds
        rows = await self.db.fetchall(_FINISHED_SQL, (cutoff,))
        freed = 0
        for start in range(0, len(rows), FREE_BATCH):
            ids = json.dumps([row[0] for row in rows[start:start + FREE_BATCH]])
            async with self.db.transaction() as conn:
                cur = await conn.execute(_FREE_SQL, (ids, cutoff))
                freed += cur.rowcount
        return freed

    # --- operator commands --------------------------------------------------------------

    async def list(self, states: Sequence[str] = PENDING + ("failed",),
                   limit: int = 1000) -> list[QueueEntry]:
        marks = ",".join("?" * len(states))
        rows = await self.db.fetchall(
            "SELECT d.id, d.message_id, m.mail_from, d.recipient, d.state, d.attempts,"  # noqa: S608 - marks are "?" only
            " d.next_attempt_at, d.last_error, d.created_at, d.updated_at"
            " FROM deliveries d JOIN messages m ON m.id = d.message_id"
            # copies still to send first, in order; then finished ones, newest first: past
            # `limit` old failures (kept until R4 purges them) hid the live backlog
            f" WHERE d.state IN ({marks})"
            " ORDER BY d.state IN ('failed', 'sent'),"
            " CASE WHEN d.state IN ('failed', 'sent') THEN -d.id ELSE d.id END LIMIT ?",
            (*states, limit))
        return [QueueEntry(*tuple(row)) for row in rows]

    async def get(self, delivery_id: int) -> QueueEntry:
        rows = await self.db.fetchall(
            "SELECT d.id, d.message_id, m.mail_from, d.recipient, d.state, d.attempts,"
            " d.next_attempt_at, d.last_error, d.created_at, d.updated_at"
            " FROM deliveries d JOIN messages m ON m.id = d.message_id WHERE d.id = ?",
            (delivery_id,))
        if not rows:
            raise NotFound(f"no queue entry {delivery_id}")
        return QueueEntry(*tuple(rows[0]))

    async def copies_of(self, message_id: str) -> tuple[int, ...]:
        """The queue entries of the message `message_id` (the queue id its 250 named) that
        were not sent; NotFound when it has none."""
        rows = await self.db.fetchall(
            "SELECT id FROM deliveries WHERE message_id = ? AND state != 'sent' ORDER BY id",
            (message_id,))
        if not rows:
            raise NotFound(f"no copy of message {message_id} waiting or failed in the queue "
                           "(unknown queue id, or every copy sent)")
        return tuple(row[0] for row in rows)

    async def retry(self, delivery_id: int) -> None:
        """Make a deferred or failed copy due now (a failed one only while its content is
        kept, and from now on: delivery.max_age_hours counts again from the retry).

        Refused (Refused) while a gateway process holds the copy, as `delete` is: taken from
        under it, the copy would be claimed and sent by another process as well."""
        entry = await self.get(delivery_id)
        if entry.state == "sent":
            raise NotFound(f"queue entry {delivery_id} was already sent")
        if entry.state == "failed" and is_policy_refusal(entry.last_error):
            raise Refused(f"queue entry {delivery_id} was refused by the compliance policy "
                          f"({entry.last_error}); it is never sent from the queue")
        async with self.db.transaction() as conn:
            row = await (await conn.execute(
                "SELECT content IS NOT NULL FROM messages WHERE id = ?",
                (entry.message_id,))).fetchone()
            if not row or not row[0]:
                raise NotFound(f"queue entry {delivery_id}: message content no longer kept")
            now = time.time()
            changed = await conn.execute(
                "UPDATE deliveries SET state = 'queued', next_attempt_at = ?, claimed_by = NULL,"
                " claimed_until = NULL, updated_at = ?,"
                " created_at = CASE WHEN state = 'failed' THEN ? ELSE created_at END"
                " WHERE id = ? AND state != 'sent' AND (claimed_by IS NULL"
                " OR claimed_until IS NULL OR claimed_until < ?)",
                (now, now, now, delivery_id, now))
            if changed.rowcount == 0:
                row = await (await conn.execute(
                    "SELECT claimed_by, state FROM deliveries WHERE id = ?",
                    (delivery_id,))).fetchone()
                if row is None:
                    raise NotFound(f"no queue entry {delivery_id}")
                if row[1] == "sent":  # sent since it was read above: not to be sent again
                    raise NotFound(f"queue entry {delivery_id} was already sent")
                raise Refused(f"queue entry {delivery_id} is being delivered by {row[0]} right "
                              "now: not retried (it is being tried already)")

    async def flush(self) -> int:
        """Make every deferred copy due now; returns how many (not those a process is
        trying already: they were counted as "made due")."""
        now = time.time()
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                "UPDATE deliveries SET next_attempt_at = ?, updated_at = ?"
                " WHERE state = 'deferred' AND (claimed_until IS NULL OR claimed_until < ?)",
                (now, now, now))
            return cur.rowcount

    async def delete(self, delivery_id: int, *, operator: str,
                     recipient_hash: bytes) -> None:
        """Remove a copy from the queue for good (no delivery, no DSN), with the operator's
        decision in the audit log: decision reject, rule OPERATOR_DELETE, client "operator
        NAME" (INTERFACE: nothing leaves the queue unrecorded; the access export and letter
        say the message was withdrawn). `recipient_hash` is the recipient's address hash.

        Refused (Refused) while another gateway process holds the copy: it may be talking to
        the upstream right now, and a copy deleted under it would still go out, unrecorded.
        """
        entry = await self.get(delivery_id)
        if entry.state == "sent":  # it went: its record is what an access request lists
            raise Refused(f"queue entry {delivery_id} was sent: its record is kept (GDPR 15 "
                          "exports list it); there is nothing to delete")
        now = time.time()
        async with self.db.transaction() as conn:
            account = await (await conn.execute(
                "SELECT m.account FROM deliveries d JOIN messages m"
                " ON m.id = d.message_id WHERE d.id = ?", (delivery_id,))).fetchone()
            deleted = await conn.execute(
                "DELETE FROM deliveries WHERE id = ? AND state != 'sent' AND (claimed_by IS NULL"
                " OR claimed_by = ? OR claimed_until IS NULL OR claimed_until < ?)",
                (delivery_id, self.instance_id, now))
            if deleted.rowcount == 0:
                row = await (await conn.execute(
                    "SELECT claimed_by, claimed_until, state FROM deliveries WHERE id = ?",
                    (delivery_id,))).fetchone()
                if row is None:
                    raise NotFound(f"no queue entry {delivery_id}")
                if row[2] == "sent":  # sent since it was read above
                    raise Refused(f"queue entry {delivery_id} was sent: its record is kept")
                raise Refused(
                    f"queue entry {delivery_id} is being delivered by {row[0]} (its claim "
                    f"runs {row[1] - now:.0f} s more): not deleted; once it is sent, deferred "
                    "or failed, or its claim has expired, it can be")
            assert account is not None  # the row deleted above was there (this transaction)
            await insert_record_async(conn, AuditRecord(
                now, account[0], f"operator {operator}", recipient_hash, OPERATOR_DELETE,
                "reject", entry.message_id).row())
            await conn.execute(
                "DELETE FROM messages WHERE NOT EXISTS"
                " (SELECT 1 FROM deliveries d WHERE d.message_id = messages.id)"
                " AND NOT EXISTS (SELECT 1 FROM quarantine q WHERE q.message_id = messages.id)")


OPERATOR_DELETE = "OP"  # the audit rule of a copy an operator deleted from the queue
STALE_HEARTBEAT_SECONDS = 120.0  # a live process writes its heartbeat every scan (1 s)
OWN_HEARTBEAT_FRESH = 30.0  # others' silence is judged only while ours is this recent
SWEEP_SECONDS = 30.0  # how often release_dead runs


def is_policy_refusal(error: str | None) -> bool:
    """A copy the policy refused after DATA (`550 5.7.1 <rule> ...`, see flow.accept), not an
    upstream failure: retrying it would send what the rule book forbids."""
    return bool(error) and POLICY_REFUSAL.match(error or "") is not None


def _pid_alive(pid: int) -> bool:
    """Alive, and not a zombie (kill(pid, 0) succeeds on one: a worker killed with its
    supervisor stays one until it is reaped, and its copies waited out their claims)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: alive as far as we can tell
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


@lru_cache(maxsize=1)
def process_space() -> str:
    """Where a pid means one process: the host name, this boot, this pid namespace. Two
    containers with one host name (a fixed `hostname:`), both pid 1 on one store, took each
    other for an earlier incarnation and sent each other's copies again."""
    host = socket.gethostname()
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return host
    return f"{host} boot={boot} pidns={namespace}"
