"""The ledger on a real SQLite file: import merge rules, lookups, suppression, append-only logs."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import time
from pathlib import Path

import pytest

from gateway.errors import NotFound, Refused
from gateway.security.keys import AddressHasher, load_or_create_key
from gateway.store.audit import AuditLog, AuditRecord
from gateway.store.db import Database
from gateway.store.ledger import Ledger, LedgerLookup

from ledger_cases import import_csv

DAY = 86400.0


async def facts(db: Database, hasher: AddressHasher, address: str):
    lookup = LedgerLookup(db.path, hasher)
    try:
        return await lookup.facts(address)
    finally:
        await lookup.close()


def test_hash_key_is_created_once_owner_only(tmp_path: Path):
    path = tmp_path / "s" / "hash.key"
    key = load_or_create_key(path)
    assert len(key) == 32 and load_or_create_key(path) == key
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    hasher = AddressHasher(key)
    assert hasher("Jane@Example.com") == hasher("jane@example.com")  # no dodging by case
    assert hasher("jane@example.com") != AddressHasher(b"k" * 32)("jane@example.com")


async def test_reimport_never_restarts_the_retention_clock(db, hasher):
    import_csv(db, hasher, "email,collected_at,source_name,source_type\n"
                           "p@example.com,2022-01-01,Form,direct\n")
    # an enrichment re-import: later collection date, new source, new job title
    counts = import_csv(db, hasher, "email,collected_at,source_name,source_type,job_title\n"
                                    "p@example.com,2026-06-01,Data vendor,import,CTO\n").counts
    assert (counts.new, counts.updated) == (0, 1)
    contact = (await facts(db, hasher, "p@example.com")).contact
    assert contact is not None and contact.job_title == "CTO"
    assert contact.collected_at == 1640995200.0  # still 2022-01-01
    assert {s.name for s in contact.sources} == {"Form", "Data vendor"}
    # the person's own later action does renew it; an older one does not go back
    import_csv(db, hasher, "email,last_interaction_at\np@example.com,2026-03-01\n")
    import_csv(db, hasher, "email,last_interaction_at\np@example.com,2025-01-01\n")
    contact = (await facts(db, hasher, "p@example.com")).contact
    assert contact is not None and contact.last_interaction_at == 1772323200.0


async def test_empty_cells_keep_what_the_ledger_had(db, hasher):
    import_csv(db, hasher, "email,kind,audience,topics,language\n"
                           "p@example.com,role,b2b,crm;hr,de\n")
    import_csv(db, hasher, "email,kind,audience,topics,language\np@example.com,,,,\n")
    contact = (await facts(db, hasher, "p@example.com")).contact
    assert contact is not None
    assert (contact.kind, contact.audience, contact.language) == ("role", "b2b", "de")
    assert contact.topics == frozenset({"crm", "hr"})


async def test_withdrawn_consent_suppresses_and_a_later_grant_in_a_file_does_not_lift_it(
        db, hasher):
    counts = import_csv(db, hasher, "email,consent,consent_at\n"
                                    "w@example.com,withdrawn,2026-02-01\n").counts
    assert counts.suppressed == 1
    import_csv(db, hasher, "email,consent,consent_at\nw@example.com,granted,2026-03-01\n")
    assert (await facts(db, hasher, "W@example.com")).suppressed  # whatever the case
    found = await facts(db, hasher, "w@example.com")
    events = await Ledger(db, hasher).events(found.contact.id if found.contact else 0)
    assert [e.kind for e in events] == ["withdrawal", "consent"]


async def test_reimport_appends_each_event_once(db, hasher):
    text = ("email,consent,consent_at,consent_method,consent_proof,last_interaction_at\n"
            "c@example.com,granted,2026-01-01,form,v3,2026-02-01\n")
    import_csv(db, hasher, text)
    import_csv(db, hasher, text)
    contact = (await facts(db, hasher, "c@example.com")).contact
    assert contact is not None
    events = await Ledger(db, hasher).events(contact.id or 0)
    assert [(e.kind, e.proof) for e in events] == [("consent", "v3"), ("interaction", None)]


@pytest.mark.parametrize("second", [("n1", "n2", "n3"), ("n1", "old", "n2"), ("old", "n1")])
async def test_each_rows_sources_and_events_land_on_its_own_contact(db, hasher, second):
    # a chunk of new contacts only takes the next ids in order; one with an update among them
    # is looked up: either way every source and event belongs to its row's contact
    def row(name: str) -> str:
        return f"{name}@example.com,broker,{name}-list,2026-03-0{len(name)}\n"
    header = "email,source_type,source_name,last_interaction_at\n"
    import_csv(db, hasher, header + row("old") + row("x"))
    counts = import_csv(db, hasher, header + "".join(row(name) for name in second)).counts
    assert (counts.new, counts.updated) == (len(set(second) - {"old"}), "old" in second)
    rows = await db.fetchall(
        "SELECT c.address, s.name, e.occurred_at FROM contacts c"
        " JOIN sources s ON s.contact_id = c.id JOIN contact_events e ON e.contact_id = c.id"
        " ORDER BY c.address")
    assert {(r[0].split("@")[0], r[1].split("-")[0]) for r in rows} == {
        (name, name) for name in {"old", "x", *second}}
    assert all(time.gmtime(r[2]).tm_mday == len(r[0].split("@")[0]) for r in rows)


async def test_dry_run_writes_nothing(db, hasher):
    counts = import_csv(db, hasher, "email,consent,consent_at\n"
                                    "a@example.com,,\nb@example.com,withdrawn,2026-01-01\n",
                        dry_run=True).counts
    assert (counts.new, counts.suppressed) == (2, 1)
    for table in ("contacts", "sources", "contact_events", "suppression"):
        assert (await db.fetchone(f"SELECT count(*) FROM {table}"))[0] == 0  # noqa: S608


async def test_lookup_is_one_indexed_statement(db, hasher):
    import_csv(db, hasher, "email,source_name,source_type\nx@example.com,Form,direct\n")
    from gateway.store.ledger import facts_sql
    plan = sqlite3.connect(db.path).execute(
        "EXPLAIN QUERY PLAN " + facts_sql(2), (b"h", "x@example.com", b"i", "y@x.com")).fetchall()
    details = " ".join(row[3] for row in plan)
    assert "SCAN c" not in details and "SCAN contacts" not in details
    assert "USING INDEX" in details or "USING PRIMARY KEY" in details
    found = await facts(db, hasher, "x@EXAMPLE.com")
    assert found.contact is not None and found.contact.sources[0].name == "Form"
    assert not found.suppressed
    unknown = await facts(db, hasher, "nobody@example.com")
    assert unknown.contact is None and not unknown.suppressed


async def test_suppress_and_lift_are_recorded_on_the_contact(db, hasher):
    import_csv(db, hasher, "email\ns@example.com\n")
    ledger = Ledger(db, hasher)
    assert await ledger.suppress("s@example.com", "manual", reason="asked by phone")
    assert not await ledger.suppress("S@example.com", "manual")  # already there
    assert (await facts(db, hasher, "s@example.com")).suppressed
    await ledger.unsuppress("s@example.com", reason="new consent form 2026-11")
    assert not (await facts(db, hasher, "s@example.com")).suppressed
    with pytest.raises(NotFound):
        await ledger.unsuppress("s@example.com")
    contact = await ledger.contact("s@example.com")
    assert contact is not None
    assert [(e.kind, e.wording) for e in await ledger.events(contact.id or 0)] == [
        ("objection", "asked by phone"), ("objection_lifted", "new consent form 2026-11")]
    # the suppression list holds the hash, the time and the channel (and, after an erasure,
    # the channel it came by before): no address
    columns = [r[1] for r in await db.fetchall("PRAGMA table_info(suppression)")]
    assert columns == ["hash", "created_at", "channel", "objected_by"]


async def test_the_persons_objection_to_an_address_suppressed_by_hand_is_recorded(db, hasher):
    """An operator suppressed a hard bounce; then the person clicked one-click: told "done",
    yet nothing of theirs was stored, and once the operator lifted the bounce, mail resumed."""
    import_csv(db, hasher, "email\njohn@example.org\n")
    ledger = Ledger(db, hasher)
    assert await ledger.suppress("john@example.org", "manual", reason="hard bounce")
    assert not await ledger.suppress("john@example.org", "one-click", ip="192.0.2.7")
    assert not await ledger.suppress("john@example.org", "one-click", ip="192.0.2.7")  # once
    contact = await ledger.contact("john@example.org")
    assert contact is not None
    assert [(e.kind, e.channel, e.ip) for e in await ledger.events(contact.id or 0)] == [
        ("objection", "manual", None), ("objection", "one-click", "192.0.2.7")]
    entry = await ledger.is_suppressed("john@example.org")
    assert entry is not None and entry.channel == "one-click"  # the person's, now


async def test_the_persons_objection_over_a_hand_made_entry_is_counted_and_notified(
        db, hasher):
    """The operator's entry (a hard bounce) told the accounts "manual"; the person's own
    objection over it, by one-click or by a webhook, is news to them and to /metrics'
    gateway_objections_total as a new entry's is: the sending tool marks the contact as
    having objected, not only bounced."""
    ledger = Ledger(db, hasher)
    with sqlite3.connect(db.path) as conn:
        conn.execute("INSERT INTO accounts (name, password_hash, notify_url, created_at,"
                     " updated_at) VALUES ('crm', 'x', 'https://crm.example/hook', 0, 0)")
    for address in ("john@example.org", "jane@example.org"):
        assert await ledger.suppress(address, "manual", reason="hard bounce")
    assert not await ledger.suppress("john@example.org", "one-click", ip="192.0.2.7")
    assert await ledger.suppress_events([("evt-1", "jane@example.org", None)], "webhook",
                                        "192.0.2.8") == (0, 0)
    assert not await ledger.suppress("john@example.org", "one-click")  # once
    assert await ledger.objection_counts() == {"manual": 2, "one-click": 1, "webhook": 1}
    bodies = [json.loads(r[0]) for r in await db.fetchall(
        "SELECT body FROM notifications WHERE account = 'crm' ORDER BY id")]
    assert [(b["email"], b["channel"]) for b in bodies] == [
        ("john@example.org", "manual"), ("jane@example.org", "manual"),
        ("john@example.org", "one-click"), ("jane@example.org", "webhook")]


async def test_a_lift_is_recorded_whatever_case_it_is_written_in(db, hasher):
    import_csv(db, hasher, "email\njeanne.secret@example.fr\n")
    ledger = Ledger(db, hasher)
    assert await ledger.suppress("jeanne.secret@example.fr", "one-click")
    await ledger.unsuppress("Jeanne.Secret@EXAMPLE.fr", reason="her new request")
    contact = await ledger.contact("jeanne.secret@example.fr")
    assert contact is not None
    assert [(e.kind, e.wording) for e in await ledger.events(contact.id or 0)][-1] == (
        "objection_lifted", "her new request")


async def test_the_entry_an_erasure_left_is_lifted_only_with_force(db, hasher):
    from gateway.store.subject import SubjectStore

    ledger = Ledger(db, hasher)
    assert await ledger.suppress("gone@example.org", "manual")  # a bounce, then erased
    await SubjectStore(db, hasher).erase("gone@example.org", "dpo")
    with pytest.raises(Refused, match="erased"):
        await ledger.unsuppress("gone@example.org")
    assert await ledger.is_suppressed("gone@example.org")
    await ledger.unsuppress("gone@example.org", force=True)
    assert not await ledger.is_suppressed("gone@example.org")


async def test_an_objection_written_in_another_case_is_recorded_on_the_contact(db, hasher):
    """The suppression entry holds every case of the local part; the objection event goes to
    the contact held as written or in lower case (most tools store addresses so)."""
    import_csv(db, hasher, "email\njane@example.com\n")
    ledger = Ledger(db, hasher)
    assert await ledger.suppress("Jane@EXAMPLE.com", "webhook", reason="complaint")
    assert (await facts(db, hasher, "jane@example.com")).suppressed
    contact = await ledger.contact("jane@example.com")
    assert contact is not None
    assert [(e.kind, e.channel, e.wording) for e in await ledger.events(contact.id or 0)] == [
        ("objection", "webhook", "complaint")]


async def test_suppressing_an_address_the_ledger_never_held(db, hasher):
    ledger = Ledger(db, hasher)
    assert await ledger.suppress("stranger@example.com", "manual")
    [entry] = await ledger.suppression_list()
    assert entry.address is None and entry.hash == hasher("stranger@example.com")


async def test_events_and_audit_are_append_only(db, hasher):
    import_csv(db, hasher, "email,consent,consent_at\nc@example.com,granted,2026-01-01\n")
    await AuditLog(db).append([[AuditRecord(time.time(), "crm", "127.0.0.1",
                                            hasher("c@example.com"), "R6", "allow")]])
    conn = sqlite3.connect(db.path)
    for statement in ("UPDATE contact_events SET proof = 'forged'",
                      "UPDATE audit SET decision = 'reject'", "DELETE FROM audit"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute(statement)
    [record] = await AuditLog(db).for_recipient(hasher("c@example.com"))
    assert (record.rule, record.decision) == ("R6", "allow")


async def test_retention_sql_agrees_with_the_rule_book(db, hasher):
    import dataclasses
    import random

    from gateway.model import PolicyKnobs
    from gateway.policy.rules import retention_deadline
    from gateway.store.ledger import Ledger
    from gateway.store.retention import Retention, due, ran

    rng = random.Random(3)
    now = time.time()
    lines = ["email,collected_at,last_interaction_at,source_name,source_type,consent,"
             "consent_at,consent_method"]
    # a consent the person gave is their own action too (a form): it renews the clock; a
    # box ticked for them or terms they accepted does not
    methods = ("web form v2", "pre-ticked box", "accepted T&C", "double opt-in")
    for i in range(300):
        collected = now - rng.randint(0, 3000) * DAY
        acted = collected + rng.randint(-500, 2500) * DAY if rng.random() < 0.6 else None
        consented = collected + rng.randint(-300, 2500) * DAY if rng.random() < 0.5 else None
        fmt = time.strftime
        lines.append(f"c{i}@example.com,{fmt('%Y-%m-%dT%H:%M:%S', time.gmtime(collected))},"
                     + (fmt('%Y-%m-%dT%H:%M:%S', time.gmtime(acted))
                        if acted and acted < now else "") + ",Form,direct,"
                     + (f"granted,{fmt('%Y-%m-%dT%H:%M:%S', time.gmtime(consented))},"
                        f"{rng.choice(methods)}" if consented and consented < now else ",,"))
    import_csv(db, hasher, "\n".join(lines) + "\n")
    ledger = Ledger(db, hasher)
    for knobs in (PolicyKnobs(), dataclasses.replace(PolicyKnobs(), prospect_retention_days=400,
                                                     max_retention_days=200)):
        expired = {address for _, address in await Retention(db, knobs, hasher, 30).expired(now)}
        for i in range(300):
            contact = await ledger.contact(f"c{i}@example.com")
            assert contact is not None
            deadline = retention_deadline(contact, knobs)
            assert (deadline is not None and deadline < now) == (contact.address in expired)
        renewed = [c for c in [await ledger.contact(f"c{i}@example.com") for i in range(300)]
                   if c and c.consent_at and c.consent_at > max(c.collected_at or 0,
                                                               c.last_interaction_at or 0)]
        kept_by_consent = [c.address for c in renewed if c.consent_method in (
            "web form v2", "double opt-in") and c.address not in expired and (
            max(c.collected_at or 0, c.last_interaction_at or 0)
            + min(knobs.prospect_retention_days, knobs.max_retention_days) * DAY < now)]
        assert kept_by_consent  # the case exists: kept only by the consent they gave
    assert not await due(db, "t", 100.0, now)  # first time: recorded, not run
    assert not await due(db, "t", 100.0, now + 50)
    assert await due(db, "t", 100.0, now + 150)
    # due until the run is recorded as done: a run interrupted half-way is not skipped
    assert await due(db, "t", 100.0, now + 160)
    await ran(db, "t", now + 170)
    assert not await due(db, "t", 100.0, now + 260)
    assert await due(db, "t", 100.0, now + 280)
    assert await due(db, "new", 100.0, now, first_run=True)
    assert await due(db, "new", 100.0, now + 1, first_run=True)


async def test_audit_appends_maintain_no_index_and_lookups_still_find_the_rows(db, hasher):
    # every RCPT appends an audit row: an index on the random recipient hash made each append
    # dirty its own page (migration 010); the rare lookup by recipient scans instead
    log = AuditLog(db)
    now = time.time()
    await log.append([[AuditRecord(now + i, "crm", "127.0.0.1", hasher(f"r{i % 7}@example.com"),
                                   "R6", "allow") for i in range(70)]])
    indexes = sqlite3.connect(db.path).execute("PRAGMA index_list(audit)").fetchall()
    assert indexes == []
    found = await log.for_recipient(hasher("r3@example.com"))
    assert [r.at for r in found] == [now + i for i in range(3, 70, 7)]
    assert (await log.verify())[:2] == (70, None)


async def test_a_value_of_another_type_written_into_the_audit_is_a_broken_row(db, hasher):
    """`audit verify` ended in a TypeError traceback (no --json a monitor could read)."""
    log = AuditLog(db)
    await log.append([[AuditRecord(time.time() + i, "crm", "127.0.0.1", hasher("a@x.example"),
                                   "R6", "allow") for i in range(3)]])
    with sqlite3.connect(db.path) as conn:
        conn.execute("DROP TRIGGER audit_no_update")
        conn.execute("UPDATE audit SET recipient_hash = 'abc' WHERE id = 2")
    check = await log.verify()
    assert (check.rows, check.first_broken) == (1, 2)


async def test_an_erasure_unlinks_audit_rows_and_the_chain_still_catches_edits(db, hasher):
    """COMPLIANCE 6 (erasure deletes all but the suppression hash): the audit log named the
    recipient by that same hash for ever. `unlink` blanks it and the commitment's salt; what
    was decided stays checked by the chain, and a recipient swapped on a row still shows."""
    from gateway.store.audit import commitment, unlink

    log = AuditLog(db)
    now = time.time()
    jane, bob = hasher("jane@x.example"), hasher("bob@x.example")
    await log.append([[AuditRecord(now + i, "crm", "127.0.0.1", (jane, bob)[i % 2], "R6",
                                   ("allow", "reject")[i % 2], f"M{i}") for i in range(6)]])
    with sqlite3.connect(db.path) as conn:
        salts = conn.execute("SELECT recipient_salt, recipient_commit, recipient_hash"
                             " FROM audit").fetchall()
    assert len({salt for salt, _, _ in salts}) == 6  # one salt per row: rows are not linkable
    assert all(commit == commitment(salt, digest) for salt, commit, digest in salts)

    async with db.transaction() as conn:
        assert await unlink(conn, jane) == 3
    assert await log.for_recipient(jane) == []
    assert [r.message_id for r in await log.for_recipient(bob)] == ["M1", "M3", "M5"]
    check = await log.verify()
    assert (check.rows, check.first_broken, check.unlinked) == (6, None, 3)

    conn = sqlite3.connect(db.path)
    for edit in ("UPDATE audit SET recipient_hash = x'' WHERE id = 2",  # salt kept
                 "UPDATE audit SET recipient_hash = x'', recipient_salt = NULL, decision ="
                 " 'allow' WHERE id = 2",
                 "UPDATE audit SET recipient_hash = x'01', recipient_salt = NULL WHERE id = 2"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute(edit)
    conn.execute("UPDATE audit SET recipient_hash = x'', recipient_salt = NULL WHERE id = 2")
    conn.commit()  # the one change allowed: the same unlinking
    assert (await log.verify()).unlinked == 4

    # someone who drops the trigger: an unlinked row's outcome edited, or a kept row given
    # another recipient, breaks the chain at that row
    conn.execute("DROP TRIGGER audit_no_update")
    conn.execute("UPDATE audit SET decision = 'allow' WHERE id = 4")
    conn.commit()
    assert (await log.verify()).first_broken == 4
    conn.execute("UPDATE audit SET decision = 'reject' WHERE id = 4")
    conn.execute("UPDATE audit SET recipient_hash = ? WHERE id = 6", (jane,))
    conn.commit()
    assert (await log.verify())[:2] == (5, 6)
    conn.close()


async def test_contacts_read_on_the_hot_path_are_ordinary_contacts(db, hasher):
    import dataclasses

    from gateway.model import Contact, Source
    import_csv(db, hasher, "email,kind,audience,relationship,language,first_name,topics,"
               "customer_categories,consent,consent_at,opt_out_offered,source_name,"
               "source_type,source_visibility\n"
               "k@example.com,person,b2b,customer,fr,Zoé,crm;security,software,granted,"
               "2026-01-01,true,Salon,direct,public\n"
               "l@example.com,person,b2b,prospect,,,crm;security,,,,false,Salon,direct,public\n")
    k = (await facts(db, hasher, "k@example.com")).contact
    l_ = (await facts(db, hasher, "l@example.com")).contact
    assert k is not None and l_ is not None
    # built without Contact.__init__: every field present, equal to a constructed one
    rebuilt = Contact(**{f.name: getattr(k, f.name) for f in dataclasses.fields(Contact)})
    assert rebuilt == k and hash(rebuilt) == hash(k)
    assert (k.first_name, k.topics, k.customer_categories, k.opt_out_offered) == (
        "Zoé", frozenset({"crm", "security"}), frozenset({"software"}), True)
    assert l_.opt_out_offered is False and l_.customer_categories == frozenset()
    assert k.sources == (Source("Salon", "direct", "public", k.sources[0].recorded_at),)
    assert k.topics is l_.topics  # shared, immutable
    with pytest.raises(dataclasses.FrozenInstanceError):
        k.consent = "withdrawn"  # type: ignore[misc]
    assert dataclasses.replace(k, consent="withdrawn").consent == "withdrawn"


async def test_a_batch_of_lookups_reads_back_exact_values_in_key_order(db, hasher):
    import_csv(db, hasher, "email,consent,consent_at,source_name,source_type\n"
               + "".join(f"p{i}@example.com,granted,2026-01-0{i + 1},Form,direct\n"
                         for i in range(3)))
    stamp = 1795656443.564529  # 16 significant digits: JSON alone would keep 15
    conn = sqlite3.connect(db.path)
    with conn:
        conn.execute("UPDATE contacts SET informed_at = ?, retention_expired_at = ?"
                     " WHERE address = 'p1@example.com'", (stamp, stamp + 1e-6))
    lookup = LedgerLookup(db.path, hasher)
    try:
        import asyncio
        addresses = ["nobody@example.com", "p2@example.com", "p1@example.com",
                     "p0@example.com"]
        found = await asyncio.gather(*(lookup.facts(a) for a in addresses))
    finally:
        await lookup.close()
    assert found[0].contact is None
    assert [f.contact.address for f in found[1:]] == addresses[1:]  # type: ignore[union-attr]
    p1 = found[2].contact
    assert p1 is not None and p1.informed_at == stamp
    assert p1.retention_expired_at == stamp + 1e-6 and found[1].contact.informed_at is None
    import datetime
    assert [f.contact.consent_at for f in found[1:]] == [  # type: ignore[union-attr]
        datetime.datetime(2026, 1, day, tzinfo=datetime.UTC).timestamp() for day in (3, 2, 1)]


def _copies(db: Database, recipients: list[tuple[str, int | None]]) -> list[int]:
    """Queue rows (one message) for (recipient, contact id): the delivery ids, in order."""
    now = time.time()
    with sqlite3.connect(db.path) as conn:
        conn.execute("INSERT INTO messages (id, received_at, account, client_ip, mail_from,"
                     " size, content) VALUES ('m1', ?, 'crm', '127.0.0.1', 's@crm.example',"
                     " 1, x'00')", (now,))
        return [conn.execute("INSERT INTO deliveries (message_id, recipient, state,"
                             " next_attempt_at, created_at, updated_at, contact_id) VALUES"
                             " ('m1', ?, 'sent', ?, ?, ?, ?)",
                             (r, now, now, now, c)).lastrowid or 0
                for r, c in recipients]


async def test_a_group_of_objections_is_recorded_as_one_at_a_time_would(db, hasher):
    """object_to_copies over a group with everything a burst of POSTs can hold: the same copy
    twice, two copies of one address, an address suppressed before, a copy whose queue row is
    gone (the contact's address), a delivery id now another contact's copy, tokens naming
    nothing. One transaction, the same outcome as one objection after the other: a
    suppression entry, an event and a notification per address, once."""
    import_csv(db, hasher, "email,language\na@example.com,fr\nb@example.com,de\n"
                           "c@example.com,\nd@example.com,es\n")
    ledger = Ledger(db, hasher)
    assert await ledger.suppress("c@example.com", "manual")
    with sqlite3.connect(db.path) as conn:
        conn.execute("INSERT INTO accounts (name, password_hash, notify_url, created_at,"
                     " updated_at) VALUES ('crm', 'x', 'https://crm.example/hook', 0, 0)")
        ids = dict(conn.execute("SELECT address, id FROM contacts"))
    d_a, d_a2, d_b, d_c, d_x = _copies(db, [
        ("a@example.com", ids["a@example.com"]), ("A@EXAMPLE.COM", ids["a@example.com"]),
        ("b@example.com", ids["b@example.com"]), ("c@example.com", ids["c@example.com"]),
        ("x@example.org", None)])
    results = await ledger.object_to_copies([
        (d_a, ids["a@example.com"], "one-click", "192.0.2.1"),
        (d_b, ids["b@example.com"], "link", "192.0.2.2"),
        (d_a, ids["a@example.com"], "one-click", "192.0.2.3"),  # the same POST again
        (d_a2, ids["a@example.com"], "one-click", None),  # another copy, same address
        (d_c, ids["c@example.com"], "one-click", None),  # suppressed before
        (999_999, ids["d@example.com"], "one-click", "192.0.2.4"),  # queue row gone
        (999_998, 0, "one-click", None),  # nothing: no copy, no contact
        (d_b, 888_888, "one-click", None),  # b's copy now, not 888,888's: nothing
        (d_b, ids["d@example.com"], "one-click", None),  # an id reused: d's token means d
        (d_x, 0, "one-click", None),  # a copy to an address the ledger does not hold
    ])
    assert results == [
        ("a@example.com", "fr", True), ("b@example.com", "de", True),
        ("a@example.com", "fr", False), ("A@EXAMPLE.COM", "fr", False),
        ("c@example.com", None, False), ("d@example.com", "es", True), None, None,
        ("d@example.com", "es", False), ("x@example.org", None, True)]
    entries = {e.address: e.channel for e in await ledger.suppression_list()}
    # c's entry, made by hand, is the person's own objection now
    assert entries == {"a@example.com": "one-click", "b@example.com": "link",
                       "c@example.com": "one-click", "d@example.com": "one-click",
                       None: "one-click"}
    assert await ledger.is_suppressed("x@example.org") is not None
    events = await db.fetchall("SELECT c.address, e.channel, e.ip FROM contact_events e"
                               " JOIN contacts c ON c.id = e.contact_id"
                               " WHERE e.kind = 'objection' ORDER BY c.address")
    assert sorted(tuple(r) for r in events) == [
        ("a@example.com", "one-click", "192.0.2.1"), ("b@example.com", "link", "192.0.2.2"),
        ("c@example.com", "manual", None), ("c@example.com", "one-click", None),
        ("d@example.com", "one-click", "192.0.2.4")]
    bodies = [json.loads(r[0]) for r in await db.fetchall(
        "SELECT body FROM notifications ORDER BY id")]
    # c's manual entry came before the account; its person's objection over it is told
    assert [(b["email"], b["channel"]) for b in bodies] == [
        ("a@example.com", "one-click"), ("b@example.com", "link"),
        ("d@example.com", "one-click"), ("x@example.org", "one-click"),
        ("c@example.com", "one-click")]
    assert await ledger.object_to_copies([(d_a, ids["a@example.com"], "one-click", None)]) == [
        ("a@example.com", "fr", False)]
    assert len(await ledger.suppression_list()) == 5
    assert await ledger.recipient_of_copy(d_b, ids["d@example.com"]) == ("d@example.com", "es")
    assert await ledger.recipient_of_copy(d_b, 888_888) is None
    assert await ledger.recipient_of_copy(d_b, ids["b@example.com"]) == ("b@example.com", "de")


async def test_a_webhook_batch_skips_replays_within_it_and_from_before(db, hasher):
    import_csv(db, hasher, "email\na@example.com\n")
    ledger = Ledger(db, hasher)
    assert await ledger.suppress_events([("e1", "a@example.com", "complaint")],
                                        "webhook", "192.0.2.9") == (1, 0)
    assert await ledger.suppress_events([
        ("e1", "a@example.com", None),  # replayed: the same id for the same address
        ("e1", "b@example.com", None),  # the same id for another address: no replay
        ("e2", "c@example.com", None),
        ("e2", "c@example.com", None),  # the same event twice in one batch: a replay
        ("e2", "d@example.com", None),  # (another ESP's "e2", or one per list)
        ("e3", "c@example.com", None),  # a new id for an address this batch suppressed
        (None, "e@example.com", "bounce"),
        (None, "a@example.com", None),  # suppressed before
    ], "webhook", None) == (4, 2)
    suppressed = {e.hash for e in await ledger.suppression_list()}
    assert suppressed == {hasher(a) for a in ("a@example.com", "b@example.com",
                                              "c@example.com", "d@example.com",
                                              "e@example.com")}
    received = await db.fetchall("SELECT id FROM webhook_events ORDER BY id")
    assert sorted(r[0].partition("#")[0] for r in received) == ["e1", "e1", "e2", "e2", "e3"]
    assert all("example.com" not in r[0] for r in received)  # a keyed hash, no address
    contact = await ledger.contact("a@example.com")
    assert contact is not None
    assert [(e.kind, e.wording, e.ip) for e in await ledger.events(contact.id or 0)] == [
        ("objection", "complaint", "192.0.2.9")]


async def test_informed_and_expired_marks_of_a_group_are_set_once(db, hasher):
    """mark_informed over a group (as the copies' composer batches it): the first notice
    version given for a contact wins, a contact informed before keeps its date, one
    `information` event each. mark_expired: only contacts not marked yet."""
    import_csv(db, hasher, "email\na@example.com\nb@example.com\nc@example.com\n")
    ledger = Ledger(db, hasher)
    with sqlite3.connect(db.path) as conn:
        ids = dict(conn.execute("SELECT address, id FROM contacts"))
        conn.execute("UPDATE contacts SET informed_at = 1.0, informed_version = 'v0',"
                     " retention_expired_at = 2.0 WHERE address = 'c@example.com'")
    a, b, c = ids["a@example.com"], ids["b@example.com"], ids["c@example.com"]
    await ledger.mark_informed([(a, "v1"), (c, "v1"), (a, "v2"), (b, "v2")])
    await ledger.mark_informed([(b, "v3")])  # already informed: no change
    await ledger.mark_expired([a, c, a])
    rows = await db.fetchall("SELECT address, informed_version, informed_at IS NOT NULL,"
                             " informed_at = 1.0, retention_expired_at FROM contacts"
                             " ORDER BY address")
    assert [tuple(r[:4]) for r in rows] == [("a@example.com", "v1", 1, 0),
                                             ("b@example.com", "v2", 1, 0),
                                             ("c@example.com", "v0", 1, 1)]
    assert rows[0][4] is not None and rows[1][4] is None and rows[2][4] == 2.0
    events = await db.fetchall("SELECT contact_id, wording FROM contact_events"
                               " WHERE kind = 'information' ORDER BY contact_id")
    assert [tuple(e) for e in events] == sorted([(a, "v1"), (b, "v2")])


async def test_webhook_event_ids_are_forgotten_a_day_later_and_replays_refused_before(
        db, hasher):
    ledger = Ledger(db, hasher)
    assert await ledger.suppress_events([("e1", "a@example.com", None)], "webhook", None) == \
        (1, 0)
    assert (await ledger.suppress_events([("e1", "a@example.com", None)], "webhook", None)
            )[1] == 1  # a replay
    assert await ledger.forget_webhook_events(time.time() - 86400) == 0  # kept a day
    assert await ledger.forget_webhook_events(time.time() + 1) == 1
    assert (await db.fetchone("SELECT count(*) FROM webhook_events"))[0] == 0


async def test_addresses_stored_decomposed_are_composed_and_keep_their_objection(db, hasher):
    """A store from before local parts were NFC: a contact held as jose + U+0301 and its
    objection under that form's hash. Rewritten once, the contact is found and its objection
    still holds, whichever form the mail is written in."""
    decomposed, composed = "jose\u0301@corp.example", "jos\u00e9@corp.example"
    old_hash = hasher._mac(decomposed.encode())  # the hash as the old form was taken
    await db.write_one(
        "INSERT INTO contacts (address, address_hash, audience, topics, collected_at,"
        " created_at, updated_at) VALUES (?, ?, 'b2b', 'crm', ?, 1, 1)",
        (decomposed, old_hash, time.time()))
    await db.write_one("INSERT INTO suppression (hash, created_at, channel)"
                       " VALUES (?, 1, 'one-click')", (old_hash,))
    assert not (await facts(db, hasher, composed)).suppressed  # the bypass, before
    assert await Ledger(db, hasher).compose_stored_addresses() == 1
    for written in (composed, decomposed):
        found = await facts(db, hasher, written)
        assert found.contact is not None and found.suppressed, written
    assert await Ledger(db, hasher).compose_stored_addresses() == 0


async def test_a_restricted_source_stays_restricted_whatever_a_later_file_says(db, hasher):
    """R3 (KASPR): data taken from a profile whose owner restricted its visibility was
    unlawfully collected; a later import saying "public" (or nothing) does not change that."""
    header = "email,audience,topics,source_name,source_type,source_visibility,job_title\n"
    import_csv(db, hasher, header + "r@corp.example,b2b,crm,LinkedIn,social_network,"
               "restricted,\n")
    for visibility in ("public", ""):
        import_csv(db, hasher, header + f"r@corp.example,b2b,crm,LinkedIn,social_network,"
                   f"{visibility},CTO\n")
        contact = (await facts(db, hasher, "r@corp.example")).contact
        assert contact is not None and contact.job_title == "CTO"
        assert [s.visibility for s in contact.sources] == ["restricted"]


async def test_a_retention_purge_leaves_the_address_nowhere_in_the_files(db, hasher):
    """The contacts' rows were deleted before secure_delete was on (a build whose default
    is off kept them in free pages), and the WAL kept the old pages until a checkpoint."""
    from gateway.model import PolicyKnobs
    from gateway.store.retention import Retention

    old = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 2000 * DAY))
    import_csv(db, hasher, "email,collected_at,source_name,source_type\n"
                           f"vieux.prospect.zq@exemple.fr,{old},Salon Consentia Zq,direct\n")
    await db.writer.execute("PRAGMA secure_delete = OFF")  # as some SQLite builds have it
    purged = await Retention(db, PolicyKnobs(), hasher, 30).purge()
    assert purged.addresses == ["vieux.prospect.zq@exemple.fr"]
    for path in (db.path, db.path.with_name(db.path.name + "-wal")):
        if path.exists():
            content = path.read_bytes()
            assert b"vieux.prospect.zq" not in content, path
            assert b"Consentia Zq" not in content, path


async def test_a_retention_purge_takes_the_address_out_of_finished_records(db, hasher):
    """KASPR (unlimited retention): past R4's deadline the person's sent and failed copies,
    decided quarantine rows, delivered notifications and the raw messages left without a copy
    go with the ledger entry, and their copies still waiting are withdrawn (one went out after
    the purge: compliance audit); a held copy and a pending notification stay, and so does
    everything of the others."""
    from gateway.model import PolicyKnobs
    from gateway.store.queue import IncomingMessage, QueueStore, SentMark
    from gateway.store.retention import Retention

    old = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 2000 * DAY))
    import_csv(db, hasher, "email,collected_at,source_name,source_type\n"
                           f"Old@Example.com,{old},Form,direct\n"
                           f"kept@example.com,{old},Form,direct\n"
                           "new@example.com,2026-06-01,Form,direct\n")
    await db.write_one("UPDATE contacts SET last_interaction_at = ? WHERE address = ?",
                       (time.time(), "kept@example.com"))  # the person acted: a fresh clock
    queue = QueueStore(db, "me")

    def message(mid: str, *rcpts: str) -> IncomingMessage:
        return IncomingMessage(mid, time.time(), "crm", "127.0.0.1", "news@example.com",
                               f"Subject: {mid}\r\n\r\nbody\r\n".encode(), rcpts, subject=mid)

    sent, failed, pending, shared, _ = await queue.commit_messages([
        message("SENT", "old@example.com"), message("FAILED", "OLD@example.com"),
        message("PENDING", "old@example.com"),
        message("SHARED", "old@example.com", "new@example.com"),
        message("RECEIPT", "old@example.com")])
    # every copy allowed by R6 but a service message's (T1 reads no ledger: its copy stays)
    await db.write_one("UPDATE deliveries SET rule = CASE message_id WHEN 'RECEIPT' THEN 'T1'"
                       " ELSE 'R6' END")
    await queue.mark_sent([SentMark(sent[0].delivery_id), SentMark(shared[0].delivery_id)])
    await queue.fail(failed[0].delivery_id, "550 no such user")
    for mid, rcpt, state in (("SENT", "old@example.com", "released"),
                             ("SENT", "old@example.com", "held"),
                             ("SHARED", "new@example.com", "rejected")):
        await db.write_one(
            "INSERT INTO quarantine (message_id, created_at, account, client_ip, mail_from,"
            " recipient, subject, rule, reason, basis, state) VALUES"
            " (?, 0, 'crm', '127.0.0.1', 'news@example.com', ?, 's', 'R9', 'r', 'b', ?)",
            (mid, rcpt, state))
    for address, state in (("old@example.com", "sent"), ("Old@example.com", "failed"),
                           ("old@example.com", "pending"), ("new@example.com", "sent")):
        await db.write_one(
            "INSERT INTO notifications (account, url, body, state, next_attempt_at,"
            " created_at, updated_at) VALUES ('crm', 'https://crm.example/n', ?, ?, 0, 0, 0)",
            (json.dumps({"event": "objection", "email": address}), state))

    from gateway.store.requests import RequestStore
    answered = await RequestStore(db).open("old@example.com", "access", time.time() - 99 * DAY)
    await RequestStore(db).close(answered.id, "answered")
    pending = await RequestStore(db).open("OLD@example.com", "erasure")

    purged = await Retention(db, PolicyKnobs(), hasher, 30).purge()

    assert purged.addresses == ["Old@example.com"]
    assert purged.removed == {"copies": 3, "waiting": 1, "quarantine": 1, "notifications": 2,
                              "messages": 2, "requests": 1, "outside_copies": 0,
                              "outside_quarantine": 0, "outside_notifications": 0,
                              "outside_requests": 0}
    # the answered request keeps its dates under the hash, not the operator's words about
    # the person (as an erasure leaves it); the open one keeps its address
    addresses = dict(tuple(r) for r in await db.fetchall("SELECT id, address FROM requests"))
    assert addresses[answered.id].startswith("purged:")
    [(note,)] = await db.fetchall("SELECT note FROM requests WHERE id = ?", (answered.id,))
    assert note.startswith("(note deleted with the address")
    assert addresses[pending.id] == "OLD@example.com"
    left = await db.fetchall("SELECT message_id, recipient, state FROM deliveries ORDER BY id")
    assert [tuple(row) for row in left] == [("SHARED", "new@example.com", "queued"),
                                            ("RECEIPT", "old@example.com", "queued")]
    held = await db.fetchall("SELECT recipient, state FROM quarantine ORDER BY id")
    assert [tuple(row) for row in held] == [("old@example.com", "held"),
                                            ("new@example.com", "rejected")]
    notes = await db.fetchall("SELECT json_extract(body, '$.email'), state FROM notifications"
                              " ORDER BY id")
    assert [tuple(row) for row in notes] == [("old@example.com", "pending"),
                                             ("new@example.com", "sent")]
    # SENT stays for its held copy, SHARED for its queued one; FAILED and PENDING are gone
    messages = await db.fetchall("SELECT id FROM messages ORDER BY id")
    assert [row[0] for row in messages] == ["RECEIPT", "SENT", "SHARED"]
    assert (await Retention(db, PolicyKnobs(), hasher, 30).purge()).addresses == []


@pytest.mark.parametrize("channel", ["one-click", "mailto", "webhook", "link"])
async def test_the_persons_objection_withdraws_their_consent_for_good(db, hasher, channel):
    """An operator lifted a one-click objection (`suppress remove`) and R6 allowed again on
    the consent given before it: the objection is the person's withdrawal of that consent
    (compliance audit). A stale export's grant does not bring it back; a later one does."""
    head = "email,audience,consent,consent_at,consent_method,source_name,source_type\n"
    import_csv(db, hasher, head + "c@example.com,b2c,granted,2026-01-05,web form,web,direct\n"
                                  "m@example.com,b2c,granted,2026-01-05,web form,web,direct\n")
    import_csv(db, hasher, head + "r@example.com,b2c,granted,2026-01-05,web form,web,direct\n")
    ledger = Ledger(db, hasher)
    assert await ledger.suppress("C@example.com", channel, ip="192.0.2.7")
    assert await ledger.suppress("m@example.com", "manual", reason="hard bounce")
    # a GDPR 21 request entered by the operator is the person's own act too (diff review)
    assert await ledger.suppress("r@example.com", "manual", reason="objection request",
                                 person=True)
    for address in ("c@example.com", "m@example.com", "r@example.com"):
        await ledger.unsuppress(address)
    for address in ("c@example.com", "r@example.com"):
        contact = (await facts(db, hasher, address)).contact
        assert contact is not None and contact.consent == "withdrawn"
        # the consent's date, method and proof stay: the proof of mail sent under it
        assert (contact.consent_at, contact.consent_method) == (1767571200.0, "web form")
    # an operator's suppression (a bounce, say) is no act of the person's: consent kept
    assert (await facts(db, hasher, "m@example.com")).contact.consent == "granted"
    import_csv(db, hasher, head + "c@example.com,b2c,granted,2026-01-05,web form,web,direct\n")
    assert (await facts(db, hasher, "c@example.com")).contact.consent == "withdrawn"
    # dated after the objection, a new consent replaces the withdrawal
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 60))
    import_csv(db, hasher, head + f"c@example.com,b2c,granted,{later},double opt-in,web,direct\n")
    contact = (await facts(db, hasher, "c@example.com")).contact
    assert (contact.consent, contact.consent_method) == ("granted", "double opt-in")


