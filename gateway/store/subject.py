"""Everything held on one address (GDPR 15 access) and its erasure (GDPR 17).

An address lives in clear in: the ledger (contacts, with sources and events), queue copies
(`deliveries.recipient`), held copies (`quarantine.recipient`), raw messages and their DSNs
(`messages.content`, `messages.subject`), other rows' free text (a held copy's subject, an
upstream's error), objection notifications to the accounts
(`notifications.body`) and data-subject requests (`requests.address`). The suppression list
and the erasure record hold only its keyed hash, so they outlive the erasure: an erased
address stays refused (R1). The audit log names it by that hash too, until the erasure
blanks it (store/audit.unlink): the decisions stay accountable (when, which account, which
rule, what outcome) but name no one, and the chain still verifies.

Matching is on the person form (addresses.person_form: local part lower-cased): `Jane@` and
`jane@` are the same person here, as they are for objections, but straße@ and strasse@ are
two, though casefold() gives their suppression hash one form (an objection or an erasure of
one suppresses both; the other's ledger entry and rows stay theirs). SQL compares with
subject_form() (a Python function registered on the store's connections): SQLite's lower()
folds ASCII only, and missed JOSÉ@. Objection notifications are matched on their
JSON document's email, raw messages and subjects on every spelling of the address.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import aiosqlite
import idna

from gateway.addresses import normalize_address, person_form
from gateway.delivery.dsn import dsn_address_form
from gateway.model import Contact
from gateway.security.keys import AddressHasher
from gateway.store.audit import unlink
from gateway.store.db import Database
from gateway.store.ledger import CONTACT_COLUMNS, ContactEvent, Ledger, contact_from_row
from gateway.text import searchable_text

_CONTACTS_BY_HASH = ("SELECT " + ", ".join(f"c.{name}" for name in CONTACT_COLUMNS)  # noqa: S608
                     + ", (SELECT json_group_array(json_array(s.name, s.type, s.visibility,"
                     " s.recorded_at)) FROM sources s WHERE s.contact_id = c.id)"
                     " FROM contacts c WHERE c.address_hash = ? AND subject_form(c.address) = ?"
                     " ORDER BY c.id")
# Every decision on the address, with the message's subject and what became of its copy; and
# the 'sent' rows (022_audit_sent), which say it when retention has deleted the copy's row.
_DECISIONS = (
    "SELECT a.at, a.account, a.rule, a.decision, a.message_id, m.subject,"
    " (SELECT d.state FROM deliveries d WHERE d.message_id = a.message_id"
    "  AND subject_form(d.recipient) = ? ORDER BY d.id LIMIT 1),"
    " (SELECT d.updated_at FROM deliveries d WHERE d.message_id = a.message_id"
    "  AND subject_form(d.recipient) = ? ORDER BY d.id LIMIT 1),"
    " (SELECT d.notice_version FROM deliveries d WHERE d.message_id = a.message_id"
    "  AND subject_form(d.recipient) = ? ORDER BY d.id LIMIT 1),"
    " a.notice_version"
    " FROM audit a LEFT JOIN messages m ON m.id = a.message_id"
    " WHERE a.recipient_hash = ? ORDER BY a.id")
# The (table, column) pairs holding the address in clear, beside contacts and messages.
_ADDRESS_COLUMNS = {("quarantine", "recipient"), ("deliveries", "recipient"),
                    ("notifications", "body"), ("requests", "address")}
ERASED_PLACEHOLDER = b"erased@erased.invalid"  # RFC 2606: .invalid never resolves


@dataclass(frozen=True)
class Decision:
    """One recipient decision of the audit log, as the person should see it."""

    at: float
    account: str | None
    rule: str
    decision: str              # allow | reject | quarantine
    message_id: str | None
    subject: str | None
    delivery: str | None       # queued | deferred | failed | sent, when a copy was queued
    delivery_at: float | None
    notice_version: str | None = None  # the notice the sent copy carried (COMPLIANCE 4.5)

    def as_json(self) -> dict[str, object]:
        return dict(vars(self))


@dataclass(frozen=True)
class HeldCopy:
    message_id: str
    created_at: float
    account: str | None
    subject: str
    rule: str
    reason: str
    state: str
    decided_at: float | None
    decided_by: str | None = None
    decision_reason: str | None = None  # the reviewer's words: the person's data too

    def as_json(self) -> dict[str, object]:
        return dict(vars(self))


@dataclass(frozen=True)
class Notice:
    """A notification naming the address sent (or to send) to an account's notify URL:
    GDPR 15(1)(c), a recipient of the person's data."""

    account: str
    event: str  # objection
    state: str  # pending | sent | failed
    created_at: float

    def as_json(self) -> dict[str, object]:
        return dict(vars(self))


