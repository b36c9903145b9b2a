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

import multiprocessing
import re
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from gateway.contacts_csv import ContactRow
from gateway.errors import StoreError
from gateway.security.keys import AddressHasher
from gateway.store.db import BUSY_TIMEOUT_MS, insert_rows
from gateway.store.ledger import COUNT_OBJECTIONS_SQL

# Statements take numbered parameters (faster to bind than names), in this order:
PARAMS = ("hash", "address", "kind", "audience", "relationship", "language", "first_name",
          "last_name", "job_title", "topics", "customer_categories", "consent", "consent_at",
          "consent_method", "consent_proof", "source_name", "source_type", "source_visibility",
          "collected_at", "last_interaction_at", "informed_at", "opt_out_offered", "now", "id")
_I = {name: i for i, name in enumerate(PARAMS)}
_UPSERT_PARAMS = _I["now"] + 1  # the upsert uses ?1 ... ?23
_UPSERT = """
INSERT INTO contacts (address, address_hash, kind, audience, relationship, language, first_name,
    last_name, job_title, topics, customer_categories, consent, consent_at, consent_method,
    consent_proof, opt_out_offered, collected_at, last_interaction_at, informed_at,
    created_at, updated_at)
VALUES (?2, ?1, COALESCE(?3, 'person'), COALESCE(?4, 'b2c'),
    COALESCE(?5, 'prospect'), ?6, ?7, ?8, ?9,
    COALESCE(?10, ''), COALESCE(?11, ''),
    CASE WHEN {stale_new_grant} THEN NULL ELSE ?12 END,
    CASE WHEN {stale_new_grant} THEN NULL ELSE ?13 END,
    CASE WHEN {stale_new_grant} THEN NULL ELSE ?14 END,
    CASE WHEN {stale_new_grant} THEN NULL ELSE ?15 END,
    ?22, min(COALESCE(?19, ?23), {known_since}),
    ?20, ?21, ?23, ?23)
ON CONFLICT (address) DO UPDATE SET
    kind = COALESCE(?3, kind),
    audience = COALESCE(?4, audience),
    relationship = COALESCE(?5, relationship),
    language = COALESCE(?6, language),
    first_name = COALESCE(?7, first_name),
    last_name = COALESCE(?8, last_name),
    job_title = COALESCE(?9, job_title),
    topics = COALESCE(?10, topics),
    customer_categories = COALESCE(?11, customer_categories),
    consent = CASE WHEN ?12 IS NULL OR {stale_grant} THEN consent ELSE ?12 END,
    consent_at = CASE WHEN ?12 IS NULL OR {stale_grant} THEN consent_at ELSE ?13 END,
    consent_method = CASE WHEN ?12 IS NULL OR {stale_grant} THEN consent_method
        WHEN {same_consent} THEN COALESCE(?14, consent_method) ELSE ?14 END,
    consent_proof = CASE WHEN ?12 IS NULL OR {stale_grant} THEN consent_proof
        WHEN {same_consent} THEN COALESCE(?15, consent_proof) ELSE ?15 END,
    opt_out_offered = COALESCE(?22, opt_out_offered),
    collected_at = min(collected_at, COALESCE(?19, collected_at), {known_since}),
    last_interaction_at = CASE WHEN last_interaction_at IS NULL
        OR ?20 > last_interaction_at THEN
        COALESCE(?20, last_interaction_at) ELSE last_interaction_at END,
    informed_at = CASE WHEN informed_at IS NULL OR ?21 > informed_at THEN
        COALESCE(?21, informed_at) ELSE informed_at END,
    updated_at = ?23
"""
# A grant does not replace a recorded withdrawal unless it is dated after it: a weekly export
# made before the withdrawal was entered would bring the consent back (R6 allowed again once
# the suppression was lifted), and the ledger would state it to the person (GDPR 15).
# A person's objection withdrew the consent too (store/ledger._WITHDRAW_SQL), keeping its
# date: the grant must be dated after the objection as well.
# So must it for a person who objected with no consent on record (a B2B prospect, a contact
# the objection came before): an old export's grant, dated before it, brought a consent R6
# allowed on once the suppression was lifted (data-lifecycle audit). The last "no" on record:
# a withdrawn consent's date, a withdrawal or objection event, the suppression entry's date
# (but an import's: the day of the import, its withdrawal event has the day it was made).
_LAST_NO = (
    "max(CASE WHEN consent = 'withdrawn' THEN coalesce(consent_at, 0) ELSE 0 END,"
    " coalesce((SELECT max(e.occurred_at) FROM contact_events e WHERE e.contact_id ="
    " contacts.id AND e.kind IN ('withdrawal', 'objection')), 0),"
    " coalesce((SELECT s.created_at FROM suppression s WHERE s.hash = contacts.address_hash"
    " AND s.channel != 'import'), 0))")
