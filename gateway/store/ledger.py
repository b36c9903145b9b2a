"""The contact ledger and the suppression list: the facts every recipient decision reads.

The hot path (`LedgerLookup.facts`) reads each recipient by two indexed lookups (suppression
hash, contact address), with a connection of its own. Lookups that arrive together share ONE
statement (`facts_sql`). Each statement sees the latest commit of any process, so an objection
stored anywhere holds for the very next RCPT.

Where the statement runs: in `gateway serve`, in the ledger reader process
(store/ledger_reader.py), so that the event loop never waits on the database; elsewhere on a
thread. With `store.ledger_reads = "inline"`, serve runs it on the event loop itself while it
answers at once (`inline`: pages in the cache, ~25 us a key). The inline connection never
waits for a lock (busy timeout 0): a batch it cannot read at once, or INLINE_SLOW_IN_A_ROW
batches in a row slower than INLINE_SLOW_SECONDS (pages read from disk), send the next
batches to the reader process for INLINE_BACKOFF_SECONDS; but the slow ones held up the loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

from gateway.addresses import normalize_address, person_form
from gateway.batch import GroupCommitter
from gateway.errors import NotFound, Refused, StoreError
from gateway.model import Contact, RecipientFacts, Source
from gateway.security.keys import AddressHasher
from gateway.store import notifications
from gateway.store.db import BUSY_TIMEOUT_MS, Database, insert_rows, with_rows
from gateway.store.ledger_reader import LedgerReader

CONTACT_COLUMNS = (
    "id", "address", "kind", "audience", "relationship", "language", "first_name", "last_name",
    "job_title", "topics", "customer_categories", "consent", "consent_at", "consent_method",
    "consent_proof", "opt_out_offered", "collected_at", "last_interaction_at", "informed_at",
    "informed_version", "retention_expired_at",
)
_SOURCES = ("(SELECT json_group_array(json_array(s.name, s.type, s.visibility, s.recorded_at))"
            " FROM sources s WHERE s.contact_id = c.id)")
_SELECT = ", ".join(f"c.{name}" for name in CONTACT_COLUMNS) + ", " + _SOURCES + " AS sources"
_REALS = ("consent_at", "collected_at", "last_interaction_at", "informed_at",
          "retention_expired_at")
# In JSON a REAL keeps 15 digits only; quote() gives as many as it takes to read back the
# same double (1795656443.564529 -> '1.79565644356452894215e+09').
_JSON_COLUMNS = ", ".join(f"nullif(quote(c.{name}), 'NULL')" if name in _REALS else f"c.{name}"
                          for name in CONTACT_COLUMNS)
_REAL_POSITIONS = tuple(1 + CONTACT_COLUMNS.index(name) for name in _REALS)
_ID_POSITION = 1 + CONTACT_COLUMNS.index("id")  # in a facts row: never None for a contact
BATCH_LIMIT = 64  # keys per statement (2 variables each)
# Inline batches (on the event loop) slower than this, twice in a row, send the next ones to
# the reader process for INLINE_BACKOFF_SECONDS. From the page cache a batch takes 0.17 ms at
# the median and under 1 ms at most (7 keys on average, 20 busy sessions); from disk, ~0.1 ms
# a page, several pages a key. One slow batch alone is the loop pre-empted, not the disk.
INLINE_SLOW_SECONDS = 0.002
INLINE_SLOW_IN_A_ROW = 2
INLINE_BACKOFF_SECONDS = 5.0

log = logging.getLogger("gateway.ledger")


def contact_id_sql(address: str) -> str:
    """SQL for the id of the contact held under `address` (an SQL expression: the ledger
    form), or else of the one held in another letter case: contacts.address keeps the local
    part as written (Jane.Doe@) and tools write it otherwise (jane.doe@), but no real
    mailbox tells them apart (the suppression hash does not either). The lower-case form is
    found by the address's own index, forms with capitals by contacts_with_capitals
    (023); SQLite's lower() folds ASCII only, so JOSÉ@ held as José@ is found as written
    only. The second lookup runs only when the first finds nothing (coalesce stops at a
    value): a known recipient costs what it did."""
    return (f"coalesce((SELECT id FROM contacts WHERE address = {address}),"  # noqa: S608
            f" (SELECT min(id) FROM (SELECT id FROM contacts WHERE address = lower({address})"
            f" UNION ALL SELECT id FROM contacts WHERE address != lower(address)"
            f" AND lower(address) = lower({address}))))")


@lru_cache(maxsize=BATCH_LIMIT)
def facts_sql(keys: int) -> str:
    """The suppression check and the contact with its sources, for `keys` (hash, address)
    pairs, by two indexes each, as ONE row: a JSON array of [position, suppressed, contact
    columns..., sources text]. One row means one sqlite3_step, so the ledger thread takes the
    GIL back from the event loop once per batch, not twice per key (each time waiting up to
    the switch interval while the loop runs), and it is half the CPU per key."""
    values = ", ".join(f"({i}, ?, ?)" for i in range(keys))
    # constant column names and placeholders only: every value is bound
    return ("WITH k(i, h, a) AS (VALUES " + values + ") SELECT json_group_array(json_array(k.i,"  # noqa: S608, E501
            " EXISTS(SELECT 1 FROM suppression WHERE hash = k.h), " + _JSON_COLUMNS + ","
            " '' || " + _SOURCES + ")) FROM k LEFT JOIN contacts c ON c.id = "
            + contact_id_sql("k.a"))


def facts_rows(conn: sqlite3.Connection, keys: Sequence[tuple[bytes, str]]
               ) -> list[tuple[object, ...]]:
    """For each (hash, address): (suppressed, *CONTACT_COLUMNS, sources JSON), the contact
    columns None when the ledger does not hold the address."""
    documents = []
    for start in range(0, len(keys), BATCH_LIMIT):
        chunk = keys[start:start + BATCH_LIMIT]
        [(document,)] = conn.execute(facts_sql(len(chunk)),
                                     [value for key in chunk for value in key]).fetchall()
        documents.append(json.loads(document))
    return rows_of_documents(documents, len(keys))


def rows_of_documents(documents: Sequence[list[list[Any]]], keys: int
                      ) -> list[tuple[object, ...]]:
    """facts_rows' rows from the parsed facts_sql documents of `keys` keys (a chunk of
    BATCH_LIMIT keys each); StoreError unless there is exactly one row per key."""
    rows: list[tuple[object, ...]] = []
    for start, document in zip(range(0, keys, BATCH_LIMIT), documents, strict=False):
        found: list[Any] = [None] * min(BATCH_LIMIT, keys - start)
        for item in document:
            for position in _REAL_POSITIONS:
                if item[position + 1] is not None:
                    item[position + 1] = float(item[position + 1])
            found[item[0]] = item
        if None in found:
            raise StoreError("ledger read failed: a key is missing from the answer")
        rows.extend(tuple(item[1:]) for item in found)
    if len(rows) != keys:
        raise StoreError(f"ledger read failed: {len(rows)} rows for {keys} keys")
    return rows


CONTACT_SQL = (f"SELECT {_SELECT} FROM contacts c WHERE c.id = "  # noqa: S608
               + contact_id_sql("?1"))


@lru_cache(maxsize=4096)
def _tags(text: str | None) -> frozenset[str]:
    """A `;`-separated cell as a set; the same few topic lists recur on most contacts, so the
    (immutable) sets are shared."""
    return frozenset(t for t in (text or "").split(";") if t)


@lru_cache(maxsize=4096)
def _sources(sources_json: str | None) -> tuple[Source, ...]:
    """The sources column (a JSON array of [name, type, visibility, recorded_at]); contacts
    imported from one file share the same text, so the (immutable) tuples are shared."""
    return tuple(Source(name, type_, visibility, recorded_at)
                 for name, type_, visibility, recorded_at in json.loads(sources_json or "[]"))


_CONTACT_FIELDS = frozenset(f.name for f in fields(Contact))
if _CONTACT_FIELDS != {*CONTACT_COLUMNS, "sources"}:  # contact_from_row sets every field
    raise RuntimeError(f"CONTACT_COLUMNS out of step with Contact: {sorted(_CONTACT_FIELDS)}")
_new = object.__new__


def contact_from_row(row: Sequence[object], offset: int = 0) -> Contact:
    """A Contact from CONTACT_COLUMNS + sources, starting at `offset` in `row`.

    On every RCPT, so the frozen dataclass's __init__ (one object.__setattr__ per field, a
    third of the cost) is bypassed: the instance dict is filled at once, with every field
    (checked above) and the same conversions as ever.
    """
    values = dict(zip(CONTACT_COLUMNS, row[offset:offset + len(CONTACT_COLUMNS)], strict=True))
    values["topics"] = _tags(values["topics"])
    values["customer_categories"] = _tags(values["customer_categories"])
    opt_out = values["opt_out_offered"]
    values["opt_out_offered"] = None if opt_out is None else bool(opt_out)
    sources_json = row[offset + len(CONTACT_COLUMNS)]
    values["sources"] = _sources(None if sources_json is None else str(sources_json))
    contact: Contact = _new(Contact)
    contact.__dict__.update(values)
    return contact


class FactsRow(NamedTuple):
    """One recipient's facts as read, in plain values only: the ledger key, its keyed hash,
    and (suppressed, *CONTACT_COLUMNS, sources JSON) with the columns None when the ledger
    does not hold the address.

    A transaction keeps what its RCPTs read until it ends (thousands of recipients at once
    under load). A tuple of strings and numbers is dropped from the cyclic collector's lists
    at its first collection; the Contact built from it is half a dozen tracked objects, which
    every later collection walked again (the RCPT latency tail, bench/README.md). So this is
    what a verdict keeps, and `facts()` builds the rest when it is needed.
    """

    address: str
    digest: bytes
    row: tuple[object, ...]

    @property
    def contact_id(self) -> int | None:
        contact_id = self.row[_ID_POSITION]
        return None if contact_id is None else int(contact_id)  # type: ignore[call-overload]

    def facts(self) -> RecipientFacts:
        contact = contact_from_row(self.row, 1) if self.row[_ID_POSITION] is not None else None
        return RecipientFacts(self.address, bool(self.row[0]), contact, self.digest)


def ledger_form(address: str) -> str:
    """The ledger key of an SMTP address; the address itself when it cannot be normalised
    (it then matches no contact, and R2 decides)."""
    try:
        return normalize_address(address)
    except ValueError:
        return address


class LedgerLookup:
    """Recipient facts for the RCPT path, read on a dedicated thread, or with
    `reader_process` in the ledger reader process (store/ledger_reader.py), which keeps the
    lookups' SQL off the event loop's interpreter lock. With `inline` (gateway serve with
    `store.ledger_reads = "inline"`), on the event loop itself while that answers at once,
    else as without it (see the module's docstring)."""

    def __init__(self, path: Path | str, hasher: AddressHasher, *,
                 reader_process: bool = False, inline: bool = False,
                 inline_slow: float = INLINE_SLOW_SECONDS,
                 inline_backoff: float = INLINE_BACKOFF_SECONDS) -> None:
        self.path = str(path)
        self.hasher = hasher
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="ledger")
        self._conn: sqlite3.Connection | None = None
        self._reader = LedgerReader(self.path) if reader_process else None
        self._batcher: GroupCommitter[tuple[bytes, str], tuple[object, ...]] = GroupCommitter(
            self._read_batch)
        self._inline = inline
        self._inline_conn: sqlite3.Connection | None = None
        self._inline_slow = inline_slow
        self._inline_backoff = inline_backoff
        self._inline_after = 0.0  # time.monotonic() before which batches skip the inline read
        self._inline_slow_run = 0  # slow inline batches in a row
        # batches read "inline" and by the "reader" (process or thread); inline reads that
        # were "slow" or "refused" (the database locked). Logged at close.
        self.batches: Counter[str] = Counter()

    async def facts(self, address: str) -> RecipientFacts:
        """Suppression and ledger facts for `address` (StoreError if the store fails)."""
        return (await self.read(address)).facts()

    async def read(self, address: str) -> FactsRow:
        """`facts` as read, before the Contact is built (StoreError if the store fails)."""
        key = ledger_form(address)
        digest = self.hasher(key)
        return FactsRow(key, digest, await self._batcher.submit((digest, key)))

    async def start(self) -> None:
        """Start the reader process now (else the first RCPT would wait for it)."""
        if self._reader is not None:
            await self._reader.start()

    async def _read_batch(self, keys: Sequence[tuple[bytes, str]]) -> list[tuple[object, ...]]:
        if self._inline and time.monotonic() >= self._inline_after:
            rows = self._read_inline(keys)
            if rows is not None:
                return rows
        self.batches["reader"] += 1
        if self._reader is not None:
            documents = await self._reader.read(keys)
            try:
                return rows_of_documents(documents, len(keys))
            except (TypeError, IndexError, ValueError) as exc:  # not the shape facts_sql makes
                raise StoreError(f"ledger read failed: unexpected answer: {exc!r}") from exc
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._read_many, list(keys))

    def _read_inline(self, keys: Sequence[tuple[bytes, str]]
                     ) -> list[tuple[object, ...]] | None:
        """The batch read on the event loop, or None when the database could not answer at
        once (this never waits for a lock); a slow or refused read sends the next batches to
        the reader for a while."""
        start = time.perf_counter()
        try:
            if self._inline_conn is None:
                conn = sqlite3.connect(self.path, isolation_level=None, timeout=0)
                try:
                    conn.execute("PRAGMA query_only=ON")
                except sqlite3.Error:
                    conn.close()
                    raise
                self._inline_conn = conn
            rows = facts_rows(self._inline_conn, keys)
        except sqlite3.Error as exc:
            self.batches["refused"] += 1
            self._inline_after = time.monotonic() + self._inline_backoff
            log.info("ledger: inline read refused (%s): the reader answers for %g s", exc,
                     self._inline_backoff)
            return None
        self.batches["inline"] += 1
        elapsed = time.perf_counter() - start
        if elapsed <= self._inline_slow:
            self._inline_slow_run = 0
            return rows
        self.batches["slow"] += 1
        self._inline_slow_run += 1
        if self._inline_slow_run >= INLINE_SLOW_IN_A_ROW:
            self._inline_slow_run = 0
            self._inline_after = time.monotonic() + self._inline_backoff
            log.info("ledger: inline reads slow (the last: %d keys in %.1f ms): the reader "
                     "answers for %g s", len(keys), elapsed * 1e3, self._inline_backoff)
        return rows

    def _read_many(self, keys: list[tuple[bytes, str]]) -> list[tuple[object, ...]]:
        """On the ledger thread: one statement per batch (see facts_sql); building the
        contacts is left to the event loop."""
        try:
            if self._conn is None:
                self._conn = sqlite3.connect(self.path, isolation_level=None,
                                             check_same_thread=False)
                self._conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
                self._conn.execute("PRAGMA query_only=ON")
            return facts_rows(self._conn, keys)
        except sqlite3.Error as exc:
            raise StoreError(f"ledger read failed: {exc}") from exc

    async def close(self) -> None:
        if self._inline_conn is not None:
            self._inline_conn.close()
            self._inline_conn = None
        if self.batches:
            log.info("ledger lookups: %d batches inline (%d slow, %d refused), %d by the "
                     "reader", self.batches["inline"], self.batches["slow"],
                     self.batches["refused"], self.batches["reader"])

        def _close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        if self._conn is not None:  # the thread was used (not in gateway serve)
            await asyncio.get_running_loop().run_in_executor(self._executor, _close)
        self._executor.shutdown(wait=True)
        if self._reader is not None:
            await self._reader.close()