async def test_an_old_grant_does_not_give_a_consent_to_a_person_who_objected_without_one(
        db, hasher):
    """A B2B prospect with no consent on record objected; an old export then gave them a
    consent dated before the objection, the ledger said they had consented (GDPR 15), and once
    the suppression was lifted R6 allowed. The same when the objection came before the ledger
    knew the address (data-lifecycle audit). A consent dated after the objection counts."""
    ledger = Ledger(db, hasher)
    import_csv(db, hasher, "email,audience,source_name,source_type\n"
                           "carol@example.com,b2b,fair,direct\n")
    assert await ledger.suppress("carol@example.com", "webhook")
    assert await ledger.suppress("dan@example.com", "one-click")  # not in the ledger yet
    await ledger.unsuppress("carol@example.com", force=True)
    head = "email,audience,consent,consent_at,consent_method,source_name,source_type\n"
    old = ("carol@example.com,b2c,granted,2025-06-01,web form,old export,import\n"
           "dan@example.com,b2c,granted,2025-06-01,web form,old export,import\n")
    import_csv(db, hasher, head + old)
    await ledger.unsuppress("dan@example.com", force=True)
    for address in ("carol@example.com", "dan@example.com"):
        found = await facts(db, hasher, address)
        assert found.contact is not None and found.contact.consent is None, address
        assert found.contact.consent_at is None and found.contact.consent_method is None
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 60))
    import_csv(db, hasher, head + f"carol@example.com,b2c,granted,{later},double opt-in,web,"
                                  "direct\n"
                                  f"dan@example.com,b2c,granted,{later},double opt-in,web,"
                                  "direct\n")
    for address in ("carol@example.com", "dan@example.com"):
        assert (await facts(db, hasher, address)).contact.consent == "granted", address
    # a contact who never objected takes an old grant
    import_csv(db, hasher, "email,audience,source_name,source_type\n"
                           "erin@example.com,b2c,a,direct\n")
    import_csv(db, hasher, head + "erin@example.com,b2c,granted,2025-06-01,form,web,direct\n")
    assert (await facts(db, hasher, "erin@example.com")).contact.consent == "granted"


