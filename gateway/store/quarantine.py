"""The quarantine: recipient copies held for a human (R9, R2 when so configured, M2, M3).

Entries are written with their message (store/queue.py), in the same transaction as the 250.
The raw message stays in `messages` while an entry holds it.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.store.db import Database

_COLUMNS = ("id, message_id, created_at, account, client_ip, mail_from, recipient, subject,"
            " rule, reason, basis, state")


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

    def as_json(self) -> dict[str, object]:
        return {"id": self.id, "created_at": self.created_at, "account": self.account,
                "mail_from": self.mail_from, "recipient": self.recipient,
                "subject": self.subject, "rule": self.rule, "reason": self.reason,
                "basis": self.basis, "state": self.state, "message_id": self.message_id,
                "client_ip": self.client_ip}


class QuarantineStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def list(self, account: str | None = None, rule: str | None = None,
                   state: str = "held", limit: int = 1000) -> list[QuarantineEntry]:
        """Entries in `state`, oldest first, optionally for one account or rule."""
        rows = await self.db.fetchall(
            f"SELECT {_COLUMNS} FROM quarantine WHERE state = ?"  # noqa: S608 - constant columns
            " AND (? IS NULL OR account = ?) AND (? IS NULL OR rule = ?)"
            " ORDER BY created_at, id LIMIT ?",
            (state, account, account, rule, rule, limit))
        return [QuarantineEntry(*tuple(row)) for row in rows]