@dataclass(frozen=True)
class ContactEvent:
    kind: str
    occurred_at: float
    channel: str
    method: str | None
    wording: str | None
    proof: str | None
    ip: str | None
    recorded_at: float

    def as_json(self) -> dict[str, object]:
        return {"kind": self.kind, "occurred_at": self.occurred_at, "channel": self.channel,
                "method": self.method, "wording": self.wording, "proof": self.proof,
                "ip": self.ip, "recorded_at": self.recorded_at}


@dataclass(frozen=True)
class SuppressionEntry:
    hash: bytes
    created_at: float
    channel: str
    address: str | None  # from the ledger while the contact is still held; None after erasure


# A token names (contact, account, delivery id); the delivery counts only while it is still
# that contact's copy (an id deleted before 011_delivery_ids may have been given again).
# Otherwise the token's contact is the answer (0: none). Over k(i, d, c): the (address,
# language) of each copy, as one row: [i, address or null, language]
# (a contact R4 purged is found by its id in purged_contacts: its address is gone, its keyed
# hash is enough to suppress it)
# (and a copy to an address outside the ledger, deleted at the end of its period, by its
# delivery id in purged_copies: 031_purged_copies)
_COPIES_SQL = ("SELECT json_group_array(json_array(k.i, coalesce(d.recipient, c.address),"
               " coalesce(c.language, p.language),"
               " hex(coalesce(p.address_hash, q.address_hash))))"
               " FROM k LEFT JOIN deliveries d ON d.id = k.d"
               " AND coalesce(d.contact_id, 0) = k.c LEFT JOIN contacts c ON c.id = k.c"
               " LEFT JOIN purged_contacts p ON p.contact_id = k.c"
               " LEFT JOIN purged_copies q ON q.delivery_id = k.d AND k.c = 0")