@dataclass(frozen=True)
class SubjectRequest:
    id: int
    kind: str
    received_at: float
    due_at: float
    closed_at: float | None
    # the operator's words on it (how it was answered, an extension's reason, which GDPR
    # 12(3) says the person is given): the person's data too
    note: str | None = None

    def as_json(self) -> dict[str, object]:
        return dict(vars(self))


@dataclass(frozen=True)
class SubjectRecord:
    """GDPR 15: what the store holds on one address."""

    address: str
    contacts: list[tuple[Contact, list[ContactEvent]]]
    suppressed_at: float | None
    suppression_channel: str | None
    decisions: list[Decision]
    quarantine: list[HeldCopy]
    requests: list[SubjectRequest]
    erased_at: list[float] = field(default_factory=list)
    notifications: list[Notice] = field(default_factory=list)
    # R4's purges of the address: (the retention clock's start, when purged), kept by hash
    retention_purges: list[tuple[float, float]] = field(default_factory=list)

    @property
    def holds_anything(self) -> bool:
        return bool(self.contacts or self.suppressed_at or self.decisions or self.quarantine
                    or self.requests or self.erased_at or self.notifications
                    or self.retention_purges)


@dataclass(frozen=True)
class Erasure:
    address: str
    removed: dict[str, int]
    closed_requests: list[int]
    newly_suppressed: bool
    # (account, JSON body) of the objection notifications naming the address that were still
    # to send when the erasure deleted them: the caller sends them now (notify.tell_erasure)
    unsent: list[tuple[str, str]] = field(default_factory=list)
    # copies a gateway process held for delivery when they were deleted: maybe on their way
    being_delivered: int = 0
    # the accounts that may hold the address (mailed it, decided on it, told of it): those
    # the erasure is told to (GDPR 19)
    holders: set[str] = field(default_factory=set)


def _decisions(rows: list[tuple[Any, ...]]) -> list[Decision]:
    """The audit's decisions on one address (_DECISIONS' rows), each allowed message's with
    the time and notice version of its 'sent' row: the copy's own row, which said it, is
    deleted by retention once finished, the audit row never."""
    sent: dict[str, tuple[float, str | None]] = {}
    for row in rows:
        if row[3] == "sent" and row[4] is not None:
            sent.setdefault(row[4], (row[0], row[9]))
    decisions = []
    for row in rows:
        if row[3] == "sent":
            continue
        decision = Decision(*row[:9])
        went = sent.get(decision.message_id or "") if decision.decision == "allow" else None
        if went is not None:
            decision = replace(
                decision, delivery=decision.delivery or "sent",
                delivery_at=decision.delivery_at if decision.delivery else went[0],
                notice_version=decision.notice_version or went[1])
        decisions.append(decision)
    return decisions


