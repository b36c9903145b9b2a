"""R4's purge: ledger entries whose retention period is over (gateway retention run).

The deadline is policy.rules.retention_deadline written in SQL, so that a daily run over a
million contacts is one indexed-free scan in SQLite, not a million Python calls; a test keeps
the two in step. Suppression hashes and audit rows (keyed hashes only) are kept: an objection
outlives the data.

The purge takes the person's address out of the sending records too (KASPR: no data kept past
its time): their finished copies (sent, or failed), their decided quarantine rows, the
objection notifications about them already delivered, and the raw messages left with no copy.
Their decisions stay accountable in the audit log, under the keyed hash. Their prospecting
copies still waiting (queued or deferred; not a service message's, T1, nor a DSN) are
withdrawn, as an erasure withdraws them: past its time the
data may not be used, and no DSN is sent, which would name the address again (a copy a
process is sending at that moment goes, or is refused by compose.Composer's R2 check). What
else is in flight stays:
a copy held for review (a release decides again, and finds no ledger entry), a notification
not yet delivered.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiosqlite

from gateway.addresses import person_form
from gateway.model import PolicyKnobs
from gateway.store.db import Database

log = logging.getLogger("gateway.retention")
DAY = 86400.0
# R4 without the consent: the later of collection and the person's last interaction...
_BASE_EXPIRED = ("(CASE WHEN last_interaction_at IS NOT NULL AND last_interaction_at >"
                 " collected_at THEN last_interaction_at + ?1 ELSE collected_at + ?2 END) < ?3")
# ...unless a consent the person gave since renews it (rules.consent_given_at): the method
# is read (a Python function, per row) only for rows expired without it whose consent would
# renew them, not for every granted contact (15.8 s for 1M contacts of distinct methods)
_RENEWED = ("consent IS 'granted' AND consent_at > collected_at AND consent_at + ?1 >= ?3"
            " AND NOT invalid_consent_method(consent_method)")
_EXPIRED = (f"SELECT id, address, address_hash FROM contacts WHERE {_BASE_EXPIRED}"  # noqa: S608
            f" AND NOT coalesce(({_RENEWED}), 0) ORDER BY id")  # (NULL dates: not renewed)
# the person's last own action: an interaction, or a consent they gave
_ACTED = ("max(coalesce(last_interaction_at, 0), CASE WHEN consent = 'granted'"
          " AND consent_at IS NOT NULL AND NOT invalid_consent_method(consent_method)"
          " THEN consent_at ELSE 0 END)")
# the clock's start as R4 read it: the later of collection and the person's last own action
_TOMBSTONE = ("INSERT OR REPLACE INTO retention_purges"  # noqa: S608 - constants
              " (address_hash, clock_start, purged_at)"
              f" SELECT address_hash, max(collected_at, {_ACTED}), ? FROM contacts WHERE id = ?")


# the rows of the purged addresses (a JSON array of their person forms) that are done with
_FINISHED_COPIES = ("DELETE FROM deliveries WHERE state IN ('sent', 'failed')"
                    " AND subject_form(recipient) IN (SELECT value FROM json_each(?))"
                    " RETURNING message_id")
# (not a service message, T1, which reads no ledger; nor a DSN, which has no rule)
_WAITING_COPIES = _FINISHED_COPIES.replace(
    "('sent', 'failed')", "('queued', 'deferred') AND rule IS NOT NULL AND rule != 'T1'")
_DECIDED_HELD = ("DELETE FROM quarantine WHERE state != 'held'"
                 " AND subject_form(recipient) IN (SELECT value FROM json_each(?))"
                 " RETURNING message_id")
_DELIVERED_NOTIFICATIONS = (
    "DELETE FROM notifications WHERE state != 'pending'"
    " AND subject_form(json_extract(body, '$.email')) IN (SELECT value FROM json_each(?))")
_ORPHAN_MESSAGE = ("DELETE FROM messages WHERE id = ?"
                   " AND NOT EXISTS (SELECT 1 FROM deliveries WHERE message_id = ?)"
                   " AND NOT EXISTS (SELECT 1 FROM quarantine WHERE message_id = ?)")


@dataclass(frozen=True)
class Purge:
    """What a retention run deleted: the ledger entries' addresses, and how many rows of
    each kind named them besides."""

    addresses: list[str]
    removed: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        """"3 sent or failed copies, 1 decided quarantine row, ..." (what named them)."""
        labels = (("copies", "sent or failed copy", "sent or failed copies"),
                  ("waiting", "waiting copy withdrawn", "waiting copies withdrawn"),
                  ("quarantine", "decided quarantine row", "decided quarantine rows"),
                  ("notifications", "delivered notification", "delivered notifications"),
                  ("messages", "raw message", "raw messages"),
                  ("requests", "answered request named by hash", "answered requests named by hash"))
        return ", ".join(f"{self.removed.get(key, 0)} {one if self.removed.get(key) == 1 else many}"
                         for key, one, many in labels)


class Retention:
    def __init__(self, db: Database, knobs: PolicyKnobs) -> None:
        self.db = db
        self.knobs = knobs

    def _params(self, now: float) -> tuple[float, float, float]:
        prospect = self.knobs.prospect_retention_days * DAY
        capped = min(self.knobs.prospect_retention_days, self.knobs.max_retention_days) * DAY
        return prospect, capped, now

    async def expired(self, now: float | None = None) -> list[tuple[int, str]]:
        """(contact id, address) of every ledger entry past its retention deadline."""
        rows = await self.db.fetchall(_EXPIRED, self._params(now or time.time()))
        return [(row[0], row[1]) for row in rows]

    async def purge(self, now: float | None = None) -> Purge:
        """Delete every expired entry with its sources and events, keeping its clock's start
        under its keyed hash (013_retention_purges), and the finished records naming its
        address (see the module's text), in one transaction."""
        when = now or time.time()
        async with self.db.transaction() as conn:
            async with conn.execute(_EXPIRED, self._params(when)) as cur:
                rows = list(await cur.fetchall())
            if not rows:
                return Purge([])
            ids = [(row[0],) for row in rows]
            await conn.executemany(_TOMBSTONE, [(when, row_id) for row_id, in ids])
            # its copies' unsubscribe links name the contact id: they must still work
            await conn.executemany(
                "INSERT OR IGNORE INTO purged_contacts (contact_id, address_hash, language)"
                " SELECT id, address_hash, language FROM contacts WHERE id = ?", ids)
            async with _zeroed(conn):  # the contacts' rows too (they were left in clear)
                await conn.executemany("DELETE FROM contacts WHERE id = ?", ids)
                removed = await _purge_records(conn, sorted({person_form(row[1])
                                                             for row in rows}))
            # the requests the person made and that are answered keep their dates (GDPR 12(3)
            # accountability) but not the address, as an erasure leaves them; open ones stay
            # as they are: they must still be answered ("we hold nothing now")
            cur = await conn.executemany(
                "UPDATE requests SET address = ? WHERE closed_at IS NOT NULL"
                " AND subject_form(address) = ?",
                [(f"purged:{bytes(row[2]).hex()[:16]}", person_form(row[1])) for row in rows])
            removed["requests"] = max(0, cur.rowcount)
        # the WAL kept the old pages, the addresses in clear in them, until a checkpoint
        if not await self.db.empty_wal(tries=10):
            await self.db.empty_wal_later()
            log.warning("retention: a reader kept the WAL from being emptied; a running "
                        "serve empties it within minutes (the purged rows' old pages are "
                        "in it until then)")
        return Purge([row[1] for row in rows], removed)


async def _purge_records(conn: aiosqlite.Connection, folded: list[str]) -> dict[str, int]:
    """Delete the finished rows naming the addresses (in person form, as erasure matches
    them: store/subject.py), zeroed on disk; how many of each."""
    forms = json.dumps(folded)
    async with _zeroed(conn):
        removed, touched = {}, set()
        for name, sql in (("copies", _FINISHED_COPIES), ("waiting", _WAITING_COPIES),
                          ("quarantine", _DECIDED_HELD)):
            async with conn.execute(sql, (forms,)) as cur:
                messages = [str(row[0]) for row in await cur.fetchall()]
            removed[name] = len(messages)
            touched.update(messages)
        cur = await conn.execute(_DELIVERED_NOTIFICATIONS, (forms,))
        removed["notifications"] = cur.rowcount
        messages_removed = 0
        for message_id in sorted(touched):
            cur = await conn.execute(_ORPHAN_MESSAGE, (message_id, message_id, message_id))
            messages_removed += cur.rowcount
        removed["messages"] = messages_removed
    return removed


@asynccontextmanager
async def _zeroed(conn: aiosqlite.Connection) -> AsyncIterator[None]:
    """secure_delete on meanwhile: what is deleted is overwritten with zeros, not left in
    free space (SQLite builds differ in their default)."""
    async with conn.execute("PRAGMA secure_delete") as cur:
        row = await cur.fetchone()
    secure = row[0] if row else 0
    await conn.execute("PRAGMA secure_delete = ON")
    try:
        yield
    finally:
        await conn.execute(f"PRAGMA secure_delete = {int(secure)}")


async def due(db: Database, task: str, every: float, now: float | None = None,
              first_run: bool = False) -> bool:
    """True when `task` last ran `every` seconds ago or more; the caller records the run with
    `ran` once it has succeeded (a run recorded first and then interrupted, by a crash or an
    error, was skipped for a whole period). A task never run before is recorded as run now,
    and is due now only with `first_run`."""
    now = now or time.time()
    row = await db.fetchone("SELECT ran_at FROM maintenance WHERE task = ?", (task,))
    if row is not None:
        return bool(now - row[0] >= every)
    if first_run:
        return True
    await db.write_one("INSERT OR IGNORE INTO maintenance (task, ran_at) VALUES (?, ?)",
                       (task, now))
    return False


async def ran(db: Database, task: str, now: float | None = None) -> None:
    """Record that `task` has just run (see `due`)."""
    await db.write_one("INSERT OR REPLACE INTO maintenance (task, ran_at) VALUES (?, ?)",
                       (task, now or time.time()))