_ONE_COPY_SQL = "WITH k(i, d, c) AS (VALUES (0, ?, ?)) " + _COPIES_SQL
_SUPPRESS_SQL = "INSERT OR IGNORE INTO suppression (hash, created_at, channel) VALUES (?, ?, ?)"
_SUPPRESSED_SQL = "SELECT json_group_array(hex(s.hash)) FROM k JOIN suppression s ON s.hash = k.h"
# over k(a, l, channel, reason, ip): every contact held under the address in any case (as
# contact_id_sql finds one for RCPT: a copy sent to jane.doe@ of the contact held as Jane.Doe@
# is objected to as jane.doe@): as written, with its local part in lower case (l), or held
# with capitals (contacts_with_capitals; a store from before 023 may hold two spellings)
_K_CONTACTS = ("(SELECT id FROM contacts WHERE address IN (k.a, k.l) UNION SELECT id FROM"
               " contacts WHERE address != lower(address) AND lower(address) = lower(k.a))")
_OBJECTIONS_SQL = (
    "INSERT OR IGNORE INTO contact_events (contact_id, kind, occurred_at, channel, wording, ip,"
    " recorded_at) SELECT c.id, 'objection', ?, k.channel, k.reason, k.ip, ? FROM k"
    " JOIN contacts c ON c.id IN {contacts}").replace("{contacts}", _K_CONTACTS)