class SubjectStore:
    def __init__(self, db: Database, hasher: AddressHasher) -> None:
        self.db = db
        self.hasher = hasher

    # --- GDPR 15 -----------------------------------------------------------------------

    async def gather(self, address: str) -> SubjectRecord:
        """Everything held on `address` (ValueError if it is not one)."""
        key = normalize_address(address)
        folded, digest = person_form(key), self.hasher(key)
        ledger = Ledger(self.db, self.hasher)
        contacts = []
        for row in await self.db.fetchall(_CONTACTS_BY_HASH, (digest, folded)):
            contact = contact_from_row(tuple(row))
            contacts.append((contact, await ledger.events(contact.id or 0)))
        suppression = await self.db.fetchone(
            "SELECT created_at, channel FROM suppression WHERE hash = ?", (digest,))
        decisions = _decisions([tuple(row) for row in await self.db.fetchall(
            _DECISIONS, (folded, folded, folded, digest))])
        held = [HeldCopy(*tuple(row)[1:]) for row in await self.db.fetchall(
            "SELECT recipient, message_id, created_at, account, subject, rule, reason, state,"
            " decided_at, decided_by, decision_reason"
            " FROM quarantine WHERE subject_form(recipient) = ? ORDER BY id", (folded,))]
        # and those an erasure or R4's purge left under the address's hash, with their dates
        pseudonyms = [f"{prefix}:{digest.hex()[:16]}" for prefix in ("erased", "purged")]
        requests = [SubjectRequest(*tuple(row)[1:]) for row in await self.db.fetchall(
            "SELECT address, id, kind, received_at, due_at, closed_at, note FROM requests"
            " WHERE subject_form(address) = ? OR address IN (?, ?) ORDER BY id",
            (folded, *pseudonyms))]
        erased = [row[0] for row in await self.db.fetchall(
            "SELECT erased_at FROM erasures WHERE address_hash = ? ORDER BY id", (digest,))]
        notices = [Notice(*tuple(row)) for row in await self.db.fetchall(
            "SELECT account, json_extract(body, '$.event'), state, created_at"
            " FROM notifications WHERE subject_form(json_extract(body, '$.email')) = ?"
            " ORDER BY id", (folded,))]
        purges = [(float(row[0]), float(row[1])) for row in await self.db.fetchall(
            "SELECT clock_start, purged_at FROM retention_purges WHERE address_hash = ?",
            (digest,))]
        named = contacts[0][0].address if contacts else key  # as the ledger spells it
        return SubjectRecord(named, contacts, suppression[0] if suppression else None,
                             suppression[1] if suppression else None, decisions, held,
                             requests, erased, notices, purges)

    # --- GDPR 17 -----------------------------------------------------------------------

    async def open_access_requests(self, address: str) -> list[tuple[int, float]]:
        """(id, due date) of the access requests from `address` not answered yet."""
        rows = await self.db.fetchall(
            "SELECT id, due_at FROM requests WHERE closed_at IS NULL AND kind = 'access'"
            " AND subject_form(address) = ? ORDER BY id",
            (person_form(normalize_address(address)),))
        return [(int(row[0]), float(row[1])) for row in rows]

    async def encoded_mentions(self, address: str) -> list[tuple[str, list[int]]]:
        """The kept messages that still name `address` once decoded (a base64 or
        quoted-printable part, an encoded word, a %-escaped mailto), which the erasure's
        byte-level replacement cannot reach: (message id, ids of the held copies that keep
        it). Read-only, after the erasure, outside its transaction."""
        pattern = _spellings(normalize_address(address))
        found: list[tuple[str, list[int]]] = []
        async with self.db.reader.execute(
                "SELECT id, content FROM messages WHERE content IS NOT NULL") as cur:
            async for row in cur:
                content = bytes(row[1])
                lowered = content.lower()
                if not any(marker in lowered for marker in _ENCODED_MARKERS):
                    continue  # nothing encoded: the erasure's replacement saw it all
                if pattern.search(searchable_text(content)):
                    found.append((str(row[0]), []))
        for message_id, held in found:
            rows = await self.db.fetchall(
                "SELECT id FROM quarantine WHERE message_id = ? AND state = 'held'"
                " ORDER BY id", (message_id,))
            held.extend(int(r[0]) for r in rows)
        return found

    async def erase(self, address: str, operator: str) -> Erasure:
        """Delete every piece of data naming `address`, keep (or add) its suppression hash and
        record the erasure, in one transaction. The caller then compacts the file
        (Database.compact) so that no deleted page keeps the address either."""
        key = normalize_address(address)
        folded, digest = person_form(key), self.hasher(key)
        now = time.time()
        async with self.db.transaction() as conn:
            await conn.execute("PRAGMA secure_delete = ON")  # zero what is deleted, at once
            names = [(row[0], row[1]) for row in await conn.execute_fetchall(
                "SELECT first_name, last_name FROM contacts WHERE address_hash = ?"
                " AND subject_form(address) = ?", (digest, folded))]
            removed = {"contacts": await _delete_contacts(conn, digest, folded)}
            cur = await conn.execute(
                "INSERT OR IGNORE INTO suppression (hash, created_at, channel)"
                " VALUES (?, ?, 'erasure')", (digest, now))
            newly_suppressed = cur.rowcount == 1
            # an entry there before (by hand, a one-click) becomes the erasure's: it is all
            # that remains, and `suppress remove` lifts an erasure's only with --force
            # (how it objected first stays, for `report`'s objection figures)
            await conn.execute("UPDATE suppression SET objected_by = channel,"
                               " channel = 'erasure' WHERE hash = ? AND channel != 'erasure'",
                               (digest,))
            touched: set[str] = set()
            for table in ("quarantine", "deliveries"):
                ids, messages = await _rows_for(conn, table, "recipient", folded)
                if table == "deliveries":  # a running gateway may be sending one right now
                    [(sending,)] = await conn.execute_fetchall(
                        "SELECT count(*) FROM deliveries WHERE state IN ('queued', 'deferred')"
                        " AND claimed_until > ? AND id IN (SELECT value FROM json_each(?))",
                        (now, json.dumps(ids)))
                    in_flight = int(sending)
                touched |= messages
                await conn.executemany(f"DELETE FROM {table} WHERE id = ?",  # noqa: S608
                                       [(i,) for i in ids])
                removed[table] = len(ids)
            removed["messages"], removed["messages_scrubbed"] = await _scrub_messages(
                conn, touched, key)
            removed["names_scrubbed"] = await _scrub_names(conn, touched, names)
            removed["texts_scrubbed"] = await _scrub_texts(conn, key)
            ids, _ = await _rows_for(conn, "notifications", "body", folded)
            unsent = [(str(row[0]), str(row[1])) for row in await conn.execute_fetchall(
                "SELECT account, body FROM notifications WHERE state = 'pending'"
                " AND id IN (SELECT value FROM json_each(?)) ORDER BY id", (json.dumps(ids),))]
            # the accounts that may hold the address: those that mailed it or decided on it,
            # and those told of its objection (the others are not to learn it now)
            holders = {str(row[0]) for row in await conn.execute_fetchall(
                "SELECT account FROM audit WHERE recipient_hash = ? AND account IS NOT NULL"
                " UNION SELECT account FROM notifications"
                " WHERE id IN (SELECT value FROM json_each(?))", (digest, json.dumps(ids)))}
            await conn.executemany("DELETE FROM notifications WHERE id = ?", [(i,) for i in ids])
            removed["notifications"] = len(ids)
            # the decisions about the person stay (what was decided, when, for whom) but name
            # no one (026_audit_unlinkable): export found them by the hash the suppression
            # entry keeps (COMPLIANCE 6: all of it but the suppression hash)
            removed["audit_unlinked"] = await unlink(conn, digest)
            closed = await _pseudonymise_requests(conn, folded, digest, now, operator)
            # the opt-out webhook's event ids already seen (kept a day against replays) end
            # with the address's hash, and the caller's id may name the person or their
            # record at the ESP (store/ledger.py)
            cur = await conn.execute("DELETE FROM webhook_events WHERE substr(id, -33) = ?",
                                     ("#" + digest.hex()[:32],))
            removed["webhook_events"] = max(0, cur.rowcount)
            removed["requests"] = len(closed[0])
            await conn.execute(
                "INSERT INTO erasures (address_hash, erased_at, operator, removed, audit_mark)"
                " VALUES (?, ?, ?, ?, (SELECT coalesce(max(id), 0) FROM audit))",
                (digest, now, operator, json.dumps(removed)))
        return Erasure(key, removed, closed[1], newly_suppressed, unsent, in_flight,
                       holders)


