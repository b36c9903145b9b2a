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

What names an address the ledger does not hold has its own end, run with it: an address
never held (a copy R2 quarantined, a service message's, T1, a DSN's) or no longer held (its
copy was held or on its way when R4 purged it; a release or compose's R2 check then decided
it). Such records are kept `outside_days` (quarantine.retention_days) once done with, long
enough for the operator's review and for an access request to list them, then deleted as the
purge deletes a contact's: a decided quarantine row counted from when the copy was held (so
that nothing of a held copy outlives the quarantine's own period by more than a day), a sent
or failed copy and a delivered or given-up notification from their last attempt; and the raw
messages left without a copy. An answered request keeps its dates under the keyed hash, as
the purge leaves one. What is not done with (held, waiting, pending, open) stays.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiosqlite

from gateway.addresses import person_form
from gateway.model import PolicyKnobs
from gateway.security.keys import AddressHasher
from gateway.store.db import Database
from gateway.store.ledger import contact_id_sql, ledger_form

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
# an answered request keeps its dates (GDPR 12(3) accountability) but neither the address
# nor the operator's words about the person ("sent by post to Jane Doe, ..."), as an erasure
_NOTE_GONE = "(note deleted with the address at the end of its retention)"
_ANSWERED_REQUEST = ("UPDATE requests SET address = ?, note = CASE WHEN note IS NULL"
                     " OR note = '' THEN note ELSE ? END WHERE closed_at IS NOT NULL"
                     " AND subject_form(address) = ?")


def _ledger_form(stored: object) -> object:
    """ledger_form() in SQL: an address's ledger key (anything not text as it is)."""
    return ledger_form(stored) if isinstance(stored, str) else stored


def _outside(address: str) -> str:
    """SQL true when no ledger entry holds the address `address` (an SQL expression, its
    table named: contacts has an `address` too) as a RCPT reads it (ledger.contact_id_sql)."""
    return f"{contact_id_sql(f'ledger_form({address})')} IS NULL"


# the records done with `outside_days` ago (?1) of an address the ledger does not hold
# (S608: constant SQL, every value bound)
_OUTSIDE_QUARANTINE = (
    "DELETE FROM quarantine WHERE state != 'held' AND created_at < ?1"  # noqa: S608
    f" AND {_outside('quarantine.recipient')} RETURNING message_id")
# (a copy whose contact is still there is the ledger's, however its address was spelt)
_OUTSIDE_COPIES_WHERE = (
    "state IN ('sent', 'failed') AND updated_at < ?1"  # noqa: S608 - constant SQL
    " AND NOT EXISTS (SELECT 1 FROM contacts c WHERE c.id = deliveries.contact_id)"
    f" AND {_outside('deliveries.recipient')}")
_OUTSIDE_COPIES = (f"DELETE FROM deliveries WHERE {_OUTSIDE_COPIES_WHERE}"  # noqa: S608
                   " RETURNING message_id")
# their unsubscribe links still work (031_purged_copies; ledger._COPIES_SQL), by the hash
_KEPT_FOR_LINKS = (
    "INSERT OR IGNORE INTO purged_copies (delivery_id, address_hash, purged_at)"  # noqa: S608
    f" SELECT id, address_digest(recipient), ?2 FROM deliveries WHERE {_OUTSIDE_COPIES_WHERE}"
    " AND coalesce(contact_id, 0) = 0")
_OLD_LINKS = "DELETE FROM purged_copies WHERE purged_at < ?"
_OUTSIDE_NOTIFICATIONS = (
    "DELETE FROM notifications WHERE state != 'pending' AND updated_at < ?1"  # noqa: S608
    f" AND {_outside('json_extract(notifications.body, ?2)')}")
_OUTSIDE_REQUESTS = (
    "UPDATE requests SET address = request_pseudonym(address),"  # noqa: S608
    " note = CASE WHEN note IS NULL OR note = '' THEN note ELSE ?2 END"
    " WHERE closed_at IS NOT NULL AND closed_at < ?1"
    " AND address NOT LIKE 'erased:%' AND address NOT LIKE 'purged:%'"
    f" AND {_outside('requests.address')}")
_ORPHAN_MESSAGE = ("DELETE FROM messages WHERE id = ?"
                   " AND NOT EXISTS (SELECT 1 FROM deliveries WHERE message_id = ?)"
                   " AND NOT EXISTS (SELECT 1 FROM quarantine WHERE message_id = ?)")


@dataclass(frozen=True)
class Purge:
    """What a retention run deleted: the expired ledger entries' addresses, and how many
    rows of each kind named them besides; and (outside_*) how many records of addresses the
    ledger does not hold ended with their period."""

    addresses: list[str]
    removed: dict[str, int] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """Every kind, 0 where none (`retention run --json`'s "removed")."""
        return {key: self.removed.get(key, 0) for key, _, _ in _PURGED_LABELS + _OUTSIDE_LABELS}

    def summary(self) -> str:
        """"3 sent or failed copies, 1 decided quarantine row, ...; of addresses outside
        the ledger, past their period: 1 copy, ..." (what named them)."""
        def told(labels: tuple[tuple[str, str, str], ...]) -> str:
            return ", ".join(f"{self.removed.get(key, 0)} "
                             f"{one if self.removed.get(key) == 1 else many}"
                             for key, one, many in labels)
        return f"{told(_PURGED_LABELS)}; of addresses outside the ledger, past their period: " \
               f"{told(_OUTSIDE_LABELS)}"


