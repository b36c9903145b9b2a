"""Bulk upsert of contact rows: chunks of rows in one transaction each, each row all or nothing.

Synchronous on purpose: an import is a batch job (`gateway contacts import`) and a plain
sqlite3 connection with executemany is what reaches 50,000+ rows/s. Each chunk is short, so a
running gateway's commits wait milliseconds, not the whole import.

The merge rules (KASPR: enrichment never renews retention):
- a fact given in the row replaces the stored one; an empty cell keeps it;
- collected_at only ever moves earlier, last_interaction_at and informed_at only later;
- consent=withdrawn adds the address to the suppression list; a later consent=granted in a
  file does not lift it (only `gateway suppress remove` does, deliberately);
- sources accumulate (one per type and name, first date kept); events are appended once.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.contacts_csv import ContactRow
from gateway.errors import StoreError
from gateway.security.keys import AddressHasher
from gateway.store.db import BUSY_TIMEOUT_MS

_UPSERT = """
INSERT INTO contacts (address, address_hash, kind, audience, relationship, language, first_name,
    last_name, job_title, topics, customer_categories, consent, consent_at, consent_method,
    consent_proof, opt_out_offered, collected_at, last_interaction_at, informed_at,
    created_at, updated_at)
VALUES (:address, :hash, COALESCE(:kind, 'person'), COALESCE(:audience, 'b2c'),
    COALESCE(:relationship, 'prospect'), :language, :first_name, :last_name, :job_title,
    COALESCE(:topics, ''), COALESCE(:customer_categories, ''), :consent, :consent_at,
    :consent_method, :consent_proof, :opt_out_offered, COALESCE(:collected_at, :now),
    :last_interaction_at, :informed_at, :now, :now)
ON CONFLICT (address) DO UPDATE SET
    kind = COALESCE(:kind, kind),
    audience = COALESCE(:audience, audience),
    relationship = COALESCE(:relationship, relationship),
    language = COALESCE(:language, language),
    first_name = COALESCE(:first_name, first_name),
    last_name = COALESCE(:last_name, last_name),
    job_title = COALESCE(:job_title, job_title),
    topics = COALESCE(:topics, topics),
    customer_categories = COALESCE(:customer_categories, customer_categories),
    consent = COALESCE(:consent, consent),
    consent_at = CASE WHEN :consent IS NULL THEN consent_at ELSE :consent_at END,
    consent_method = CASE WHEN :consent IS NULL THEN consent_method ELSE :consent_method END,
    consent_proof = CASE WHEN :consent IS NULL THEN consent_proof ELSE :consent_proof END,
    opt_out_offered = COALESCE(:opt_out_offered, opt_out_offered),
    collected_at = min(collected_at, COALESCE(:collected_at, collected_at)),
    last_interaction_at = CASE WHEN last_interaction_at IS NULL
        OR :last_interaction_at > last_interaction_at THEN
        COALESCE(:last_interaction_at, last_interaction_at) ELSE last_interaction_at END,
    informed_at = CASE WHEN informed_at IS NULL OR :informed_at > informed_at THEN
        COALESCE(:informed_at, informed_at) ELSE informed_at END,
    updated_at = :now
"""
_SOURCE = """
INSERT INTO sources (contact_id, name, type, visibility, recorded_at)
SELECT id, :source_name, :source_type, :source_visibility, COALESCE(:collected_at, :now)
FROM contacts WHERE address = :address
ON CONFLICT (contact_id, type, name) DO UPDATE SET
    visibility = COALESCE(excluded.visibility, visibility),
    recorded_at = min(recorded_at, excluded.recorded_at)
"""
_EVENT = """
INSERT OR IGNORE INTO contact_events (contact_id, kind, occurred_at, channel, method, wording,
    proof, recorded_at)
SELECT id, :kind, :at, 'import', :method, NULL, :proof, :now FROM contacts WHERE address = :address
"""
_WITHDRAWAL = """
INSERT INTO contact_events (contact_id, kind, occurred_at, channel, recorded_at)
SELECT c.id, 'withdrawal', COALESCE(:consent_at, :now), 'import', :now FROM contacts c
WHERE c.address = :address AND NOT EXISTS (SELECT 1 FROM contact_events e
    WHERE e.contact_id = c.id AND e.kind = 'withdrawal'
    AND (:consent_at IS NULL OR e.occurred_at = :consent_at))
