"""R4's purge: ledger entries whose retention period is over (gateway retention run).

The deadline is policy.rules.retention_deadline written in SQL, so that a daily run over a
million contacts is one indexed-free scan in SQLite, not a million Python calls; a test keeps
the two in step. Suppression hashes and audit rows (keyed hashes only) are kept: an objection
outlives the data.
"""

from __future__ import annotations

import time

from gateway.model import PolicyKnobs
from gateway.store.db import Database

DAY = 86400.0
_EXPIRED = ("SELECT id, address FROM contacts WHERE"
            " (CASE WHEN last_interaction_at IS NOT NULL AND last_interaction_at > collected_at"
            "  THEN last_interaction_at + ? ELSE collected_at + ? END) < ?"
            " ORDER BY id")
# the clock's start as R4 read it: the later of collection and the person's last interaction
_TOMBSTONE = ("INSERT OR REPLACE INTO retention_purges (address_hash, clock_start, purged_at)"
              " SELECT address_hash, max(collected_at, coalesce(last_interaction_at,"
              " collected_at)), ? FROM contacts WHERE id = ?")


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

    async def purge(self, now: float | None = None) -> list[str]:
        """Delete every expired entry with its sources and events, keeping its clock's start
        under its keyed hash (013_retention_purges); returns the addresses."""
        when = now or time.time()
        async with self.db.transaction() as conn:
            async with conn.execute(_EXPIRED, self._params(when)) as cur:
                rows = list(await cur.fetchall())
            ids = [(row[0],) for row in rows]
            await conn.executemany(_TOMBSTONE, [(when, row_id) for row_id, in ids])
            await conn.executemany("DELETE FROM contacts WHERE id = ?", ids)
        return [row[1] for row in rows]


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