_STALE_GRANT = (f"(?12 = 'granted' AND (consent = 'withdrawn' OR {_LAST_NO} > 0)"
                f" AND NOT coalesce(?13 > {_LAST_NO}, 0))")
# a new contact's grant against its address's suppression entry (an objection made before
# the ledger knew the address): NULL, no consent on record, unless dated after it
_STALE_NEW_GRANT = ("(?12 = 'granted' AND EXISTS (SELECT 1 FROM suppression s WHERE s.hash ="
                    " ?1 AND s.channel != 'import' AND NOT coalesce(?13 > s.created_at, 0)))")
# Without collected_at, a contact was collected no later than the facts its row dates (its
# consent, its last interaction, when it was informed), and no later than now: R4's clock
# started then (a row with consent_at 2021 and no collected_at started it on the import day).
_KNOWN_SINCE = "min(?23, coalesce(?13, ?23), coalesce(?20, ?23), coalesce(?21, ?23))"
# The row restates the consent held (same value, same date: a re-export without the method
# and proof columns): its empty method and proof cells keep the stored ones (a T&C consent,
# R10, became valid when they were emptied). Another consent (a new date, a withdrawal) has
# the method and proof of its own row, empty if they are: an older proof is not its proof.
_SAME_CONSENT = "(?12 IS consent AND ?13 IS consent_at)"
_UPSERT = (_UPSERT.replace("{stale_grant}", _STALE_GRANT)
           .replace("{stale_new_grant}", _STALE_NEW_GRANT)
           .replace("{same_consent}", _SAME_CONSENT)
           .replace("{known_since}", _KNOWN_SINCE))
# Sources and events go in as multi-row INSERTs (db.insert_rows): a fifth faster than
# executemany here, where the writer process is the import's bottleneck with the parser.
_SOURCE_HEAD = "INSERT INTO sources (contact_id, name, type, visibility, recorded_at)"
_SOURCE_TAIL = """
ON CONFLICT (contact_id, type, name) DO UPDATE SET
    -- the visibility the owner had chosen when the data was collected (R3): a later file
    -- saying "public" does not make a restricted collection lawful
    visibility = CASE WHEN visibility = 'restricted' THEN visibility
                      ELSE COALESCE(excluded.visibility, visibility) END,
    recorded_at = min(recorded_at, excluded.recorded_at)
"""
_EVENT_HEAD = ("INSERT OR IGNORE INTO contact_events (contact_id, kind, occurred_at, channel,"
               " method, proof, recorded_at)")
_WITHDRAWAL = """
INSERT INTO contact_events (contact_id, kind, occurred_at, channel, recorded_at)
SELECT ?24, 'withdrawal', COALESCE(?13, ?23), 'import', ?23
WHERE NOT EXISTS (SELECT 1 FROM contact_events e
    WHERE e.contact_id = ?24 AND e.kind = 'withdrawal'
    AND (?13 IS NULL OR e.occurred_at = ?13))
"""
_REASSERTED = ("INSERT OR IGNORE INTO contact_events (contact_id, kind, occurred_at, channel,"
               " recorded_at) VALUES (?1, 'withdrawal', ?2, 'import', ?2)")
# the contacts new in this chunk (id > ?1) whose address was purged by R4 before: their
# collection dates from when the purged entry's clock started (R4 then counts from the later of
# that and a last_interaction_at in the file: only the person's own action renews the clock)
_KEEP_CLOCK = """
UPDATE contacts SET collected_at = (SELECT p.clock_start FROM retention_purges p
    WHERE p.address_hash = contacts.address_hash)
WHERE id > ?1 AND collected_at > (SELECT p.clock_start FROM retention_purges p
    WHERE p.address_hash = contacts.address_hash)
"""
IMPORT_CACHE_KB = 64 * 1024
_SUPPRESS = "INSERT OR IGNORE INTO suppression (hash, created_at, channel) VALUES (?, ?, 'import')"