# over k(a, l, p), the same contacts: the person's own objection (Objection.by_person)
# withdraws the consent on record, as a withdrawal in a contacts file does. Else `suppress
# remove` brought R6 back on the consent given before the objection. The consent's date,
# method and proof stay (the proof of mail sent under it, GDPR 7(1)); a file's grant dated
# before the objection (a stale export) does not replace it (ledger_import._STALE_GRANT).
_WITHDRAW_SQL = (
    "UPDATE contacts SET consent = 'withdrawn', updated_at = ? WHERE consent = 'granted'"
    " AND id IN (SELECT c.id FROM k JOIN contacts c ON c.id IN {contacts} WHERE k.p)"
).replace("{contacts}", _K_CONTACTS)
COUNT_OBJECTIONS_SQL = (
    "INSERT INTO objection_counts (channel, total) VALUES (?, ?)"
    " ON CONFLICT (channel) DO UPDATE SET total = total + excluded.total")
_REPLAYS_SQL = "SELECT json_group_array(w.id) FROM k JOIN webhook_events w ON w.id = k.e"


# over k(id): R4's purge mark, once
_MARK_EXPIRED_SQL = ("UPDATE contacts SET retention_expired_at = ? WHERE id IN (SELECT id FROM k)"
                     " AND retention_expired_at IS NULL")
