"""Erasure and access on a real SQLite file: what the SMTP-driven tests cannot easily reach
(two spellings of one address, a DSN naming it, a failed copy's upstream error)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gateway.store.db import Database
from gateway.store.subject import SubjectStore

from ledger_cases import import_csv


async def add_message(db: Database, message_id: str, content: bytes,
                      copies: list[tuple[str, str, str | None]]) -> None:
    now = time.time()
    async with db.transaction() as conn:
        await conn.execute(
            "INSERT INTO messages (id, received_at, account, client_ip, mail_from, size, content,"
            " subject) VALUES (?, ?, 'crm', '192.0.2.1', 'news@example.com', ?, ?, 'Hi')",
            (message_id, now, len(content), content))
        for recipient, state, error in copies:
            await conn.execute(
                "INSERT INTO deliveries (message_id, recipient, state, next_attempt_at,"
                " last_error, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (message_id, recipient, state, now, error, now, now))


async def test_every_spelling_of_the_address_is_erased_and_dsns_scrubbed(db, hasher):
    import_csv(db, hasher, "email,kind,source_name,source_type\n"
                           "Jane@Example.com,role,Site,direct\n"
                           "john@example.com,role,Site,direct\n")
    # a store from before 023 may hold one person under two spellings (an import now
    # updates the contact held in another case)
    await db.write_one("INSERT INTO contacts (address, address_hash, kind, audience,"
                       " relationship, topics, customer_categories, collected_at, created_at,"
                       " updated_at) VALUES ('jane@example.com', ?, 'role', 'b2c', 'prospect',"
                       " '', '', 1, 1, 1)", (hasher("jane@example.com"),))
    await add_message(db, "m1", b"To: JANE@example.com\r\n\r\nhi\r\n",
                      [("JANE@example.com", "failed", "550 5.1.1 <JANE@example.com> unknown")])
    # A DSN to the sender, naming Jane, still queued; and John's own queued message.
    await add_message(db, "dsn", b"Final-Recipient: rfc822; jane@EXAMPLE.com\r\n",
                      [("news@example.com", "queued", None)])
    await add_message(db, "m2", b"To: john@example.com\r\n\r\nhi\r\n",
                      [("john@example.com", "queued", None)])
    store = SubjectStore(db, hasher)
    before = await store.gather("jane@example.com")
    assert len(before.contacts) == 2 and before.holds_anything

    erasure = await store.erase("jAne@example.com", "dpo")
    assert erasure.removed["contacts"] == 2 and erasure.removed["deliveries"] == 1
    assert (erasure.removed["messages"], erasure.removed["messages_scrubbed"]) == (1, 1)
    assert erasure.newly_suppressed
    assert await db.compact()
    raw = (db.path.read_bytes() + Path(f"{db.path}-wal").read_bytes()).lower()
    assert b"jane@example.com" not in raw and b"john@example.com" in raw
    dsn = await db.fetchone("SELECT content FROM messages WHERE id = 'dsn'")
    assert dsn is not None and b"erased@erased.invalid" in dsn[0]
    after = await store.gather("JANE@example.com")
    assert after.contacts == [] and after.suppression_channel == "erasure"
    assert len(after.erased_at) == 1 and after.holds_anything
    john = await store.gather("john@example.com")
    assert len(john.contacts) == 1 and john.suppressed_at is None


async def test_an_erasure_rewrites_the_whole_address_only(db, hasher):
    """Erasing jane@ must leave mary.jane@'s queued message as it was (it became
    mary.erased@erased.invalid), and jane@example.net.example is another address too."""
    import_csv(db, hasher, "email,kind,source_name,source_type\n"
                           "jane@example.net,role,Site,direct\n")
    others = (b"To: <mary.jane@example.net>\r\nCc: jane@example.net.example\r\n"
              b"Reply-To: x=jane@example.net\r\n\r\nhi\r\n")  # x=jane@: another address
    await add_message(db, "mary", others, [("mary.jane@example.net", "queued", None)])
    await add_message(db, "both", b"To: <jane@example.net>, <bob@example.net>\r\n\r\nhi\r\n",
                      [("jane@example.net", "queued", None), ("bob@example.net", "queued", None)])
    erasure = await SubjectStore(db, hasher).erase("jane@example.net", "dpo")
    assert erasure.removed["messages_scrubbed"] == 1
    mary = await db.fetchone("SELECT content FROM messages WHERE id = 'mary'")
    both = await db.fetchone("SELECT content FROM messages WHERE id = 'both'")
    assert mary is not None and mary[0] == others
    assert both is not None and both[0].startswith(b"To: <erased@erased.invalid>, <bob@")


async def test_an_erasure_rewrites_the_address_in_a_urls_parameter(db, hasher):
    """https://crm.example/p?email=jane@example.net in another recipient's message: the
    `=` before it made it look like another address; neither rewritten nor reported."""
    content = (b"To: <bob@example.net>\r\n\r\nSee https://crm.example/p?id=7&email="
               b"jane@example.net&x=1 and mailto:jane%2Bnews@example.net\r\n")
    await add_message(db, "link", content, [("bob@example.net", "queued", None)])
    store = SubjectStore(db, hasher)
    erasure = await store.erase("jane@example.net", "dpo")
    assert erasure.removed["messages_scrubbed"] == 1
    row = await db.fetchone("SELECT content FROM messages WHERE id = 'link'")
    assert row is not None and b"?id=7&email=erased@erased.invalid&x=1" in row[0]
    # jane+news@ is another address (not erased here); a %-escaped jane@ would be reported
    await add_message(db, "esc", b"To: <bob@example.net>\r\n\r\nmailto:jane%40example.net"
                      b"\r\n", [("bob@example.net", "queued", None)])
    assert [m for m, _ in await store.encoded_mentions("jane@example.net")] == ["esc"]


async def test_an_access_request_closed_by_an_erasure_says_it_went_unanswered(db, hasher):
    from gateway.store.requests import RequestStore

    requests = RequestStore(db)
    access = await requests.open("jane@example.net", "access")
    erasure = await requests.open("jane@example.net", "erasure")
    done = await SubjectStore(db, hasher).erase("jane@example.net", "dpo")
    assert sorted(done.closed_requests) == sorted([access.id, erasure.id])
    notes = dict(tuple(r) for r in await db.fetchall("SELECT kind, note FROM requests"))
    assert notes["erasure"].startswith("answered by the erasure")
    assert notes["access"].startswith("closed unanswered")  # it read as answered


async def test_an_address_never_seen_gathers_to_nothing(db, hasher):
    record = await SubjectStore(db, hasher).gather("nobody@example.com")
    assert not record.holds_anything and record.address == "nobody@example.com"
    with pytest.raises(ValueError):
        await SubjectStore(db, hasher).gather("not an address")


async def test_an_erasure_scrubs_other_peoples_rows_that_quote_the_address(db, hasher):
    """Bob's held copy's subject and his copy's upstream error name Jane: they stay Bob's
    rows, without her address."""
    import_csv(db, hasher, "email,kind,source_name,source_type\n"
                           "jane@example.net,role,Site,direct\n")
    await add_message(db, "m", b"To: <bob@example.net>\r\n\r\nhi\r\n",
                      [("bob@example.net", "deferred",
                        "452 4.2.2 <Jane@example.net> and <bob@example.net>: over quota")])
    await db.write_one(
        "INSERT INTO quarantine (message_id, created_at, account, client_ip, mail_from,"
        " recipient, subject, rule, reason, basis) VALUES ('m', 0, 'crm', '192.0.2.1',"
        " 'news@example.com', 'bob@example.net', 'Bob, meet jane@example.net', 'R9', 'r', 'b')")
    erasure = await SubjectStore(db, hasher).erase("jane@example.net", "dpo")
    assert erasure.removed["texts_scrubbed"] == 2
    error = await db.fetchone("SELECT last_error FROM deliveries WHERE recipient LIKE 'bob@%'")
    held = await db.fetchone("SELECT subject FROM quarantine WHERE recipient LIKE 'bob@%'")
    assert error is not None and error[0] == ("452 4.2.2 <erased@erased.invalid> and "
                                              "<bob@example.net>: over quota")
    assert held is not None and held[0] == "Bob, meet erased@erased.invalid"


async def test_strasse_and_strasse_with_eszett_are_two_people_though_they_share_a_hash(
        db, hasher):
    """casefold() gives straße@ and strasse@ one suppression form, so one hash: an erasure of
    one suppresses both (the safe side), but must not show or delete the other's data."""
    import_csv(db, hasher, "email,kind,source_name,source_type\n"
                           "straße@example.de,role,Site,direct\n"
                           "Strasse@example.de,role,Fair,direct\n")
    assert hasher("straße@example.de") == hasher("strasse@example.de")
    await add_message(db, "m1", b"To: strasse@example.de\r\n\r\nhi\r\n",
                      [("strasse@example.de", "sent", None)])
    store = SubjectStore(db, hasher)
    record = await store.gather("STRASSE@example.de")
    assert [c.address for c, _ in record.contacts] == ["Strasse@example.de"]
    erasure = await store.erase("straße@example.de", "dpo")
    assert (erasure.removed["contacts"], erasure.removed["deliveries"]) == (1, 0)
    left = await db.fetchall("SELECT address FROM contacts")
    assert [row[0] for row in left] == ["Strasse@example.de"]
    assert len((await store.gather("strasse@example.de")).contacts) == 1