async def erased_hashes(db: Database) -> dict[bytes, float]:
    """Keyed hash -> time of every erased address: `contacts import` refuses to bring one
    back into the ledger from an old file (erased data must stay erased, GDPR 17)."""
    rows = await db.fetchall("SELECT address_hash, max(erased_at) FROM erasures"
                             " GROUP BY address_hash")
    return {bytes(row[0]): float(row[1]) for row in rows}


async def _delete_contacts(conn: aiosqlite.Connection, digest: bytes, folded: str) -> int:
    """Delete the ledger entries of the address (sources and events go with them: ON DELETE
    CASCADE): `Jane@` and `jane@` both, not strasse@ for straße@ (they share a hash)."""
    # the unsubscribe links of the copies already sent name the contact's id: kept with the
    # keyed hash the suppression entry keeps anyway (021_purged_contacts), so the person's
    # own link still says "unsubscribed" (it answered "not valid": NESTOR's link "did
    # nothing"); the language goes (the page takes the controller's)
    await conn.execute(
        "INSERT OR REPLACE INTO purged_contacts (contact_id, address_hash, language)"
        " SELECT id, address_hash, NULL FROM contacts WHERE address_hash = ?"
        " AND subject_form(address) = ?", (digest, folded))
    await conn.execute("UPDATE purged_contacts SET language = NULL WHERE address_hash = ?",
                       (digest,))
    cur = await conn.execute("DELETE FROM contacts WHERE address_hash = ?"
                             " AND subject_form(address) = ?", (digest, folded))
    # and R4's record of when its retention clock started (an import after the erasure is
    # refused by the erasure's own record: nothing else needs it)
    await conn.execute("DELETE FROM retention_purges WHERE address_hash = ?", (digest,))
    return cur.rowcount