# over k(id) / k(id, version): who of them was never informed; inform them; the event
_NOT_INFORMED_SQL = ("SELECT json_group_array(c.id) FROM k JOIN contacts c ON c.id = k.id"
                     " WHERE c.informed_at IS NULL")
_MARK_INFORMED_SQL = (
    "UPDATE contacts SET informed_at = ?, informed_version = (SELECT version FROM k"
    " WHERE k.id = contacts.id), updated_at = ? WHERE id IN (SELECT id FROM k)")
_INFORMATION_SQL = (
    "INSERT OR IGNORE INTO contact_events (contact_id, kind, occurred_at, channel, wording,"
    " recorded_at) SELECT id, 'information', ?, 'notice', version, ? FROM k")


class Objection(NamedTuple):
    digest: bytes  # the keyed hash of `address`
    address: str  # in ledger form
    channel: str
    reason: str | None
    ip: str | None
    # the person's own act (an unsubscribe, a complaint, a GDPR 21 request), which withdraws
    # their consent; None: every channel but `manual` (an operator's entry, a bounce say)
    person: bool | None = None

    @property
    def by_person(self) -> bool:
        return self.channel != "manual" if self.person is None else self.person


def _lower_local(address: str) -> str:
    local, at, domain = address.rpartition("@")
    return f"{local.lower()}{at}{domain}"


def record_objections(conn: sqlite3.Connection, objections: Sequence[Objection],
                      now: float) -> list[bool]:
    """In a write transaction: for each address not suppressed yet, the suppression entry,
    the objection event (when the ledger holds the address) and the accounts'
    notifications, all in the caller's commit. For each objection, whether it suppressed its
    address (False: suppressed already, before or by an earlier one of `objections`; nothing
    is written for it then).

    A handful of statements for the whole set, not three per objection: a burst of one-click
    POSTs or a webhook batch shares the writer's transactions with the message commits, and
    the writer thread gives the GIL back around each statement and waits to take it again
    behind the event loop (a 1,000-event webhook, the loop busy: 1,121 -> 100 ms;
    bench/README.md, unsubscribe)."""
    first: dict[bytes, int] = {}
    for index, objection in enumerate(objections):
        first.setdefault(objection.digest, index)
    if len(first) == 1:  # the usual single objection: the insert says whether it is new
        objection = objections[0]
        new = [0] if conn.execute(_SUPPRESS_SQL, (objection.digest, now, objection.channel)
                                  ).rowcount == 1 else []
    else:
        suppressed = {bytes.fromhex(h)
                      for document in with_rows(conn, "k(h)", [(d,) for d in first],
                                                _SUPPRESSED_SQL)
                      for h in json.loads(document)}
        new = [index for digest, index in first.items() if digest not in suppressed]
        insert_rows(conn, "INSERT INTO suppression (hash, created_at, channel)",
                    [(objections[i].digest, now, objections[i].channel) for i in new])
    if new:
        rows = [(o.address, _lower_local(o.address), o.channel, o.reason, o.ip)
                for o in (objections[i] for i in new)]
        with_rows(conn, "k(a, l, channel, reason, ip)", rows, _OBJECTIONS_SQL, (now, now))
        _withdraw_consents(conn, [objections[i] for i in new], now)
        with_rows(conn, "k(n, body)",  # (no address, nothing to notify: a purged contact)
                  [(n, notifications.notification_body(objections[i].address,
                                                       objections[i].channel, now))
                   for n, i in enumerate(new) if objections[i].address],
                  notifications.NOTIFY_SQL, (now, now, now))
        conn.executemany(COUNT_OBJECTIONS_SQL,
                         Counter(objections[i].channel for i in new).items())
    added_now = set(new)
    _person_over_manual(conn, [objections[i] for i in first.values() if i not in added_now],
                        now)
    added = [False] * len(objections)
    for index in new:
        added[index] = True
    return added