async def test_an_erasure_says_which_copies_a_gateway_was_delivering(db, hasher):
    """An erasure while a copy is on its way: the row goes, the copy may still arrive; it
    said "erased" and nothing of it."""
    from gateway.store.queue import IncomingMessage, QueueStore

    queue = QueueStore(db, "gateway-1")  # a committing process claims its copies
    await queue.commit_messages([IncomingMessage(
        "M1", time.time(), "crm", "127.0.0.1", "news@example.com",
        b"Subject: x\r\n\r\nbody\r\n", ("ann@example.net", "bob@example.net"))])
    erased = await SubjectStore(db, hasher).erase("ann@example.net", "dpo")
    assert erased.removed["deliveries"] == 1 and erased.being_delivered == 1
    await db.write_one("UPDATE deliveries SET claimed_by = NULL, claimed_until = NULL")
    again = await SubjectStore(db, hasher).erase("bob@example.net", "dpo")
    assert again.removed["deliveries"] == 1 and again.being_delivered == 0


async def test_an_extension_counts_three_months_from_the_request_in_one_step(db):
    """GDPR 12(3): one month, extended by two more. Chained month by month, a request of
    31 January was due 28 April (Feb 28, Mar 28, Apr 28), not 30 April."""
    import datetime

    from gateway.store.requests import RequestStore, one_month_later

    def stamp(day: str) -> float:
        return datetime.datetime.fromisoformat(day).replace(tzinfo=datetime.UTC).timestamp()

    assert one_month_later(stamp("2026-01-31"), 3) == stamp("2026-04-30")
    assert one_month_later(stamp("2026-11-30"), 3) == stamp("2027-02-28")
    assert one_month_later(stamp("2026-12-31"), 14) == stamp("2028-02-29")
    requests = RequestStore(db)
    opened = await requests.open("jane@example.net", "access", received_at=stamp("2026-01-31"))
    assert opened.due_at == stamp("2026-02-28")
    extended = await requests.extend(opened.id, "complex", now=stamp("2026-02-10"))
    assert extended.due_at == stamp("2026-04-30")


