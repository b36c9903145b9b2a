"""The retention of what names an address the ledger does not hold (gateway retention run),
on a real SQLite file: R4's purge deletes a contact's records with it; these had no end."""

from __future__ import annotations

import json
import time

from gateway.model import PolicyKnobs
from gateway.security.keys import AddressHasher
from gateway.store.db import Database
from gateway.store.queue import IncomingMessage, QueueStore, SentMark
from gateway.store.requests import RequestStore
from gateway.store.retention import Retention
from gateway.store.subject import SubjectStore

from ledger_cases import import_csv

DAY = 86400.0
KEPT_DAYS = 30  # quarantine.retention_days


def retention(db: Database, hasher: AddressHasher) -> Retention:
    return Retention(db, PolicyKnobs(), hasher, KEPT_DAYS)


async def hold(db: Database, message_id: str, recipient: str, rule: str, age_days: float,
               state: str = "held") -> None:
    """A copy held as flow.accept writes it: the message, with its subject, and its row."""
    at = time.time() - age_days * DAY
    await db.write_one(
        "INSERT OR IGNORE INTO messages (id, received_at, account, client_ip, mail_from, size,"
        " content, subject) VALUES (?, ?, 'crm', '127.0.0.1', 'news@example.com', 10, ?, ?)",
        (message_id, at, f"To: {recipient}\r\nSubject: For Zed\r\n\r\nhi\r\n".encode(),
         f"For Zed {message_id}"))
    await db.write_one(
        "INSERT INTO quarantine (message_id, created_at, account, client_ip, mail_from,"
        " recipient, subject, rule, reason, basis, state, decided_at) VALUES"
        " (?, ?, 'crm', '127.0.0.1', 'news@example.com', ?, 'For Zed', ?, 'r', 'b', ?, ?)",
        (message_id, at, recipient, rule, state, None if state == "held" else at))


async def naming(db: Database, needle: str) -> list[str]:
    """The tables with a row that holds `needle` in some text column."""
    tables = [row[0] for row in await db.fetchall(
        "SELECT name FROM sqlite_master WHERE type = 'table'")]
    found = []
    for table in tables:
        for row in await db.fetchall(f"SELECT * FROM {table}"):  # noqa: S608 - the schema's
            if any(isinstance(v, str) and needle in v for v in row) \
                    or any(isinstance(v, bytes) and needle.encode() in v for v in row):
                found.append(table)
                break
    return found


async def test_decided_quarantine_rows_of_addresses_outside_the_ledger_end(db, hasher):
    """GDPR 5-1-e (KASPR: no unlimited retention): a copy held for an address the ledger
    never held (R2 quarantined) kept the address, subject and sender in its rejected row,
    and the message's subject, for ever. Now a decided row goes once it is older than
    quarantine.retention_days, with its message; a held one is the purge's (it rejects it
    then), a younger one is still listed, and a ledger contact's stays with the contact,
    for access requests, until R4 purges it."""
    import_csv(db, hasher, "email,collected_at,source_name,source_type\n"
                           "known@example.com,2026-01-05,Form,direct\n")
    await hold(db, "OLD", "zed@unknown.example", "R2", 40, "rejected")
    await hold(db, "RELEASED", "zed@unknown.example", "R2", 40, "released")
    await hold(db, "YOUNG", "amy@unknown.example", "R2", 3, "rejected")
    await hold(db, "HELD", "eve@unknown.example", "R2", 40)
    await hold(db, "KNOWN", "Known@Example.com", "R9", 400, "rejected")
    before = await SubjectStore(db, hasher).gather("zed@unknown.example")
    assert [h.message_id for h in before.quarantine] == ["OLD", "RELEASED"]  # until then

    purged = await retention(db, hasher).purge()

    assert purged.addresses == []
    assert purged.removed["outside_quarantine"] == 2
    assert purged.removed["messages"] == 2
    assert await naming(db, "zed@unknown.example") == []
    assert await naming(db, "For Zed OLD") == []
    left = await db.fetchall("SELECT message_id FROM quarantine ORDER BY id")
    assert [row[0] for row in left] == ["YOUNG", "HELD", "KNOWN"]
    assert (await SubjectStore(db, hasher).gather("zed@unknown.example")).quarantine == []


async def test_copies_held_or_in_flight_when_r4_purged_their_contact_end_too(db, hasher):
    """R4's purge leaves a held copy (a release decides again) and a copy a process is
    sending (compose's R2 check fails it); it deleted only what was finished as it ran, so
    once decided or failed they named the purged person for ever."""
    old = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 2000 * DAY))
    import_csv(db, hasher, "email,collected_at,source_name,source_type\n"
                           f"dave@b2b.example,{old},Form,direct\n")
    await hold(db, "HELD", "dave@b2b.example", "R9", 1)
    queue = QueueStore(db, "me")
    [sending] = await queue.commit_messages([IncomingMessage(
        "SENDING", time.time(), "crm", "127.0.0.1", "news@example.com",
        b"Subject: For Dave\r\n\r\nhi\r\n", ("dave@b2b.example",), subject="For Dave")])
    await db.write_one("UPDATE deliveries SET rule = 'T1'")  # not withdrawn by the purge
    assert (await retention(db, hasher).purge()).addresses == ["dave@b2b.example"]
    # then the held copy is rejected and the one on its way fails
    await db.write_one("UPDATE quarantine SET state = 'rejected', decided_at = ?",
                       (time.time(),))
    await queue.fail(sending[0].delivery_id, "550 5.7.1 R2 recipient no longer in the "
                                             "contact ledger before delivery (purged)")
    assert (await retention(db, hasher).purge()).removed["outside_copies"] == 0  # not yet

    later = time.time() + (KEPT_DAYS + 1) * DAY
    removed = (await retention(db, hasher).purge(later)).removed

    assert (removed["outside_quarantine"], removed["outside_copies"]) == (1, 1)
    assert await naming(db, "dave@b2b.example") == []
    assert await naming(db, "For Dave") == []