async def _rows_for(conn: aiosqlite.Connection, table: str, column: str,
                    folded: str) -> tuple[list[int], set[str]]:
    """Ids (and message ids, where the table has them) of the rows of `table` whose
    `column` is the address (in suppression form `folded`); for notifications, whose JSON
    document's email is."""
    assert (table, column) in _ADDRESS_COLUMNS, (table, column)
    has_message = table in ("quarantine", "deliveries")
    value = "json_extract(body, '$.email')" if column == "body" else column
    sql = (f"SELECT id{', message_id' if has_message else ''} FROM {table}"  # noqa: S608
           f" WHERE subject_form({value}) = ?")
    ids, messages = [], set()
    async with conn.execute(sql, (folded,)) as cur:
        async for row in cur:
            ids.append(int(row[0]))
            if has_message:
                messages.add(str(row[1]))
    return ids, messages


# what a message holds when some of its text is encoded
_ENCODED_MARKERS = (b"base64", b"quoted-printable", b"=?", b"%")


def _spellings(key: str) -> re.Pattern[str]:
    """The address as a message may write it: any case, its domain as A-labels (the ledger's
    form) or as Unicode, and, for an address beyond ASCII, as a DSN escapes it (`\\x{E9}`
    in Final-Recipient, RFC 6533; `\\xe9` in the 7-bit Diagnostic-Code)."""
    local, _, domain = key.rpartition("@")
    forms = {domain}
    try:
        forms.add(idna.decode(domain))
    except idna.IDNAError:
        pass
    addresses = {f"{local}@{form}" for form in forms}
    for address in list(addresses):
        if not address.isascii():
            addresses.add(address.encode("ascii", "backslashreplace").decode("ascii"))
            addresses.add(dsn_address_form(address))
    # the whole address only: erasing jane@example.net must not rewrite mary.jane@ or
    # jane@example.net.example in another person's queued message. A URL's parameter
    # (?email=jane@example.net) is the address too: its "name=" is kept (`pre`) and put
    # back by erase_in; x=jane@ alone stays another address
    return re.compile(r"(?P<pre>(?<![\w.!#$%&'*+/=?^`{|}~\\-])|(?<=[?&;])[\w.-]{1,64}=)(?:"
                      + "|".join(re.escape(address) for address in sorted(addresses))
                      + r")(?![\w-]|\.[\w-])", re.IGNORECASE)