async def test_an_erasure_leaves_no_name_escape_note_or_event_id_naming_the_person(db, hasher):
    """Found by an erasure review: the DSN about José's copy kept `jos\\x{E9}@` (RFC 6533's
    escape) and `<jos\\xe9@` in its 7-bit fields; Bob's message kept `"José Garcia"` beside
    the placeholder; a reviewer's reason and another person's request note quoted him; his
    own answered request kept the operator's note; the webhook's event id (a day) kept the
    ESP's id for him."""
    from gateway.delivery.dsn import build_dsn
    from gateway.store.ledger import Ledger
    from gateway.store.requests import RequestStore

    jose = "josé@labo.example"
    import_csv(db, hasher, "email,kind,source_name,source_type\n"
                           f"{jose},role,Site,direct\nbob@labo.example,role,Site,direct\n")
    dsn = build_dsn(reporting_mta="gw.example", queue_id="Q1", mail_from="news@example.com",
                    recipient=jose, status="", diagnostic=f"550 5.1.1 <{jose}> unknown",
                    arrival_date=time.time(),
                    original_headers=f'To: "José Garcia" <{jose}>\r\n'.encode())
    assert b"jos\\x{E9}@labo.example" in dsn and b"jos\\xe9@labo.example" in dsn
    await add_message(db, "dsn", dsn, [("news@example.com", "queued", None)])
    shared = ('To: "José Garcia" <JOSÉ@labo.example>,\r\n "Martin, Bob" <bob@labo.example>'
              '\r\nCc: =?utf-8?q?Jos=C3=A9?=\r\n <josé@labo.example>\r\nSubject: Hi\r\n\r\n'
              'Bonjour\r\n').encode()
    await add_message(db, "shared", shared, [("bob@labo.example", "queued", None),
                                             (jose, "queued", None)])
    await db.write_one(
        "INSERT INTO quarantine (message_id, created_at, account, client_ip, mail_from,"
        " recipient, subject, rule, reason, basis, state, decision_reason) VALUES ('shared',"
        " 0, 'crm', '192.0.2.1', 'news@example.com', 'bob@labo.example', 'Hi', 'R9', 'r',"
        " 'b', 'rejected', ?)", (f"Bob is {jose}'s assistant",))
    requests = RequestStore(db)
    own = await requests.open(jose, "access")
    await requests.close(own.id, "sent by post to José Garcia, 12 rue des Lilas")
    bobs = await requests.open("bob@labo.example", "access")
    await requests.close(bobs.id, f"asked for his colleague {jose} too")
    assert await Ledger(db, hasher).suppress_events(
        [("esp-evt-jose-garcia-42", jose, "complaint")], "webhook", None) == (1, 0)

    erasure = await SubjectStore(db, hasher).erase(jose, "dpo")
    assert erasure.removed["webhook_events"] == 1
    dsn_now = await db.fetchone("SELECT content FROM messages WHERE id = 'dsn'")
    shared_now = await db.fetchone("SELECT content FROM messages WHERE id = 'shared'")
    assert dsn_now is not None and shared_now is not None
    assert shared_now[0].startswith(
        b'To: <erased@erased.invalid>,\r\n "Martin, Bob" <bob@labo.example>\r\n'
        b"Cc: <erased@erased.invalid>\r\n"), shared_now[0]
    notes = dict(tuple(r) for r in await db.fetchall("SELECT id, note FROM requests"))
    assert notes == {own.id: "(note erased with the address, dpo)",
                     bobs.id: "asked for his colleague erased@erased.invalid too"}
    [(reason,)] = await db.fetchall("SELECT decision_reason FROM quarantine")
    assert reason == "Bob is erased@erased.invalid's assistant"
    assert await db.compact()
    raw = db.path.read_bytes() + Path(f"{db.path}-wal").read_bytes()
    for trace in ("josé@", "jos\\x{e9}@", "jos\\xe9@", "garcia", "rue des lilas",
                  "esp-evt-jose"):
        assert trace.encode() not in raw.lower(), trace
    assert b"bob@labo.example" in raw  # Bob's rows are his still


