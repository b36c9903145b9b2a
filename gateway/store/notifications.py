"""The outbox of objection notifications to the accounts' notify_url (see 005_notifications).

Rows are written in the same transaction as the suppression they announce (ledger.py), so an
objection is never stored without its notifications, nor notified without being stored.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from gateway.store.db import Database

SENDER_LEASE = "notification-sender"  # a row in `leases` (033_leases)

# Over the common table k(n, body) (db.with_rows), in the caller's transaction: a
# notification for each objection n and each account with a notify_url. The row keeps the
# URL as shown (no password, no query values): it goes to the account's notify_url as it is
# when sent (`due`), so a secret in it is kept in one place only, and rotated there.
NOTIFY_SQL = (
    "INSERT INTO notifications (account, url, body, next_attempt_at, created_at, updated_at)"
    " SELECT a.name, shown_url(a.notify_url), k.body, ?, ?, ? FROM k, accounts a"
    " WHERE a.notify_url IS NOT NULL AND a.notify_url != '' ORDER BY k.n, a.name")


def notification_body(address: str, channel: str, at: float) -> str:
    """The JSON document POSTed to the accounts' notify_url for one objection. Its `id` is
    the objection's (the same for every account): a receiver that took a POST whose answer
    was lost knows the retry for a repeat, as this gateway's own /webhooks/opt-out does."""
    return json.dumps({"id": f"objection-{secrets.token_hex(12)}", "event": "objection",
                       "email": address, "channel": channel, "at": at},
                      separators=(",", ":"))


@dataclass(frozen=True)
class Notification:
    id: int
    account: str
    url: str
    body: str
    attempts: int
    created_at: float


class NotificationStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def due(self, limit: int = 200, per_account: int = 20,
                  skip: Collection[str] = (),
                  held: Mapping[str, str] | None = None) -> list[Notification]:
        """The pending notifications due now, at most `per_account` of each account (oldest
        first), none of the accounts in `skip` nor of an account in `held` whose notify_url
        is still the one held there, each with its account's notify_url as it is now (an
        operator's correction applies to those already queued, at once; "" when the account
        has none any more). The cap per account keeps the backlog of one whose endpoint is
        down from filling every slot: the others' go out meanwhile."""
        rows = await self.db.fetchall(
            "SELECT id, account, url, body, attempts, created_at FROM ("
            " SELECT n.id, n.account, coalesce(a.notify_url, '') AS url, n.body, n.attempts,"
            " n.created_at, row_number() OVER (PARTITION BY n.account ORDER BY n.id) AS k"
            " FROM notifications n LEFT JOIN accounts a ON a.name = n.account"
            " WHERE n.state = 'pending'"
            " AND n.account NOT IN (SELECT value FROM json_each(?))"
            " AND n.account NOT IN (SELECT h.key FROM json_each(?) h"
            "  WHERE h.value IS coalesce(a.notify_url, ''))"
            # a new notify_url makes the account's pending rows due (AccountStore.update)
            " AND n.next_attempt_at <= ?)"
            " WHERE k <= ? ORDER BY id LIMIT ?",
            (json.dumps(sorted(skip)), json.dumps(held or {}), time.time(), per_account,
             limit))
        return [Notification(*tuple(row)) for row in rows]

    async def sent(self, notification_id: int, url: str) -> None:
        """Taken by the endpoint at `url` (kept as shown)."""
        async with self.db.transaction() as conn:
            await conn.execute(
                "UPDATE notifications SET state = 'sent', attempts = attempts + 1,"
                " last_error = NULL, url = shown_url(?), updated_at = ? WHERE id = ?",
                (url, time.time(), notification_id))

    async def retry_later(self, notification_id: int, error: str, at: float,
                          give_up: bool, url: str = "") -> None:
        """Failed at `url` (kept as shown: a new notify_url makes it due at once, `due`)."""
        async with self.db.transaction() as conn:
            await conn.execute(
                "UPDATE notifications SET state = ?, attempts = attempts + 1, last_error = ?,"
                " next_attempt_at = ?, url = CASE WHEN ? = '' THEN url ELSE shown_url(?) END,"
                " updated_at = ? WHERE id = ?",
                ("failed" if give_up else "pending", error[:500], at, url, url, time.time(),
                 notification_id))

    async def take_lease(self, holder: str, seconds: float) -> bool:
        """Whether `holder` runs the sender for the next `seconds`: the lease is its already
        (renewed), or nobody's, or its holder let it lapse (a process gone, frozen, or cut
        from the store)."""
        now = time.time()

        def write(conn: sqlite3.Connection) -> bool:
            return conn.execute(
                "INSERT INTO leases (name, holder, until) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,"
                " until = excluded.until WHERE leases.holder = excluded.holder"
                " OR leases.until < ? RETURNING holder",
                (SENDER_LEASE, holder, now + seconds, now)).fetchone() is not None

        return await self.db.write(write)

    async def release_lease(self, holder: str) -> None:
        """A clean stop: another process may send at once, not when the lease ends."""
        await self.db.write_one("DELETE FROM leases WHERE name = ? AND holder = ?",
                                (SENDER_LEASE, holder))

    async def list(self, limit: int = 100) -> list[tuple[object, ...]]:
        rows = await self.db.fetchall(
            "SELECT id, account, url, state, attempts, last_error FROM notifications"
            " ORDER BY id DESC LIMIT ?", (limit,))
        return [tuple(row) for row in rows]