@dataclass
class ImportCounts:
    new: int = 0
    updated: int = 0
    suppressed: int = 0
    clock_kept: int = 0  # new contacts whose retention clock a purged entry's started
    late: int = 0  # withdrawals from refused rows (contacts_csv.LateWithdrawal), applied


class ContactImporter:
    """Writes validated rows. With `dry_run`, every chunk is rolled back: same checks, same
    counts, nothing stored."""

    def __init__(self, path: Path | str, hasher: AddressHasher | None,
                 dry_run: bool = False) -> None:
        self.hasher = hasher
        self.dry_run = dry_run
        self.counts = ImportCounts()
        try:
            self.conn = sqlite3.connect(str(path), isolation_level=None)
            self.conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            # foreign keys off: every contact_id written comes from the same transaction
            self.conn.execute("PRAGMA foreign_keys=OFF")
            # NORMAL in WAL mode stays consistent after a crash; an interrupted import loses at
            # most its last chunks, and importing the file again is idempotent.
            self.conn.execute("PRAGMA synchronous=NORMAL")
            # the address index of a large ledger does not fit SQLite's default 2 MB cache
            self.conn.execute(f"PRAGMA cache_size=-{IMPORT_CACHE_KB}")
            # read once: most ledgers never purged anything, and their imports skip the check
            self.purged_before = self.conn.execute(
                "SELECT EXISTS (SELECT 1 FROM retention_purges)").fetchone()[0] == 1
            # and most hold no address with capitals (_as_held then looks for none)
            self.capitals_held = self.conn.execute(
                "SELECT EXISTS (SELECT 1 FROM contacts WHERE address != lower(address))"
            ).fetchone()[0] == 1
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the store {path}: {exc}") from exc

    def write(self, rows: Sequence[ContactRow]) -> None:
        """One chunk in one transaction."""
        now = time.time()
        assert self.hasher is not None
        self.write_params([row_params(self.hasher, row, now) for row in rows], rows[0].line,
                          now)

    def write_params(self, params: list[list[object]], first_line: int, now: float,
                     late: bool = False) -> None:
        """One chunk, as `row_params` lists, in one transaction. `late`: withdrawals from
        refused rows (a duplicate's, or a row refused for another cell), counted apart."""
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._as_held(params)
                addresses = [str(p[_I["address"]]) for p in params]
                # the highest id ever given (AUTOINCREMENT, 016_contact_ids): a new contact
                # gets a higher one, an updated contact keeps its lower one
                last_id = conn.execute(_LAST_ID_SQL).fetchone()[0]
                conn.executemany(_UPSERT, [p[:_UPSERT_PARAMS] for p in params])
                ids = self._ids(addresses, last_id)
                cid, consent = _I["id"], _I["consent"]
                for p, address in zip(params, addresses, strict=True):
                    p[cid] = ids[address]
                name, type_, visibility, collected = (
                    _I["source_name"], _I["source_type"], _I["source_visibility"],
                    _I["collected_at"])
                insert_rows(conn, _SOURCE_HEAD, [
                    (p[cid], p[name], p[type_], p[visibility],
                     now if p[collected] is None else p[collected])
                    for p in params if p[type_] is not None], _SOURCE_TAIL)
                events = [(p[cid], "consent", p[_I["consent_at"]], "import",
                           p[_I["consent_method"]], p[_I["consent_proof"]], now)
                          for p in params if p[consent] == "granted"]
                for kind, column in (("interaction", _I["last_interaction_at"]),
                                     ("information", _I["informed_at"])):
                    events += [(p[cid], kind, p[column], "import", None, None, now)
                               for p in params if p[column] is not None]
                insert_rows(conn, _EVENT_HEAD, events)
                suppressed = 0
                for p in (p for p in params if p[consent] == "withdrawn"):
                    recorded = conn.execute(_WITHDRAWAL, p).rowcount
                    if conn.execute(_SUPPRESS, (p[_I["hash"]], now)).rowcount:
                        suppressed += 1
                        if not recorded:  # the same withdrawal again, after `suppress
                            # remove`: in force again from now, and the history says so
                            conn.execute(_REASSERTED, (p[cid], now))
                if suppressed:
                    conn.execute(COUNT_OBJECTIONS_SQL, ("import", suppressed))
                clock_kept = conn.execute(_KEEP_CLOCK, (last_id,)).rowcount \
                    if self.purged_before else 0
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("ROLLBACK" if self.dry_run else "COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"import failed in the chunk from line {first_line}: {exc}") from exc
        self.counts.suppressed += suppressed
        self.counts.clock_kept += clock_kept
        if late:
            self.counts.late += len(params)
            return
        new = sum(1 for contact_id in ids.values() if contact_id > last_id)
        self.counts.new += new
        self.counts.updated += len(params) - new

    def _as_held(self, params: list[list[object]]) -> None:
        """Each row whose address the ledger holds in another letter case only (Jane.Doe@
        held, jane.doe@ in the file) is written under the address as held: it is the same
        person (the suppression hash does not tell them apart either), and a second contact
        would start a new retention clock on the import day (COMPLIANCE 1: a re-import never
        restarts it). Found as ledger.contact_id_sql finds them: a row with capitals by its
        lower-case form, any row among the contacts held with capitals (023). A ledger and
        a file of lower-case addresses (most) skip both."""
        addresses = [str(p[_I["address"]]) for p in params]
        with_capitals = [a for a in addresses if _ASCII_CAPITAL.search(a)]
        variants: dict[str, list[tuple[int, str]]] = {}
        for query, keys in ((_LOWER_FORM_SQL, with_capitals),
                            (_WITH_CAPITALS_SQL, addresses if self.capitals_held else [])):
            for i in range(0, len(keys), 500):
                part = keys[i:i + 500]
                values = ",".join(["(?)"] * len(part))
                for written, contact_id, held in self.conn.execute(
                        query.format(values=values), part):
                    variants.setdefault(written, []).append((contact_id, held))
        if with_capitals:
            self.capitals_held = True  # written below, in this chunk's transaction
        if not variants:
            return
        written_forms = list(variants)
        as_written: set[str] = set()
        for i in range(0, len(written_forms), 500):
            part = written_forms[i:i + 500]
            marks = ",".join("?" * len(part))
            as_written.update(row[0] for row in self.conn.execute(
                f"SELECT address FROM contacts WHERE address IN ({marks})",  # noqa: S608
                part))
        for p in params:
            written = str(p[_I["address"]])
            if written in variants and written not in as_written:
                p[_I["address"]] = min(variants[written])[1]  # the oldest of several

    def _ids(self, addresses: list[str], last_id: int) -> dict[str, int]:
        """The contact id of each address just upserted (the contacts' ids were at most
        `last_id` before)."""
        if self.conn.execute(_NEW_IDS_SQL, (last_id,)).fetchone() \
                == (len(addresses), last_id + len(addresses)):
            # every row was new, so they took the next ids in order (an update uses up an id
            # of the sequence without a row: then fewer rows than addresses are above
            # last_id): a first import skips the second index probe per row (~5% of the
            # writer)
            return {address: last_id + i for i, address in enumerate(addresses, 1)}
        found: dict[str, int] = {}
        for i in range(0, len(addresses), 500):
            part = addresses[i:i + 500]
            marks = ",".join("?" * len(part))
            found.update(self.conn.execute(
                f"SELECT address, id FROM contacts WHERE address IN ({marks})",  # noqa: S608 - marks are "?" only
                part).fetchall())
        return found

    def close(self) -> None:
        self.conn.close()


_ASCII_CAPITAL = re.compile("[A-Z]")  # what SQLite's lower() folds
# over k(a): the contacts held under the lower-case form of an address written with
# capitals, and those held with capitals in another case (contacts_with_capitals); values
# are "(?)" placeholders only
_LOWER_FORM_SQL = ("WITH k(a) AS (VALUES {values}) SELECT k.a, c.id, c.address FROM k"
                   " JOIN contacts c ON c.address = lower(k.a)")
_WITH_CAPITALS_SQL = ("WITH k(a) AS (VALUES {values}) SELECT k.a, c.id, c.address FROM k"
                      " JOIN contacts c ON c.address != lower(c.address)"
                      " AND lower(c.address) = lower(k.a) AND c.address != k.a")
_LAST_ID_SQL = ("SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'contacts'),"
                " 0), coalesce((SELECT max(id) FROM contacts), 0))")
_NEW_IDS_SQL = "SELECT count(*), coalesce(max(id), 0) FROM contacts WHERE id > ?"


def row_params(hasher: AddressHasher, row: ContactRow, now: float) -> list[object]:
    """The row as the statements' numbered parameters (PARAMS order: the ContactRow's own,
    with the line number replaced by the address hash, then `now` and the contact id)."""
    params: list[object] = list(row)
    params[0] = hasher(row.address)
    for i in (_TOPICS, _CATEGORIES):
        if params[i] is not None:
            params[i] = ";".join(params[i])  # type: ignore[arg-type]
    if row.opt_out_offered is not None:
        params[_OPT_OUT] = int(row.opt_out_offered)
    params += (now, None)
    return params


_TOPICS, _CATEGORIES, _OPT_OUT = _I["topics"], _I["customer_categories"], _I["opt_out_offered"]
assert PARAMS[1:-2] == ContactRow._fields[1:], "PARAMS must follow ContactRow's field order"


class ImportProcess:
    """Writes chunks in a child process while this one parses the next ones.

    Parsing is Python and writing is mostly SQLite, but threads would take turns on the GIL
    (a writer thread that releases it inside SQLite waits for it again behind the parser), so
    the writer is a forked process fed through a pipe: the two overlap on two cores. The pipe
    holds a couple of chunks at most, so memory stays bounded. A write error is raised at the
    next `submit` or at `finish`; the child then discards what it is still sent.
    """

    def __init__(self, path: Path | str, hasher: AddressHasher, dry_run: bool = False) -> None:
        self.hasher = hasher
        context = multiprocessing.get_context("fork")
        self._pipe, child = context.Pipe()
        self._process = context.Process(target=_writer,
                                        args=(child, self._pipe, str(path), dry_run),
                                        name="gateway-import-writer", daemon=True)
        self._process.start()
        child.close()
        self._expect("ready")

    def _expect(self, what: str) -> object:
        try:
            kind, value = self._pipe.recv()
        except EOFError:
            raise StoreError("the import writer stopped unexpectedly") from None
        if kind == "error":
            raise StoreError(str(value))
        assert kind == what, kind
        return value

    def submit(self, rows: Sequence[ContactRow], late: bool = False) -> None:
        """`late`: withdrawals from refused rows (see ContactImporter.write_params)."""
        if self._pipe.poll():  # the child only speaks early to report an error
            self._expect("ready")
        now = time.time()
        self._pipe.send((rows[0].line, now, [row_params(self.hasher, r, now) for r in rows],
                         late))

    def finish(self) -> ImportCounts:
        """Wait for every submitted chunk; raise the first write error, if any."""
        self._pipe.send(None)
        try:
            counts = self._expect("done")
        finally:
            self._process.join(10)
            self._pipe.close()
        assert isinstance(counts, ImportCounts)
        return counts


def _writer(pipe: Connection, parents_end: Connection, path: str, dry_run: bool) -> None:
    """The child: open the store, write each chunk it is sent, report once at the end.

    A parent that dies (killed, Ctrl-C) ends the child too: the child closes its copy of
    the parent's end of the pipe, so that the parent's death is an end of file here, and
    what it had not finished writing is rolled back with its connection.
    """
    parents_end.close()
    try:
        importer = ContactImporter(path, None, dry_run)  # rows arrive hashed
    except StoreError as exc:
        pipe.send(("error", str(exc)))
        return
    pipe.send(("ready", None))
    failed = False
    try:
        while (chunk := _next_chunk(pipe)) is not None:
            if failed:
                continue
            first_line, now, params, late = chunk
            try:
                importer.write_params(params, first_line, now, late)
            except StoreError as exc:
                failed = True
                pipe.send(("error", str(exc)))
        if pipe.closed:
            return  # the parent is gone: nobody to report to
        if not failed:
            pipe.send(("done", importer.counts))
        else:
            pipe.send(("error", "import stopped after the error above"))
    finally:
        importer.close()


def _next_chunk(pipe: Connection) -> Any:
    """The next chunk, or None at the end: sent by the parent, or its death (the pipe closed,
    and then closed here too)."""
    try:
        return pipe.recv()
    except (EOFError, OSError):  # OSError: the parent died in the middle of a send
        pipe.close()
        return None