# Purge.removed's keys, with their words: (key, one, many)
_PURGED_LABELS = (
    ("copies", "sent or failed copy", "sent or failed copies"),
    ("waiting", "waiting copy withdrawn", "waiting copies withdrawn"),
    ("quarantine", "decided quarantine row", "decided quarantine rows"),
    ("notifications", "delivered notification", "delivered notifications"),
    ("messages", "raw message", "raw messages"),
    ("requests", "answered request named by hash", "answered requests named by hash"))
_OUTSIDE_LABELS = (
    ("outside_copies", "copy", "copies"),
    ("outside_quarantine", "quarantine row", "quarantine rows"),
    ("outside_notifications", "notification", "notifications"),
    ("outside_requests", "request named by hash", "requests named by hash"))


class Retention:
    """R4's purge of the ledger, and the end of what names an address outside it, after
    `outside_days` (quarantine.retention_days); `hasher` names an answered request's
    address by its keyed hash."""

    def __init__(self, db: Database, knobs: PolicyKnobs, hasher: AddressHasher,
                 outside_days: float) -> None:
        self.db = db
        self.knobs = knobs
        self.hasher = hasher
        self.outside_days = outside_days

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
        address; then what names an address outside the ledger and is past its period (see
        the module's text); in one transaction."""
        when = now or time.time()
        async with self.db.transaction() as conn:
            async with conn.execute(_EXPIRED, self._params(when)) as cur:
                rows = list(await cur.fetchall())
            removed: dict[str, int] = {}
            if rows:
                removed = await self._purge_contacts(conn, rows, when)
            # after the purge: its contacts' copies held or on their way are outside now
            outside = await self._forget_outside(conn, when - self.outside_days * DAY)
            removed["messages"] = removed.get("messages", 0) + outside.pop("messages")
            removed.update(outside)
        if not rows and not any(removed.values()):
            return Purge([], removed)
        # the WAL kept the old pages, the addresses in clear in them, until a checkpoint
        if not await self.db.empty_wal(tries=10):
            await self.db.empty_wal_later()
            log.warning("retention: a reader kept the WAL from being emptied; a running "
                        "serve empties it within minutes (the purged rows' old pages are "
                        "in it until then)")
        return Purge([row[1] for row in rows], removed)

    async def _purge_contacts(self, conn: aiosqlite.Connection, rows: list[Any],
                              when: float) -> dict[str, int]:
        """R4: the expired contacts `rows` (id, address, hash) and what names them."""
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
            _ANSWERED_REQUEST,
            [(f"purged:{bytes(row[2]).hex()[:16]}", _NOTE_GONE, person_form(row[1]))
             for row in rows])
        removed["requests"] = max(0, cur.rowcount)
        return removed

    async def _forget_outside(self, conn: aiosqlite.Connection,
                              cutoff: float) -> dict[str, int]:
        """Delete what names an address the ledger does not hold and was done with before
        `cutoff` (zeroed on disk); name its answered requests by hash. How many of each."""
        hasher = self.hasher
        await conn.create_function("ledger_form", 1, _ledger_form, deterministic=True)
        # the marker an access request finds them by (SubjectStore.gather), as R4 leaves one
        await conn.create_function(
            "request_pseudonym", 1,
            lambda address: f"purged:{hasher(ledger_form(str(address))).hex()[:16]}",
            deterministic=True)
        await conn.create_function(
            "address_digest", 1, lambda address: hasher(ledger_form(str(address))),
            deterministic=True)
        now = cutoff + self.outside_days * DAY
        await conn.execute(_KEPT_FOR_LINKS, (cutoff, now))
        await conn.execute(_OLD_LINKS, (now - self.knobs.max_retention_days * DAY,))
        removed, touched = {}, set()
        async with _zeroed(conn):
            for name, sql in (("outside_copies", _OUTSIDE_COPIES),
                              ("outside_quarantine", _OUTSIDE_QUARANTINE)):
                async with conn.execute(sql, (cutoff,)) as cur:
                    messages = [str(row[0]) for row in await cur.fetchall()]
                removed[name] = len(messages)
                touched.update(messages)
            cur = await conn.execute(_OUTSIDE_NOTIFICATIONS, (cutoff, "$.email"))
            removed["outside_notifications"] = cur.rowcount
            cur = await conn.execute(_OUTSIDE_REQUESTS, (cutoff, _NOTE_GONE))
            removed["outside_requests"] = cur.rowcount
            removed["messages"] = await _delete_orphans(conn, touched)
        return removed


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
        removed["messages"] = await _delete_orphans(conn, touched)
    return removed


async def _delete_orphans(conn: aiosqlite.Connection, message_ids: set[str]) -> int:
    """Delete the raw messages of `message_ids` that no copy needs any more; how many."""
    deleted = 0
    for message_id in sorted(message_ids):
        cur = await conn.execute(_ORPHAN_MESSAGE, (message_id, message_id, message_id))
        deleted += cur.rowcount
    return deleted


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