# An address field (RFC 5322 3.6.2-3.6.6, folded lines and all) of a header section, and in
# it the display name written before the placeholder (quoted strings, words, comments) or a
# comment after it ("jane@example.net (Jane Doe)"). Possessive and atomic throughout: the
# three runs of white space a plain pattern allowed matched the same spaces, and a folded
# line of 990 spaces took 3.7 s, three 99 s, inside the erasure's write lock (diff review).
_ADDRESS_FIELD = re.compile(
    r"^(?:to|cc|bcc|from|reply-to|sender|resent-(?:to|cc|bcc|from|sender)|delivered-to"
    r"|x-original-to|disposition-notification-to|return-receipt-to|errors-to)[ \t]*:"
    r"[^\r\n]*+(?:\r?\n[ \t][^\r\n]*+)*+", re.IGNORECASE | re.MULTILINE)
_WS = r"(?>(?:[ \t]|\r?\n[ \t])*)"
_COMMENT = r"\((?:[^()\\\r\n]|\\.)*+\)"
_TOKEN = r'(?:"(?:[^"\\\r\n]|\\.|\r?\n[ \t])*+"|' + _COMMENT + r'|[^\s",:;<>@()\[\]]++)'
_PLACEHOLDER_RE = re.escape(ERASED_PLACEHOLDER.decode("ascii"))
_NAMED_PLACEHOLDER = re.compile(
    r"(?<=[:,])" + _WS + r"(?:" + _TOKEN + r"(?:" + _WS + _TOKEN + r")*+" + _WS + r")?+"
    + "<" + _PLACEHOLDER_RE + ">")
_COMMENTED_PLACEHOLDER = re.compile("(<?" + _PLACEHOLDER_RE + ">?)" + _WS + _COMMENT)
# where a header section starts besides the message's own: the part of a DSN or a
# forwarded message that holds another message's header (text/rfc822-headers, message/*)
_EMBEDDED_HEADER = re.compile(
    r"^content-type:[ \t]*+(?:text/rfc822-headers|message/(?:rfc822|global-headers|global))"
    r"\b", re.IGNORECASE | re.MULTILINE)
_BLANK_LINE = re.compile(r"\r?\n\r?\n")


def erase_in(pattern: re.Pattern[str], text: str, *, message: bool = False) -> str:
    """`text` with every spelling of the address (`_spellings`) replaced by the
    placeholder; in a `message`, the display name that went with it in an address field of
    a header section is removed too (`To: "Marie Curie" <...>` named her still), and
    nothing else: a body's "From: now on, ... Jane Doe <...>" is prose."""
    placeholder = ERASED_PLACEHOLDER.decode("ascii")
    text = pattern.sub(lambda m: m.group("pre") + placeholder, text)
    if not message or placeholder not in text:
        return text

    def unnamed(field: re.Match[str]) -> str:
        value = _NAMED_PLACEHOLDER.sub(f" <{placeholder}>", field.group())
        return _COMMENTED_PLACEHOLDER.sub(r"\1", value)

    pieces, done = [], 0
    for start, end in _header_sections(text):
        pieces += [text[done:start], _ADDRESS_FIELD.sub(unnamed, text[start:end])]
        done = end
    return "".join(pieces) + text[done:]