async def test_finished_copies_notifications_and_requests_outside_the_ledger_end(db, hasher):
    """A service message's copy (T1 reads no ledger), an objection notification and an
    answered request of an address the ledger does not hold had no retention at all. Past
    the period the copy and the notification go, and the request keeps its dates under the
    keyed hash, as R4's purge leaves one (GDPR 12(3) accountability), without the operator's
    note about the person; what is not done with, and a ledger contact's, stay."""
    import_csv(db, hasher, "email,collected_at,source_name,source_type\n"
                           "known@example.com,2026-01-05,Form,direct\n")
    queue = QueueStore(db, "me")

    def message(mid: str, rcpt: str) -> IncomingMessage:
        return IncomingMessage(mid, time.time(), "crm", "127.0.0.1", "news@example.com",
                               f"Subject: {mid}\r\n\r\nbody\r\n".encode(), (rcpt,),
                               subject=mid)

    receipt, known, waiting = await queue.commit_messages([
        message("RECEIPT", "ann@customer.example"), message("KNOWN", "known@example.com"),
        message("WAITING", "bea@customer.example")])
    await db.write_one("UPDATE deliveries SET rule = 'T1'")
    await queue.mark_sent([SentMark(receipt[0].delivery_id), SentMark(known[0].delivery_id)])
    for address, state in (("ann@customer.example", "sent"),
                           ("bea@customer.example", "pending"),
                           ("known@example.com", "sent")):
        await db.write_one(
            "INSERT INTO notifications (account, url, body, state, next_attempt_at,"
            " created_at, updated_at) VALUES ('crm', 'https://crm.example/n', ?, ?, ?, ?, ?)",
            (json.dumps({"event": "objection", "email": address}), state, time.time(),
             time.time(), time.time()))
    requests = RequestStore(db)
    answered = await requests.open("Ann@customer.example", "access")
    await requests.close(answered.id, "sent by post to Ann Smith, 3 rue des Lilas")
    still_open = await requests.open("bea@customer.example", "erasure")
    mine = await requests.open("known@example.com", "access")
    await requests.close(mine.id, "sent")

    later = time.time() + (KEPT_DAYS + 1) * DAY
    purged = await retention(db, hasher).purge(later)

    assert {key: purged.removed[key] for key in (
        "outside_copies", "outside_notifications", "outside_requests", "messages")} == {
        "outside_copies": 1, "outside_notifications": 1, "outside_requests": 1,
        "messages": 1}
    assert await naming(db, "ann@customer.example") == []
    assert await naming(db, "Ann Smith") == []
    rows = {row[0]: (row[1], row[2]) for row in await db.fetchall(
        "SELECT id, address, closed_at FROM requests")}
    assert rows[answered.id][0].startswith("purged:") and rows[answered.id][1] is not None
    assert rows[still_open.id][0] == "bea@customer.example"
    assert rows[mine.id][0] == "known@example.com"
    # the person still finds the answered request by their address's hash
    found = await SubjectStore(db, hasher).gather("ann@customer.example")
    assert [r.id for r in found.requests] == [answered.id]
    left = await db.fetchall("SELECT message_id FROM deliveries ORDER BY id")
    assert [row[0] for row in left] == ["KNOWN", "WAITING"]
    notes = await db.fetchall("SELECT json_extract(body, '$.email') FROM notifications"
                              " ORDER BY id")
    assert [row[0] for row in notes] == ["bea@customer.example", "known@example.com"]
    assert waiting  # queued: not done with


async def test_the_link_of_a_copy_outside_the_ledger_still_works_after_its_period(db, hasher):
    """Its row deleted at the end of its period, the copy's unsubscribe link and address
    found nothing: "not valid" and 550 5.1.1 to a person who never objected (diff review;
    COMPLIANCE 5). The keyed hash is kept for the link (purged_copies), as purged_contacts
    keeps it for a purged contact, until policy.max_retention_days."""
    from gateway.store.ledger import Ledger, LedgerLookup
    queue = QueueStore(db, "me")
    [[copy]] = await queue.commit_messages([IncomingMessage(
        "RECEIPT", time.time(), "crm", "127.0.0.1", "news@example.com",
        b"Subject: receipt\r\n\r\nbody\r\n", ("Ann@Customer.example",), subject="receipt")])
    await db.write_one("UPDATE deliveries SET rule = 'T1'")
    await queue.mark_sent([SentMark(copy.delivery_id)])
    later = time.time() + (KEPT_DAYS + 1) * DAY
    assert (await retention(db, hasher).purge(later)).removed["outside_copies"] == 1
    assert await naming(db, "ann@") == [] and await naming(db, "Ann@") == []
    ledger = Ledger(db, hasher)
    assert await ledger.recipient_of_copy(copy.delivery_id, 0) == ("", None)  # found
    [(address, _language, added)] = await ledger.object_to_copies(
        [(copy.delivery_id, 0, "one-click", "192.0.2.1")])
    assert (address, added) == ("", True)
    lookup = LedgerLookup(db.path, hasher)
    try:
        assert (await lookup.facts("ann@customer.example")).suppressed  # R1 at the next RCPT
    finally:
        await lookup.close()
    # kept no longer than the longest retention
    knobs = PolicyKnobs()
    await Retention(db, knobs, hasher, KEPT_DAYS).purge(
        later + (knobs.max_retention_days + KEPT_DAYS + 1) * DAY)
    assert await db.fetchall("SELECT * FROM purged_copies") == []