async def test_a_stale_grant_never_replaces_a_recorded_withdrawal(db, hasher):
    """A weekly export made before the withdrawal was entered brought the consent back: once
    the suppression was lifted, R6 allowed on it, and the ledger stated it (GDPR 15)."""
    head = "email,audience,consent,consent_at,consent_method,source_name,source_type\n"
    import_csv(db, hasher, head + "p@example.com,b2c,withdrawn,2026-03-01,,web,direct\n")
    import_csv(db, hasher, head + "p@example.com,b2c,granted,2026-02-01,form,web,direct\n")
    contact = (await facts(db, hasher, "p@example.com")).contact
    assert contact is not None and contact.consent == "withdrawn"
    assert contact.consent_at == 1772323200.0  # 2026-03-01
    undated = "email,audience,consent,source_name,source_type\n"  # a withdrawal without date
    import_csv(db, hasher, undated + "q@example.com,b2c,withdrawn,web,direct\n")
    import_csv(db, hasher, head + "q@example.com,b2c,granted,2026-02-01,form,web,direct\n")
    assert (await facts(db, hasher, "q@example.com")).contact.consent == "withdrawn"
    # a consent given again after the withdrawal, dated, replaces it
    import_csv(db, hasher, head + "p@example.com,b2c,granted,2026-04-01,form,web,direct\n")
    contact = (await facts(db, hasher, "p@example.com")).contact
    assert contact.consent == "granted" and contact.consent_at == 1775001600.0