async def test_a_wal_a_reader_kept_is_emptied_by_the_next_try(db, hasher):
    """`subject erase` said the old pages "go at the next checkpoint", but no checkpoint
    shrinks the WAL or zeroes it: under serve its frames (addresses in clear) stayed for
    good. Now the request is kept in the store, and serve's housekeeping retries."""
    import sqlite3

    assert await db.empty_wal_if_due() is None  # nothing asked
    reader = sqlite3.connect(db.path)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM contacts").fetchone()  # holds a snapshot
    import_csv(db, hasher, "email,kind,source_name,source_type\n"
                           "held@example.com,role,Site,direct\n")
    assert not await db.empty_wal(tries=1)
    await db.empty_wal_later()
    wal = Path(f"{db.path}-wal")
    assert await db.empty_wal_if_due(tries=1) is False  # the reader still holds it
    assert b"held@example.com" in wal.read_bytes()
    reader.rollback()
    reader.close()
    assert await db.empty_wal_if_due(tries=1) is True
    assert b"held@example.com" not in wal.read_bytes()  # (the request's own removal is)
    assert await db.empty_wal_if_due() is None  # done: not again


def test_display_names_go_only_from_header_sections_and_in_linear_time():
    """Diff review: the display-name pattern ran over bodies and notes ("From: now on, our
    DPO is Jane Doe <...>" lost its prose), missed comments and quoted titles, and three
    folded lines of spaces took 99 s inside the erasure's write lock."""
    from gateway.store.subject import _spellings, erase_in

    jane = _spellings("jane@example.net")
    message = ('To: "Dr." Jane (DPO) <jane@example.net>, Bob <bob@example.net>\r\n'
               "Reply-To: jane@example.net (Jane Doe)\r\n"
               "Received: from a by b with ESMTP id X for <jane@example.net>; Fri\r\n"
               "Subject: Hi\r\n\r\n"
               "From: now on, our DPO is Jane Doe <jane@example.net>\r\n"
               "--b\r\nContent-Type: text/rfc822-headers\r\n\r\n"
               "To: Jane Doe <jane@example.net>\r\n\r\n--b--\r\n")
    assert erase_in(jane, message, message=True) == (
        "To: <erased@erased.invalid>, Bob <bob@example.net>\r\n"
        "Reply-To: erased@erased.invalid\r\n"
        "Received: from a by b with ESMTP id X for <erased@erased.invalid>; Fri\r\n"
        "Subject: Hi\r\n\r\n"
        "From: now on, our DPO is Jane Doe <erased@erased.invalid>\r\n"
        "--b\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        "To: <erased@erased.invalid>\r\n\r\n--b--\r\n")
    note = "cc: the DPO, please call <jane@example.net>"  # a free-text column: prose
    assert erase_in(jane, note) == "cc: the DPO, please call <erased@erased.invalid>"
    started = time.perf_counter()
    for crafted in ("To:" + (" " * 990 + "\r\n") * 10 + " <jane@example.net>\r\n\r\n",
                    "To: " + "a " * 40000 + "<jane@example.net>\r\n\r\n",
                    "To: " + ", " * 40000 + "<jane@example.net>\r\n\r\n"):
        assert erase_in(jane, crafted, message=True).endswith("<erased@erased.invalid>\r\n\r\n")
    assert time.perf_counter() - started < 1.0  # (the old pattern: minutes)