def _header_sections(text: str) -> list[tuple[int, int]]:
    """(start, end) of the message's header section and of each header section held in a
    part (`_EMBEDDED_HEADER`: after that part's own header, up to its next blank line)."""
    first = _BLANK_LINE.search(text)
    sections = [(0, first.start() if first else len(text))]
    for part in _EMBEDDED_HEADER.finditer(text):
        own_end = _BLANK_LINE.search(text, part.end())
        if own_end is None:
            continue
        held_end = _BLANK_LINE.search(text, own_end.end())
        start = own_end.end()
        if start >= sections[-1][1]:
            sections.append((start, held_end.start() if held_end else len(text)))
    return sections


def _mentions(pattern: re.Pattern[str], content: object, subject: object) -> bool:
    return any(isinstance(text, str) and pattern.search(text) for text in (
        content.decode("utf-8", "surrogateescape") if isinstance(content, bytes) else None,
        subject))


async def _scrub_messages(conn: aiosqlite.Connection, touched: set[str],
                          key: str) -> tuple[int, int]:
    """Delete the raw messages that were only for the address; in any other kept message
    (another recipient's copy still queued, a DSN naming the address) replace the address
    by a placeholder. Returns (deleted, scrubbed)."""
    deleted = 0
    for message_id in sorted(touched):
        cur = await conn.execute(
            "DELETE FROM messages WHERE id = ?"
            " AND NOT EXISTS (SELECT 1 FROM deliveries WHERE message_id = ?)"
            " AND NOT EXISTS (SELECT 1 FROM quarantine WHERE message_id = ?)",
            (message_id, message_id, message_id))
        deleted += cur.rowcount
    pattern = _spellings(key)
    await conn.create_function("mentions_subject", 2,
                               lambda content, subject: _mentions(pattern, content, subject))
    scrubbed = []
    async with conn.execute("SELECT id, content, subject FROM messages"
                            " WHERE mentions_subject(content, subject)") as cur:
        async for row in cur:
            content = erase_in(pattern, row[1].decode("utf-8", "surrogateescape"),
                               message=True).encode("utf-8", "surrogateescape") \
                if row[1] is not None else None
            subject = erase_in(pattern, row[2]) if row[2] is not None else None
            scrubbed.append((content, subject, row[0]))
    await conn.executemany("UPDATE messages SET content = ?, subject = ? WHERE id = ?", scrubbed)
    return deleted, len(scrubbed)


NAME_PLACEHOLDER = "(name erased)"


def _full_names(names: Sequence[Sequence[object]]) -> re.Pattern[str] | None:
    """The person's full name as a message writes it ("Jane Doe", "Doe Jane", "Doe, Jane",
    any case and spacing), from the ledger's first and last names; None without both. A
    name alone is not looked for: "Martin" or "Rose" is everyone's word."""
    forms = set()
    for first, last in names:
        if isinstance(first, str) and isinstance(last, str) and first.strip() \
                and last.strip():
            f, la = (r"\s+".join(map(re.escape, part.split())) for part in (first, last))
            forms |= {rf"{f}\s+{la}", rf"{la},?\s+{f}"}
    if not forms:
        return None
    return re.compile(r"(?<!\w)(?:" + "|".join(sorted(forms)) + r")(?!\w)", re.IGNORECASE)


async def _scrub_names(conn: aiosqlite.Connection, touched: set[str],
                       names: Sequence[Sequence[object]]) -> int:
    """The person's full name replaced in the messages that were addressed to them and are
    kept for other recipients (their content, their subject) and in those copies' held
    rows: a subject "Offer for Jane Doe" sent to her and to others named her after the
    erasure, in five rows (data-lifecycle audit). Other messages are other people's."""
    pattern = _full_names(names)
    if pattern is None or not touched:
        return 0
    ids = json.dumps(sorted(touched))
    changed = 0
    rows = await conn.execute_fetchall(
        "SELECT id, content, subject FROM messages WHERE id IN (SELECT value FROM"
        " json_each(?))", (ids,))
    for message_id, content, subject in rows:
        text = content.decode("utf-8", "surrogateescape") if content is not None else None
        new_text = pattern.sub(NAME_PLACEHOLDER, text) if text is not None else None
        new_subject = pattern.sub(NAME_PLACEHOLDER, subject) if isinstance(subject, str) \
            else subject
        if new_text != text or new_subject != subject:
            await conn.execute(
                "UPDATE messages SET content = ?, subject = ? WHERE id = ?",
                (new_text.encode("utf-8", "surrogateescape") if new_text is not None
                 else None, new_subject, message_id))
            changed += 1
    held = await conn.execute_fetchall(
        "SELECT id, subject FROM quarantine WHERE message_id IN (SELECT value FROM"
        " json_each(?)) AND subject IS NOT NULL", (ids,))
    for row_id, subject in held:
        new_subject = pattern.sub(NAME_PLACEHOLDER, subject)
        if new_subject != subject:
            await conn.execute("UPDATE quarantine SET subject = ? WHERE id = ?",
                               (new_subject, row_id))
            changed += 1
    return changed


