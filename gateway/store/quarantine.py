"""The quarantine: recipient copies held for a human (R9, R2 when so configured, M2, M3).

Entries are written with their message (store/queue.py), in the same transaction as the 250.
The raw message stays in `messages` while an entry holds it.
"""

from __future__ import annotations

import builtins
import time
from dataclasses import dataclass

import aiosqlite

from gateway.errors import NotFound, Refused
from gateway.store.audit import AuditRecord, insert_record_async
from gateway.store.db import Database
from gateway.store.queue import KEEP_FAILED_SECONDS

_COLUMNS = ("id, message_id, created_at, account, client_ip, mail_from, recipient, subject,"
            " rule, reason, basis, state, steering_topics, steering_products")


@dataclass(frozen=True)
class QuarantineEntry:
    id: int
    message_id: str
    created_at: float
    account: str | None
    client_ip: str
    mail_from: str
    recipient: str
    subject: str
    rule: str
    reason: str
    basis: str
    state: str
    steering_topics: str | None = None  # the message's X-Gateway-* headers (None: absent)
    steering_products: str | None = None

    def as_json(self) -> dict[str, object]:
        return {"id": self.id, "created_at": self.created_at, "account": self.account,
                "mail_from": self.mail_from, "recipient": self.recipient,
                "subject": self.subject, "rule": self.rule, "reason": self.reason,
                "basis": self.basis, "state": self.state, "message_id": self.message_id,
                "client_ip": self.client_ip, "steering_topics": self.steering_topics,
                "steering_products": self.steering_products}


async def _decide(conn: aiosqlite.Connection, entry: QuarantineEntry, state: str,
                  operator: str, reason: str | None, now: float) -> None:
    """Record an operator's decision on a held entry (Refused if it is no longer held)."""
    cur = await conn.execute(
        "UPDATE quarantine SET state = ?, decided_at = ?, decided_by = ?,"
        " decision_reason = ? WHERE id = ? AND state = 'held'",
        (state, now, operator, reason, entry.id))
    if cur.rowcount != 1:
        raise Refused(f"quarantine entry {entry.id} is no longer held")


class QuarantineStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def list(self, account: str | None = None, rule: str | None = None,
                   state: str = "held", limit: int = 1000,
                   since: float | None = None) -> list[QuarantineEntry]:
        """Entries in `state`, oldest first, optionally for one account, rule or period."""
        rows = await self.db.fetchall(
            f"SELECT {_COLUMNS} FROM quarantine WHERE state = ?"  # noqa: S608 - constant columns
            " AND (? IS NULL OR account = ?) AND (? IS NULL OR rule = ?)"
            " AND (? IS NULL OR created_at >= ?)"
            " ORDER BY created_at, id LIMIT ?",
            (state, account, account, rule, rule, since, since, limit))
        return [QuarantineEntry(*tuple(row)) for row in rows]

    async def counts(self, account: str | None = None, rule: str | None = None,
                     since: float | None = None) -> dict[str, int]:
        """Held entries per rule, over all of them (not only a page)."""
        rows = await self.db.fetchall(
            "SELECT rule, count(*) FROM quarantine WHERE state = 'held'"
            " AND (? IS NULL OR account = ?) AND (? IS NULL OR rule = ?)"
            " AND (? IS NULL OR created_at >= ?) GROUP BY rule",
            (account, account, rule, rule, since, since))
        return {row[0]: row[1] for row in rows}

    async def get(self, entry_id: int) -> QuarantineEntry:
        row = await self.db.fetchone(
            f"SELECT {_COLUMNS} FROM quarantine WHERE id = ?", (entry_id,))  # noqa: S608
        if row is None:
            raise NotFound(f"no quarantine entry {entry_id}")
        return QuarantineEntry(*tuple(row))

    async def content(self, entry: QuarantineEntry) -> bytes | None:
        row = await self.db.fetchone("SELECT content FROM messages WHERE id = ?",
                                     (entry.message_id,))
        return row[0] if row else None

    async def release(self, entry: QuarantineEntry, contact_id: int | None, rule: str,
                      operator: str, reason: str | None, recipient_hash: bytes) -> int:
        """Queue the held copy for delivery (as any allowed copy) and record who released it
        and why, with the decision in the audit log (client "operator NAME"); returns the
        delivery id. Refused unless the entry is still held."""
        now = time.time()
        async with self.db.transaction() as conn:
            await _decide(conn, entry, "released", operator, reason, now)
            await insert_record_async(conn, AuditRecord(
                now, entry.account, f"operator {operator}", recipient_hash, rule, "allow",
                entry.message_id).row())
            cur = await conn.execute(
                "INSERT INTO deliveries (message_id, recipient, state, attempts,"
                " next_attempt_at, created_at, updated_at, contact_id, rule)"
                " VALUES (?, ?, 'queued', 0, ?, ?, ?, ?, ?)",
                (entry.message_id, entry.recipient, now, now, now, contact_id, rule))
            assert cur.lastrowid is not None
            return cur.lastrowid

    async def reject(self, entry: QuarantineEntry, operator: str, reason: str | None,
                     recipient_hash: bytes) -> None:
        """Record the refusal, with the decision in the audit log (client "operator NAME",
        as a release), and free the raw message once nothing else needs it: no copy held,
        queued, deferred, or failed recently enough for `queue retry` (as the queue's own
        housekeeping keeps it, QueueStore.drop_finished_content)."""
        now = time.time()
        async with self.db.transaction() as conn:
            await _decide(conn, entry, "rejected", operator, reason, now)
            await insert_record_async(conn, AuditRecord(
                now, entry.account, f"operator {operator}", recipient_hash, entry.rule,
                "reject", entry.message_id).row())
            await conn.execute(
                "UPDATE messages SET content = NULL WHERE id = ? AND NOT EXISTS"
                " (SELECT 1 FROM quarantine q WHERE q.message_id = messages.id"
                "  AND q.state = 'held') AND NOT EXISTS (SELECT 1 FROM deliveries d"
                "  WHERE d.message_id = messages.id AND (d.state IN ('queued', 'deferred')"
                "   OR (d.state = 'failed' AND d.updated_at > ?)))",
                (entry.message_id, now - KEEP_FAILED_SECONDS))

    async def held_before(self, cutoff: float) -> builtins.list[QuarantineEntry]:
        rows = await self.db.fetchall(
            f"SELECT {_COLUMNS} FROM quarantine WHERE state = 'held' AND created_at < ?"  # noqa: S608
            " ORDER BY created_at", (cutoff,))
        return [QuarantineEntry(*tuple(row)) for row in rows]
