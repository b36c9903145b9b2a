"""The audit log: one append-only row per recipient decision (GDPR 5-2 accountability).

Rows name the recipient by its keyed hash only, so the log can be kept after erasure. Rows of
an accepted message are written in the same transaction as the message (store/queue.py);
decisions that led to no message (every recipient refused, or the client gave up before
DATA) are appended here, batched.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import aiosqlite

from gateway.store.db import Database

INSERT_SQL = ("INSERT INTO audit (at, account, client_ip, recipient_hash, rule, decision,"
              " message_id) VALUES (?, ?, ?, ?, ?, ?, ?)")


@dataclass(frozen=True)
class AuditRecord:
    at: float
    account: str | None
    client_ip: str
    recipient_hash: bytes
    rule: str
    decision: str
    message_id: str | None = None

    def row(self, message_id: str | None = None) -> tuple[object, ...]:
        return (self.at, self.account, self.client_ip, self.recipient_hash, self.rule,
                self.decision, message_id or self.message_id)

    def as_json(self) -> dict[str, object]:
        return {"at": self.at, "account": self.account, "client_ip": self.client_ip,
                "recipient_hash": self.recipient_hash.hex(), "rule": self.rule,
                "decision": self.decision, "message_id": self.message_id}


async def insert_records(conn: aiosqlite.Connection, records: Iterable[AuditRecord],
                         message_id: str | None = None) -> None:
    """Append `records` inside the caller's transaction."""
    await conn.executemany(INSERT_SQL, [r.row(message_id) for r in records])


class AuditLog:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def append(self, batches: Sequence[Sequence[AuditRecord]]) -> list[None]:
        """Append several sessions' records in one transaction (a GroupCommitter's write)."""
        async with self.db.transaction() as conn:
            for records in batches:
                await insert_records(conn, records)
        return [None] * len(batches)

    async def for_recipient(self, recipient_hash: bytes) -> list[AuditRecord]:
        rows = await self.db.fetchall(
            "SELECT at, account, client_ip, recipient_hash, rule, decision, message_id"
            " FROM audit WHERE recipient_hash = ? ORDER BY id", (recipient_hash,))
        return [AuditRecord(*tuple(row)) for row in rows]