# other people's rows whose free text may quote the address: a held copy's subject line, the
# rule's reason or the reviewer's, an upstream's error for another copy ("550 <jane@...> and
# <bob@...>"), an operator's note on another person's request ("on behalf of his wife
# jane@..."), another contact's consent proof. Not an envelope sender (messages.mail_from):
# the sending account's address, which queued copies still use. Not the ledger's event log
# (contact_events: append-only, its proof is what the event was).
_TEXT_COLUMNS = (("quarantine", "subject"), ("quarantine", "reason"),
                 ("quarantine", "decision_reason"), ("deliveries", "last_error"),
                 ("requests", "note"), ("contacts", "consent_proof"))


async def _scrub_texts(conn: aiosqlite.Connection, key: str) -> int:
    """Replace the address by the placeholder in _TEXT_COLUMNS; how many rows changed."""
    pattern = _spellings(key)
    await conn.create_function("mentions_address", 1,
                               lambda text: isinstance(text, str)
                               and pattern.search(text) is not None)
    changed = 0
    for table, column in _TEXT_COLUMNS:
        async with conn.execute(f"SELECT id, {column} FROM {table}"  # noqa: S608 - ours
                                f" WHERE mentions_address({column})") as cur:
            rows = [(erase_in(pattern, text), row_id)
                    for row_id, text in await cur.fetchall()]
        await conn.executemany(f"UPDATE {table} SET {column} = ? WHERE id = ?",  # noqa: S608
                               rows)
        changed += len(rows)
    return changed


async def _pseudonymise_requests(conn: aiosqlite.Connection, folded: str,
                                 digest: bytes, now: float, operator: str
                                 ) -> tuple[list[int], list[int]]:
    """Requests from the address keep their dates (accountability: GDPR 12(3) deadlines) but
    name it by its hash only; the open ones are closed by the erasure. Returns (all ids,
    ids closed now)."""
    ids, _ = await _rows_for(conn, "requests", "address", folded)
    marker = "erased:" + digest.hex()[:16]
    closed = []
    for request_id in ids:
        # an erasure request is answered by it, an objection by its suppression entry; an
        # access request is only closed (`subject erase` asks for --unanswered first), and
        # its note says it went unanswered (it read as answered)
        cur = await conn.execute(
            "UPDATE requests SET closed_at = ?, note = CASE WHEN kind IN ('erasure',"
            " 'objection') THEN ? ELSE ? END WHERE id = ? AND closed_at IS NULL",
            (now, f"answered by the erasure of the address ({operator})",
             f"closed unanswered: the address was erased ({operator}) before this "
             "request was answered", request_id))
        if cur.rowcount:
            closed.append(request_id)
        else:
            # an operator's note on a request answered before is about the person ("sent by
            # post to Jane Doe, 12 rue des Lilas"): it goes, the dates stay
            await conn.execute(
                "UPDATE requests SET note = ? WHERE id = ? AND note IS NOT NULL AND note != ''",
                (f"(note erased with the address, {operator})", request_id))
        await conn.execute("UPDATE requests SET address = ? WHERE id = ?", (marker, request_id))
    return ids, closed