# over k(h, a, l, channel, reason, ip): addresses an operator had suppressed by hand
_MANUAL_SQL = ("SELECT json_group_array(hex(s.hash)) FROM k JOIN suppression s ON s.hash = k.h"
               " WHERE s.channel = 'manual'")


def _person_over_manual(conn: sqlite3.Connection, already: Sequence[Objection],
                        now: float) -> None:
    """The person's own objection to an address an operator had suppressed by hand (a hard
    bounce, say) is recorded all the same: its event (channel, time, IP: the proof), and the
    entry's channel becomes the person's. Else `suppress remove` of the operator's entry left
    no trace of it, and mail resumed to someone told "you will get no more"."""
    person = [o for o in already if o.by_person]
    if not person:
        return
    manual = {bytes.fromhex(h)
              for document in with_rows(conn, "k(h)", [(o.digest,) for o in person], _MANUAL_SQL)
              for h in json.loads(document)}
    taken = [o for o in person if o.digest in manual]
    if not taken:
        return
    conn.executemany("UPDATE suppression SET channel = ? WHERE hash = ? AND channel = 'manual'",
                     [(o.channel, o.digest) for o in taken])
    rows = [(o.address, _lower_local(o.address), o.channel, o.reason, o.ip) for o in taken]
    with_rows(conn, "k(a, l, channel, reason, ip)", rows, _OBJECTIONS_SQL, (now, now))
    _withdraw_consents(conn, taken, now)
    # the person's objection is news to the accounts and to /metrics as a new entry's is: the
    # operator's entry told neither (a hard bounce is not "the person said no")
    with_rows(conn, "k(n, body)",
              [(n, notifications.notification_body(o.address, o.channel, now))
               for n, o in enumerate(taken) if o.address],
              notifications.NOTIFY_SQL, (now, now, now))
    conn.executemany(COUNT_OBJECTIONS_SQL, Counter(o.channel for o in taken).items())


def _withdraw_consents(conn: sqlite3.Connection, objections: Sequence[Objection],
                       now: float) -> None:
    """The consent of each person objecting of their own act is withdrawn (_WITHDRAW_SQL)."""
    rows = [(o.address, _lower_local(o.address), 1) for o in objections if o.by_person]
    if rows:
        with_rows(conn, "k(a, l, p)", rows, _WITHDRAW_SQL, (now,))