async def test_without_collected_at_the_clock_starts_at_the_rows_earliest_fact(db, hasher):
    """R4: a new contact with a 2021 consent and no collected_at was dated from the import
    day, and kept and mailed until 2029."""
    import_csv(db, hasher, "email,consent,consent_at,consent_method,source_name,source_type,"
                           "last_interaction_at\n"
                           "old@example.com,granted,2021-01-04,web form,website,direct,"
                           "2021-02-01\n")
    contact = (await facts(db, hasher, "old@example.com")).contact
    assert contact is not None and contact.collected_at == 1609718400.0  # 2021-01-04
    # and on update: a contact first imported without dates
    import_csv(db, hasher, "email,source_name,source_type\nlate@example.com,web,direct\n")
    import_csv(db, hasher, "email,last_interaction_at\nlate@example.com,2020-05-01\n")
    contact = (await facts(db, hasher, "late@example.com")).contact
    assert contact is not None and contact.collected_at == 1588291200.0  # 2020-05-01


async def test_a_fresh_collected_at_does_not_restart_the_clock_of_older_facts(db, hasher):
    """A vendor's file dates its collection 2026 for a person whose interaction it dates
    2021: the first import kept 2026 (allowed) and the same file imported again made it 2021
    (R4): an update must never restart the clock (KASPR), and a first import must not
    either."""
    row = ("email,audience,consent,consent_at,consent_method,source_name,source_type,"
           "collected_at,last_interaction_at\n"
           "v1@example.com,b2b,,,,Vendor,import,2026-11-01,2021-01-01\n"
           "v2@example.com,b2c,granted,2021-01-01,web form,Shop,direct,2026-11-01,\n")
    import_csv(db, hasher, row)
    first = [(await facts(db, hasher, a)).contact for a in ("v1@example.com", "v2@example.com")]
    import_csv(db, hasher, row)
    again = [(await facts(db, hasher, a)).contact for a in ("v1@example.com", "v2@example.com")]
    assert [c.collected_at for c in first] == [c.collected_at for c in again] == [
        1609459200.0, 1609459200.0]  # 2021-01-01 both times