"""
_SUPPRESS = "INSERT OR IGNORE INTO suppression (hash, created_at, channel) VALUES (?, ?, 'import')"


@dataclass
class ImportCounts:
    new: int = 0
    updated: int = 0
    suppressed: int = 0


class ContactImporter:
    """Writes validated rows. With `dry_run`, every chunk is rolled back: same checks, same
    counts, nothing stored."""

    def __init__(self, path: Path | str, hasher: AddressHasher, dry_run: bool = False) -> None:
        self.hasher = hasher
        self.dry_run = dry_run
        self.counts = ImportCounts()
        try:
            self.conn = sqlite3.connect(str(path), isolation_level=None)
            self.conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            self.conn.execute("PRAGMA foreign_keys=ON")
            # NORMAL in WAL mode stays consistent after a crash; an interrupted import loses at
            # most its last chunks, and importing the file again is idempotent.
            self.conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the store {path}: {exc}") from exc

    def write(self, rows: Sequence[ContactRow]) -> None:
        """One chunk in one transaction."""
        now = time.time()
        params = [self._params(row, now) for row in rows]
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                existing = self._existing([str(p["address"]) for p in params])
                conn.executemany(_UPSERT, params)
                sourced = [p for p in params if p["source_type"] is not None]
                conn.executemany(_SOURCE, sourced)
                events = [dict(p, kind="consent", at=p["consent_at"], method=p["consent_method"],
                               proof=p["consent_proof"])
                          for p in params if p["consent"] == "granted"]
                events += [dict(p, kind="interaction", at=p["last_interaction_at"],
                                method=None, proof=None)
                           for p in params if p["last_interaction_at"] is not None]
                events += [dict(p, kind="information", at=p["informed_at"], method=None,
                                proof=None)
                           for p in params if p["informed_at"] is not None]
                conn.executemany(_EVENT, events)
                withdrawn = [p for p in params if p["consent"] == "withdrawn"]
                conn.executemany(_WITHDRAWAL, withdrawn)
                changes = conn.total_changes
                conn.executemany(_SUPPRESS, [(p["hash"], now) for p in withdrawn])
                self.counts.suppressed += conn.total_changes - changes
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("ROLLBACK" if self.dry_run else "COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"import failed at line {rows[0].line}: {exc}") from exc
        self.counts.updated += len(existing)
        self.counts.new += len(params) - len(existing)

    def _existing(self, addresses: list[str]) -> set[str]:
        found: set[str] = set()
        for i in range(0, len(addresses), 500):
            part = addresses[i:i + 500]
            marks = ",".join("?" * len(part))
            found.update(row[0] for row in self.conn.execute(
                f"SELECT address FROM contacts WHERE address IN ({marks})", part))  # noqa: S608 - marks are "?" only
        return found

    def _params(self, row: ContactRow, now: float) -> dict[str, object]:
        return {
            "address": row.address, "hash": self.hasher(row.address), "now": now,
            "kind": row.kind, "audience": row.audience, "relationship": row.relationship,
            "language": row.language, "first_name": row.first_name,
            "last_name": row.last_name, "job_title": row.job_title,
            "topics": None if row.topics is None else ";".join(row.topics),
            "customer_categories": None if row.customer_categories is None
            else ";".join(row.customer_categories),
            "consent": row.consent, "consent_at": row.consent_at,
            "consent_method": row.consent_method, "consent_proof": row.consent_proof,
            "opt_out_offered": None if row.opt_out_offered is None else int(row.opt_out_offered),
            "collected_at": row.collected_at, "last_interaction_at": row.last_interaction_at,
            "informed_at": row.informed_at, "source_name": row.source_name,
            "source_type": row.source_type, "source_visibility": row.source_visibility,
        }

    def close(self) -> None:
        self.conn.close()