class Ledger:
    """Operator-side ledger access: show a contact, manage the suppression list."""

    def __init__(self, db: Database, hasher: AddressHasher) -> None:
        self.db = db
        self.hasher = hasher

    async def contact(self, address: str) -> Contact | None:
        key = normalize_address(address)
        row = await self.db.fetchone(CONTACT_SQL, (key,))
        return contact_from_row(tuple(row)) if row is not None else None

    async def events(self, contact_id: int) -> list[ContactEvent]:
        rows = await self.db.fetchall(
            "SELECT kind, occurred_at, channel, method, wording, proof, ip, recorded_at"
            " FROM contact_events WHERE contact_id = ? ORDER BY occurred_at, recorded_at",
            (contact_id,))
        return [ContactEvent(*tuple(row)) for row in rows]

    async def is_suppressed(self, address: str) -> SuppressionEntry | None:
        key = normalize_address(address)
        row = await self.db.fetchone(
            "SELECT hash, created_at, channel FROM suppression WHERE hash = ?",
            (self.hasher(key),))
        return SuppressionEntry(row[0], row[1], row[2], key) if row else None

    async def suppress(self, address: str, channel: str, ip: str | None = None,
                       reason: str | None = None, person: bool | None = None) -> bool:
        """Add `address` to the suppression list (and an objection event when the ledger holds
        it), committed before returning. False when it was already there. `person`: the
        person's own act (Objection.person)."""
        key = normalize_address(address)
        objection = Objection(self.hasher(key), key, channel, reason, ip, person)
        now = time.time()
        return (await self.db.write(lambda conn: record_objections(conn, [objection], now)))[0]

    async def unsuppress(self, address: str, reason: str | None = None,
                         force: bool = False) -> None:
        """Lift a suppression (an operator's deliberate act, recorded on the contact, under
        whatever case the ledger holds the address in). The entry an erasure left is
        refused without `force`: COMPLIANCE.md, it never expires (without it the person's
        address could be imported and mailed again)."""
        key = normalize_address(address)
        digest = self.hasher(key)
        now = time.time()
        async with self.db.transaction() as conn:
            row = await (await conn.execute("SELECT channel FROM suppression WHERE hash = ?",
                                            (digest,))).fetchone()
            if row is None:
                raise NotFound(f"{key} is not on the suppression list")
            if row[0] == "erasure" and not force:
                raise Refused(f"{key} was erased (GDPR 17): its suppression entry is what keeps "
                              "the person from being imported and mailed again, and never "
                              "expires; lift it only on the person's own new request "
                              "(--force)")
            await conn.execute("DELETE FROM suppression WHERE hash = ?", (digest,))
            await conn.execute(
                "INSERT OR IGNORE INTO contact_events (contact_id, kind, occurred_at, channel,"
                " wording, recorded_at) SELECT id, 'objection_lifted', ?, 'manual', ?, ?"
                " FROM contacts WHERE address_hash = ? AND subject_form(address) = ?",
                (now, reason, now, digest, person_form(key)))

    async def mark_expired(self, contact_ids: Sequence[int]) -> list[None]:
        """R4 "reject, and mark for purge": note when retention was found expired, once.
        `gateway retention run` purges what is marked (a GroupCommitter's write)."""
        now = time.time()
        ids = [(i,) for i in contact_ids]
        await self.db.write(lambda conn: with_rows(conn, "k(id)", ids, _MARK_EXPIRED_SQL, (now,)))
        return [None] * len(contact_ids)

    async def mark_informed(self, informed: Sequence[tuple[int, str]]) -> list[None]:
        """GDPR 14: the person received the full information (notice version), now. Once: a
        later message does not move the date (nor a later item of `informed` for the same
        contact). Appends an `information` event too. A few statements for the whole group
        (one per kind), not two per contact: see record_objections."""
        now = time.time()
        first: dict[int, str] = {}
        for contact_id, version in informed:
            first.setdefault(contact_id, version)

        def write(conn: sqlite3.Connection) -> None:
            if len(first) == 1:  # one contact: the update says whether it is the first time
                [(contact_id, version)] = first.items()
                if not conn.execute(
                        "UPDATE contacts SET informed_at = ?, informed_version = ?,"
                        " updated_at = ? WHERE id = ? AND informed_at IS NULL",
                        (now, version, now, contact_id)).rowcount:
                    return
                rows = [(contact_id, version)]
            else:
                new = {i for document in with_rows(conn, "k(id)", [(i,) for i in first],
                                                   _NOT_INFORMED_SQL)
                       for i in json.loads(document)}
                rows = [(i, version) for i, version in first.items() if i in new]
                with_rows(conn, "k(id, version)", rows, _MARK_INFORMED_SQL, (now, now))
            with_rows(conn, "k(id, version)", rows, _INFORMATION_SQL, (now, now))

        await self.db.write(write)
        return [None] * len(informed)

    async def recipient_of_copy(self, delivery_id: int,
                                contact_id: int) -> tuple[str, str | None] | None:
        """(address, language) of the copy an unsubscribe token names: the delivery's
        recipient, else (the queue row is gone, or its id is another contact's copy now) the
        contact's address."""
        row = await self.db.fetchone(_ONE_COPY_SQL, (delivery_id, contact_id))
        if row is None:  # not with an aggregate: always one row
            return None
        [[_, address, language, purged]] = json.loads(row[0])
        if address is None:
            # a contact R4 purged: "" (its address is gone), found all the same
            return ("", language) if purged else None  # (hex(NULL) is "")
        return str(address), language

    async def object_to_copies(self, items: Sequence[tuple[int, int, str, str | None]]
                               ) -> list[tuple[str, str | None, bool] | None]:
        """Objections named by unsubscribe tokens, (delivery id, contact id, channel, ip)
        each, found and recorded in ONE transaction (a GroupCommitter's write: a one-click
        POST is one hand-off to the store, not a read and then a write). For each item
        (address, language, newly suppressed), or None when the store holds no such copy
        (nothing is written for it then)."""
        now = time.time()
        hasher = self.hasher

        def write(conn: sqlite3.Connection) -> list[tuple[str, str | None, bool] | None]:
            found: list[tuple[str, str | None] | None] = [None] * len(items)
            purged: dict[int, bytes] = {}
            for document in with_rows(conn, "k(i, d, c)",
                                      [(i, item[0], item[1]) for i, item in enumerate(items)],
                                      _COPIES_SQL):
                for index, address, language, purged_hash in json.loads(document):
                    if address is not None:
                        found[index] = (address, language)
                    elif purged_hash:  # R4 purged the contact, or the period of a copy
                        # outside the ledger ended: by its hash (hex(NULL): "")
                        found[index] = ("", language)
                        purged[index] = bytes.fromhex(purged_hash)
            where, objections = [], []
            for index, copy in enumerate(found):
                if copy is not None:
                    key = ledger_form(copy[0]) if copy[0] else ""  # the form RCPT hashes
                    where.append(index)
                    digest = purged[index] if index in purged else hasher(key)
                    objections.append(Objection(digest, key, items[index][2], None,
                                                items[index][3]))
            results: list[tuple[str, str | None, bool] | None] = [None] * len(items)
            for index, added in zip(where, record_objections(conn, objections, now),
                                    strict=True):
                copy = found[index]
                assert copy is not None
                results[index] = (copy[0], copy[1], added)
            return results

        return await self.db.write(write)

    async def suppress_events(self, events: Sequence[tuple[str | None, str, str | None]],
                              channel: str, ip: str | None) -> tuple[int, int]:
        """Suppress each (event id, address, reason) in one transaction; an event id seen
        before for the same address (in an earlier call or earlier in `events`) is a replay
        and is skipped. Returns (newly suppressed, replays).

        The id is kept with the address's keyed hash: an id alone (two ESPs' "evt_1", one
        ESP numbering per list) made another person's objection a "replay", dropped; a true
        replay can only suppress the same address again."""
        now = time.time()
        objections = []
        for event_id, address, reason in events:
            digest = self.hasher(address)
            key = None if event_id is None else f"{event_id}#{digest.hex()[:32]}"
            objections.append((key, Objection(digest, address, channel, reason, ip)))

        def write(conn: sqlite3.Connection) -> tuple[int, int]:
            ids = list(dict.fromkeys(e for e, _ in objections if e is not None))
            seen = {i for document in with_rows(conn, "k(e)", [(i,) for i in ids], _REPLAYS_SQL)
                    for i in json.loads(document)}
            fresh, received, replays = [], [], 0
            for event_id, objection in objections:
                if event_id is not None:
                    if event_id in seen:
                        replays += 1
                        continue
                    seen.add(event_id)
                    received.append((event_id, now))
                fresh.append(objection)
            insert_rows(conn, "INSERT INTO webhook_events (id, received_at)", received)
            return sum(record_objections(conn, fresh, now)), replays

        return await self.db.write(write)

    async def case_twins(self, limit: int = 5) -> tuple[int, list[str]]:
        """Contacts held with capitals that another contact holds in another letter case
        (imports before 023 made one per spelling): how many, and a few of them. RCPT and
        an import take the one written alike, else the oldest (contact_id_sql)."""
        rows = await self.db.fetchall(
            "SELECT c.address FROM contacts c WHERE c.address != lower(c.address) AND ("
            " EXISTS (SELECT 1 FROM contacts d WHERE d.address = lower(c.address))"
            " OR EXISTS (SELECT 1 FROM contacts d WHERE d.address != lower(d.address)"
            "  AND lower(d.address) = lower(c.address) AND d.id != c.id)) ORDER BY c.id")
        return len(rows), [row[0] for row in rows[:limit]]

    async def compose_stored_addresses(self) -> int:
        """Once, for stores from before local parts were NFC (a900a51): each contact held
        with a decomposed address (e + U+0301) is rewritten composed, under the new key and
        hash, and an objection recorded under its old hash is recorded under the new one too,
        so that it still stops the mail. How many contacts were rewritten. A contact whose
        composed address is held already is left as it is (its objection copied all the
        same)."""
        rows = await self.db.fetchall(
            "SELECT id, address, address_hash FROM contacts WHERE address GLOB '*[^ -~]*'")
        changes = []
        for contact_id, address, old_hash in rows:
            composed = ledger_form(address)
            if composed != address:
                changes.append((contact_id, composed, bytes(old_hash), self.hasher(composed)))
        if not changes:
            return 0

        def write(conn: sqlite3.Connection) -> int:
            moved = 0
            for contact_id, composed, old_hash, new_hash in changes:
                conn.execute("INSERT OR IGNORE INTO suppression (hash, created_at, channel)"
                             " SELECT ?, created_at, channel FROM suppression WHERE hash = ?",
                             (new_hash, old_hash))
                moved += conn.execute(
                    "UPDATE OR IGNORE contacts SET address = ?, address_hash = ? WHERE id = ?",
                    (composed, new_hash, contact_id)).rowcount
            return moved

        return await self.db.write(write)

    async def forget_webhook_events(self, before: float) -> int:
        """Drop the webhook event ids received before `before`; how many. Each is kept to
        refuse a replay of its signed call, which is refused anyway once the signature's
        300 s window has passed: a day later nothing needs it, and the table stops growing."""
        return await self.db.write_one("DELETE FROM webhook_events WHERE received_at < ?",
                                       (before,))

    async def objection_counts(self) -> dict[str, int]:
        """Objections recorded so far, by channel (/metrics' counter: it never goes down)."""
        rows = await self.db.fetchall("SELECT channel, total FROM objection_counts")
        return {row[0]: row[1] for row in rows}

    async def suppression_list(self, limit: int | None = None) -> list[SuppressionEntry]:
        # a join, not a correlated subquery: SQLite builds a transient index on address_hash
        # for it, which the import does not have to maintain on every row
        rows = await self.db.fetchall(
            "SELECT s.hash, s.created_at, s.channel, min(c.address)"
            " FROM suppression s LEFT JOIN contacts c ON c.address_hash = s.hash"
            " GROUP BY s.hash ORDER BY s.created_at LIMIT ?",
            (-1 if limit is None else limit,))
        return [SuppressionEntry(*tuple(row)) for row in rows]