async def test_a_withdrawal_again_after_a_lifted_suppression_is_on_the_record(db, hasher):
    """The second import re-suppressed the address but recorded nothing: the history ended
    on 'objection_lifted' though the objection was in force again."""
    from gateway.store.ledger import Ledger

    csv = "email,consent,source_name,source_type\nw@example.com,withdrawn,web,direct\n"
    import_csv(db, hasher, csv)
    ledger = Ledger(db, hasher)
    await ledger.unsuppress("w@example.com", "asked by phone")
    assert import_csv(db, hasher, csv).counts.suppressed == 1
    contact = await ledger.contact("w@example.com")
    kinds = [e.kind for e in await ledger.events(contact.id)]
    assert kinds[-2:] == ["objection_lifted", "withdrawal"]


@pytest.mark.parametrize("stored, written", [
    ("ταΰγετος@example.net", "ΤΑΫ́ΓΕΤΟΣ@EXAMPLE.NET"),
    ("ΐρις@example.net", "ΐρις@example.net".upper()),
    ("ευαΐ@example.net", "ΕΥΑΪ́@EXAMPLE.NET"),
])
async def test_an_objection_in_capitals_stops_a_greek_address_with_dialytika_and_tonos(
        db, hasher, stored: str, written: str):
    """Case folding left "ΐ" and its capital in two forms of the same text: two hashes, and
    the objection written in capitals did not stop the mail (R1)."""
    from gateway.addresses import person_form
    from gateway.store.ledger import Ledger

    import_csv(db, hasher, "email,consent,consent_at,source_name,source_type\n"
                           f"{stored},granted,2026-01-05,web,direct\n")
    assert hasher(stored) == hasher(written) and person_form(stored) == person_form(written)
    await Ledger(db, hasher).suppress(written, "manual")
    assert (await facts(db, hasher, stored)).suppressed


async def test_contacts_held_twice_in_another_case_are_found_for_the_operator(
        db: Database, hasher: AddressHasher):
    """Imports before 023 made a contact per spelling (Jane.Doe@ and jane.doe@): each kept
    its own facts and decisions, and nothing said so after the upgrade."""
    import_csv(db, hasher, "email,source_name,source_type\nJane.Doe@x.example,f,direct\n"
                           "Solo@x.example,f,direct\nplain@x.example,f,direct\n")
    ledger = Ledger(db, hasher)
    assert await ledger.case_twins() == (0, [])
    for address in ("jane.doe@x.example", "JANE.DOE@x.example"):  # as 022 let them in
        await db.write_one("INSERT INTO contacts (address, address_hash, kind, audience,"
                           " relationship, topics, customer_categories, collected_at,"
                           " created_at, updated_at) VALUES (?, ?, 'person', 'b2c',"
                           " 'prospect', '', '', 1, 1, 1)", (address, hasher(address)))
    assert await ledger.case_twins() == (2, ["Jane.Doe@x.example", "JANE.DOE@x.example"])
