"""SMTP accounts: who may send, as which From domains, for which campaign topics.

Passwords arrive here already hashed (argon2id, gateway.security.passwords); this module only
stores and counts. Lockout state (failed_logins, locked_until) lives on the row so that every
gateway process sharing the store sees the same lock.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.addresses import ascii_domain
from gateway.errors import NotFound, Refused
from gateway.store.db import Database
from gateway.urls import shown_url

CATEGORIES = ("marketing", "transactional")

# credential_stamp: the last characters of the password's argon2 hash (of its digest, which
# a new salt changes every time): whether the password changed since a session logged in,
# without the hash itself leaving this module
_COLUMNS = ("id, name, from_domains, category, topics, product_categories, notify_url,"
            " failed_logins, locked_until, created_at, updated_at,"
            " substr(password_hash, -8) AS credential_stamp")


@dataclass(frozen=True)
class Account:
    """An SMTP account as the rest of the gateway sees it (never with its password hash)."""

    id: int
    name: str
    from_domains: tuple[str, ...]
    category: str = "marketing"
    topics: tuple[str, ...] = ()
    product_categories: tuple[str, ...] = ()
    notify_url: str | None = None
    failed_logins: int = 0
    locked_until: float | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    credential_stamp: str = field(default="", repr=False)
    _domains: frozenset[str] = field(default=frozenset(), repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_domains", frozenset(d.lower() for d in self.from_domains))

    def may_send_from(self, domain: str) -> bool:
        """M1: the envelope sender and From header must use one of the account's domains.

        Exact match only: a sub-domain is another domain (it may have its own DKIM and DMARC).
        """
        name = domain.lower().rstrip(".")
        if not name.isascii():  # SMTPUTF8 senders: compare the IDNA (A-label) form
            try:
                name = ascii_domain(name)
            except UnicodeError:
                return False
        return name in self._domains

    def locked(self, now: float | None = None) -> bool:
        return self.locked_until is not None and self.locked_until > (now or time.time())

    def as_json(self) -> dict[str, object]:
        return {
            "name": self.name, "from_domains": list(self.from_domains),
            "category": self.category, "topics": list(self.topics),
            "product_categories": list(self.product_categories),
            "notify_url": shown_url(self.notify_url) if self.notify_url else self.notify_url,
            "failed_logins": self.failed_logins, "locked_until": self.locked_until,
            "locked": self.locked(), "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


def _account(row: sqlite3.Row) -> Account:
    return Account(
        id=row["id"], name=row["name"], from_domains=tuple(json.loads(row["from_domains"])),
        category=row["category"], topics=tuple(json.loads(row["topics"])),
        product_categories=tuple(json.loads(row["product_categories"])),
        notify_url=row["notify_url"], failed_logins=row["failed_logins"],
        locked_until=row["locked_until"], created_at=row["created_at"],
        updated_at=row["updated_at"], credential_stamp=row["credential_stamp"] or "")


class AccountStore:
    """All account SQL."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, name: str, password_hash: str, from_domains: Sequence[str], *,
                  category: str = "marketing", topics: Sequence[str] = (),
                  product_categories: Sequence[str] = (),
                  notify_url: str | None = None) -> Account:
        now = time.time()
        async with self.db.transaction() as conn:
            async with conn.execute("SELECT 1 FROM accounts WHERE name = ?", (name,)) as cur:
                if await cur.fetchone():
                    raise Refused(f"account {name!r} already exists")
            await conn.execute(
                "INSERT INTO accounts (name, password_hash, from_domains, category, topics,"
                " product_categories, notify_url, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (name, password_hash, json.dumps(list(from_domains)), category,
                 json.dumps(list(topics)), json.dumps(list(product_categories)), notify_url,
                 now, now))
        return await self.require(name)

    async def get(self, name: str) -> Account | None:
        row = await self.db.fetchone(
            f"SELECT {_COLUMNS} FROM accounts WHERE name = ?", (name,))  # noqa: S608 - constant columns
        return _account(row) if row else None

    async def require(self, name: str) -> Account:
        account = await self.get(name)
        if account is None:
            raise NotFound(f"no account named {name!r}")
        return account

    async def get_with_hash(self, name: str) -> tuple[Account, str] | None:
        """The account and its password hash, for AUTH only."""
        row = await self.db.fetchone(
            f"SELECT {_COLUMNS}, password_hash FROM accounts WHERE name = ?",  # noqa: S608 - constant columns
            (name,))
        return (_account(row), row["password_hash"]) if row else None

    async def list(self) -> list[Account]:
        rows = await self.db.fetchall(
            f"SELECT {_COLUMNS} FROM accounts ORDER BY name")  # noqa: S608 - constant columns
        return [_account(r) for r in rows]

    async def update(self, name: str, *, from_domains: Sequence[str] | None = None,
                     category: str | None = None, topics: Sequence[str] | None = None,
                     product_categories: Sequence[str] | None = None,
                     notify_url: str | None = None) -> Account:
        """Change what is given; None leaves a field as it is ("" clears notify_url)."""
        current = await self.require(name)
        async with self.db.transaction() as conn:
            await conn.execute(
                "UPDATE accounts SET from_domains = ?, category = ?, topics = ?,"
                " product_categories = ?, notify_url = ?, updated_at = ? WHERE name = ?",
                (json.dumps(list(from_domains if from_domains is not None
                                 else current.from_domains)),
                 category or current.category,
                 json.dumps(list(topics if topics is not None else current.topics)),
                 json.dumps(list(product_categories if product_categories is not None
                                 else current.product_categories)),
                 (notify_url or None) if notify_url is not None else current.notify_url,
                 time.time(), name))
            if notify_url is not None and (notify_url or None) != current.notify_url:
                # an operator's new URL (a new token or password after a 401) is tried at
                # once by the queued notifications, not after each one's backoff
                await conn.execute(
                    "UPDATE notifications SET next_attempt_at = ? WHERE account = ?"
                    " AND state = 'pending'", (time.time(), name))
        return await self.require(name)

    async def set_password(self, name: str, password_hash: str) -> None:
        """A new password also lifts a lock: the operator has just chosen it. The clients
        the account logged in from are forgotten (a password changed after a leak: whoever
        used the old one would get in through the next lock)."""
        await self._update_one(
            name, "UPDATE accounts SET password_hash = ?, failed_logins = 0, locked_until = NULL,"
                  " updated_at = ? WHERE name = ?", (password_hash, time.time(), name))
        async with self.db.transaction() as conn:
            await conn.execute("DELETE FROM account_clients WHERE account_id ="
                               " (SELECT id FROM accounts WHERE name = ?)", (name,))

    async def unlock(self, name: str) -> None:
        await self._update_one(
            name, "UPDATE accounts SET failed_logins = 0, locked_until = NULL, updated_at = ?"
                  " WHERE name = ?", (time.time(), name))

    async def remove(self, name: str) -> None:
        await self._update_one(name, "DELETE FROM accounts WHERE name = ?", (name,))
        # its queued notifications are given up at the next scan, not after their backoff
        async with self.db.transaction() as conn:
            await conn.execute("UPDATE notifications SET next_attempt_at = ? WHERE account = ?"
                               " AND state = 'pending'", (time.time(), name))

    async def mail_in_hand(self, name: str) -> tuple[int, int]:
        """(copies queued or deferred, copies held in the quarantine) of account `name`:
        what a removal would leave without the account their delivery needs."""
        row = await self.db.fetchone(
            "SELECT (SELECT count(*) FROM deliveries d JOIN messages m ON m.id = d.message_id"
            "        WHERE m.account = ? AND d.state IN ('queued', 'deferred')),"
            " (SELECT count(*) FROM quarantine WHERE account = ? AND state = 'held')",
            (name, name))
        return (int(row[0]), int(row[1])) if row else (0, 0)

    async def record_failure(self, name: str, max_failures: int,
                             lockout_seconds: float) -> Account | None:
        """Count a failed AUTH; lock the account when it reaches `max_failures` in a row."""
        now = time.time()
        async with self.db.transaction() as conn:
            # a lock that has run out starts the count afresh
            await conn.execute(
                "UPDATE accounts SET failed_logins = 0, locked_until = NULL"
                " WHERE name = ? AND locked_until <= ?", (name, now))
            await conn.execute(
                "UPDATE accounts SET failed_logins = failed_logins + 1,"
                " locked_until = CASE WHEN failed_logins + 1 >= ? THEN ? ELSE locked_until END,"
                " updated_at = ? WHERE name = ?",
                (max_failures, now + lockout_seconds, now, name))
        return await self.get(name)

    async def name_failures(self, digest: bytes) -> tuple[int, float | None]:
        """(failures in a row, locked until) of a login name that is no account, by its
        keyed digest (AddressHasher.login_name)."""
        row = await self.db.fetchone(
            "SELECT failed_logins, locked_until FROM auth_name_failures WHERE name_digest = ?",
            (digest,))
        return (row[0], row[1]) if row else (0, None)

    async def record_name_failure(self, digest: bytes, max_failures: int,
                                  lockout_seconds: float) -> None:
        """Count a failed AUTH for a login name that is no account, as record_failure counts
        an account's: in a row, a lock at `max_failures`, a fresh count once it ran out."""
        now = time.time()
        until = now + lockout_seconds
        async with self.db.transaction() as conn:
            await conn.execute(
                "INSERT INTO auth_name_failures (name_digest, failed_logins, locked_until,"
                " updated_at) VALUES (?1, 1, CASE WHEN 1 >= ?2 THEN ?3 END, ?4)"
                " ON CONFLICT (name_digest) DO UPDATE SET"
                " failed_logins = CASE WHEN locked_until <= ?4 THEN 1 ELSE failed_logins + 1 END,"
                " locked_until = CASE WHEN locked_until <= ?4 THEN"
                " (CASE WHEN 1 >= ?2 THEN ?3 END)"
                " WHEN failed_logins + 1 >= ?2 THEN ?3 ELSE locked_until END, updated_at = ?4",
                (digest, max_failures, until, now))

    async def forget_name_failures(self, before: float) -> int:
        """Delete the counts of unknown login names last failed before `before` and not
        locked now (daily): a tool's mistyped login was kept for good. How many."""
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                "DELETE FROM auth_name_failures WHERE updated_at < ?"
                " AND (locked_until IS NULL OR locked_until <= ?)", (before, time.time()))
            return max(0, cur.rowcount)

    async def record_success(self, name: str) -> None:
        """A successful AUTH resets the count (only written when there was something to
        reset), but not a lock still running: a known client gets in through it (see
        known_client), and each of its logins would have given a guesser elsewhere
        auth_max_failures more tries."""
        now = time.time()
        async with self.db.transaction() as conn:
            await conn.execute(
                "UPDATE accounts SET failed_logins = 0, locked_until = NULL, updated_at = ?"
                " WHERE name = ? AND (failed_logins > 0 OR locked_until IS NOT NULL)"
                " AND (locked_until IS NULL OR locked_until <= ?)", (now, name, now))

    async def remember_client(self, account_id: int, client: str, when: float) -> None:
        """The account logged in from `client` (gateway.peers.client_address) at `when`."""
        async with self.db.transaction() as conn:
            await conn.execute(
                "INSERT INTO account_clients (account_id, client, last_ok_at) VALUES (?, ?, ?)"
                " ON CONFLICT (account_id, client) DO UPDATE SET last_ok_at ="
                " max(last_ok_at, excluded.last_ok_at)", (account_id, client, when))

    async def known_client(self, account_id: int, client: str, since: float) -> bool:
        """Whether the account logged in from `client` at `since` or later."""
        row = await self.db.fetchone(
            "SELECT 1 FROM account_clients WHERE account_id = ? AND client = ?"
            " AND last_ok_at >= ?", (account_id, client, since))
        return row is not None

    async def _update_one(self, name: str, sql: str, params: tuple[object, ...]) -> None:
        async with self.db.transaction() as conn:
            cur = await conn.execute(sql, params)
            if cur.rowcount == 0:
                raise NotFound(f"no account named {name!r}")

