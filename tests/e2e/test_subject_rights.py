"""GDPR 15 and 17 through the real `gateway subject` command, on a store filled over SMTP by
the running server."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from conftest import CSV_HEADER, GatewayProcess, Sink, free_port, message, wait_until
from ledger_cases import ACCOUNT_PRODUCTS, ACCOUNT_TOPICS, days_ago
from mailflow import rcpt
from rawsmtp import RawSmtp

MARIE = "marie.curie@labo.example"
BOB = "bob@labo.example"
CARL = "carl@labo.example"


def contacts_csv(path: Path) -> Path:
    """Marie: B2B, her address from a public directory, French. Bob and Carl: consent, en."""
    columns = CSV_HEADER.split(",")
    rows = [
        {"email": MARIE, "kind": "person", "audience": "b2b", "language": "fr",
         "first_name": "Marie", "last_name": "Curie", "job_title": "Directrice R&D",
         "topics": "security", "source_name": "Annuaire des entreprises de Lorraine",
         "source_type": "public_directory", "source_visibility": "public",
         "collected_at": days_ago(200), "informed_at": days_ago(199)},
        *({"email": who, "language": "en", "consent": "granted", "consent_at": days_ago(50),
           "consent_method": "web form", "consent_proof": "form v2 from 198.51.100.4",
           "source_name": "website form", "source_type": "direct",
           "collected_at": days_ago(50)} for who in (BOB, CARL)),
    ]
    lines = [CSV_HEADER] + [",".join(row.get(c, "") for c in columns) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def start(make_gateway, tmp_path: Path, **options: object) -> GatewayProcess:
    gw = make_gateway(contacts=contacts_csv(tmp_path / "contacts.csv"), start=False, **options)
    assert gw.cli("accounts", "update", "crm", "--topics", ACCOUNT_TOPICS,
                  "--product-categories", ACCOUNT_PRODUCTS).returncode == 0
    return gw.start()


def send(gw: GatewayProcess, to: list[str], subject: str) -> None:
    s = RawSmtp(gw.smtp_port)
    s.cmd("EHLO c")
    s.cmd("MAIL FROM:<news@example.com>")
    for address in to:
        assert s.cmd(f"RCPT TO:<{address}>")[0] == 250, address
    s.cmd("DATA")
    mail = message(to=", ".join(to), subject=subject,
                   body="Bonjour Marie Curie,\r\n\r\nNotre offre.\r\n")
    assert s.cmd(mail + b".")[0] == 250
    s.cmd("QUIT")


def export(gw: GatewayProcess, address: str) -> dict:
    result = gw.cli("subject", "export", address, "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def store_bytes(gw: GatewayProcess) -> bytes:
    """The database file and its WAL, as they lie on disk, lower-cased."""
    base = gw.config.parent / "gateway.db"
    parts = [p.read_bytes() for p in (base, Path(f"{base}-wal")) if p.exists()]
    return b"".join(parts).lower()


def test_export_names_the_directory_and_every_message(make_gateway, tmp_path, sink: Sink):
    gw = start(make_gateway, tmp_path)
    send(gw, [MARIE], "Offre sécurité")
    sink.wait_for(1)
    assert gw.cli("suppress", "add", MARIE, "--reason", "asked by phone").returncode == 0
    assert rcpt(gw, MARIE)[0] == 550
    # the refusal's audit row is written just after the session ends (flow.record_abandoned)
    document = wait_until(lambda: (d := export(gw, "Marie.Curie@LABO.example"))
                          ["decisions"][0]["delivery"] == "sent" and len(d["decisions"]) == 2
                          and d, what="the copy sent and the refusal audited")
    assert document["address"] == MARIE
    [entry] = document["ledger"]
    assert entry["first_name"] == "Marie" and entry["retention_deadline"] > 0
    assert entry["sources"] == [{"name": "Annuaire des entreprises de Lorraine",
                                 "type": "public_directory", "visibility": "public",
                                 "recorded_at": entry["sources"][0]["recorded_at"]}]
    sent, refused = document["decisions"]
    assert (sent["account"], sent["subject"], sent["decision"], sent["rule"]) == \
        ("crm", "Offre sécurité", "allow", "R8")
    assert (refused["decision"], refused["rule"], refused["message_id"]) == ("reject", "R1", None)
    assert document["suppression"]["channel"] == "manual"
    assert [u["kind"] for u in document["unsubscribes"]] == ["objection"]
    assert [e["kind"] for e in entry["events"]] == ["information", "objection"]  # the notice
    # INTERFACE's words, flat: facts, sources, events, messages
    assert document["facts"]["first_name"] == "Marie" and "sources" not in document["facts"]
    assert document["sources"] == entry["sources"] and document["events"] == entry["events"]
    assert document["messages"] == document["decisions"]

    letter = gw.cli("subject", "export", MARIE, "--format", "text").stdout
    assert max(len(line) for line in letter.splitlines()) <= 78
    letter = " ".join(letter.split())  # as read, whatever the line breaks
    for words in ("Bonjour Marie", "Annuaire des entreprises de Lorraine", "un annuaire public",
                  "« Offre sécurité » — remis (message en lien avec votre profession) [R8]",
                  "un message — non envoyé (votre adresse figure sur notre liste "
                  "d'opposition) [R1]",
                  "Nom : Marie Curie", "enregistré à la main; asked by phone",
                  "pour le compte de : crm", "Directrice R&D", "CNIL"):
        assert words in letter, words
    english = tmp_path / "answer.txt"
    written = gw.cli("subject", "export", MARIE, "--format", "text", "--language", "en",
                     "--out", str(english))
    assert written.returncode == 0 and written.stdout == ""
    assert stat.S_IMODE(os.stat(english).st_mode) == 0o600
    text = " ".join(english.read_text().split())
    assert "a public directory" in text
    assert "“Offre sécurité” — delivered (the message related to your profession) [R8]" in text
    link = tmp_path / "link.txt"  # renamed over, a link (or /dev/stdout) became the export
    link.symlink_to(tmp_path / "elsewhere.txt")
    refused = gw.cli("subject", "export", MARIE, "--out", str(link))
    assert refused.returncode == 1 and "not a regular file" in refused.stderr
    assert link.is_symlink() and not (tmp_path / "elsewhere.txt").exists()

    nobody = gw.cli("subject", "export", "nobody@labo.example", "--format", "text")
    # the answer, and 1 (not found) for scripts, as INTERFACE's exit codes say (INTERFACE
    # audit: it was 0)
    assert nobody.returncode == 1 and "We hold no personal data" in nobody.stdout
    assert "nothing is held on nobody@labo.example" in nobody.stderr
    assert gw.cli("subject", "export", "not an address").returncode == 2


def test_erasure_leaves_nothing_in_the_file_and_the_next_rcpt_gets_r1(
        make_gateway, tmp_path, sink: Sink):
    # Upstream is down: copies stay in the queue, as undelivered mail does.
    gw = start(make_gateway, tmp_path, sink_port=free_port())
    send(gw, [MARIE, BOB], "Offre pour Marie et Bob")
    send(gw, [MARIE], "")  # no subject: M3 holds Marie's copy in the quarantine
    wait_until(lambda: json.loads(gw.cli("quarantine", "list", "--json").stdout),
               what="the held copy")
    assert gw.cli("requests", "open", MARIE, "--kind", "erasure").returncode == 0
    assert gw.cli("accounts", "update", "crm", "--notify-url",
                  f"http://127.0.0.1:{free_port()}/hook").returncode == 0
    assert gw.cli("suppress", "add", CARL).returncode == 0  # a pending notification names Carl
    db_path = gw.config.parent / "gateway.db"
    with sqlite3.connect(db_path) as db:
        audit_rows = db.execute("SELECT count(*) FROM audit").fetchone()[0]
    assert b"marie.curie@labo.example" in store_bytes(gw)  # the check below can fail

    erased = gw.cli("subject", "erase", MARIE, "--operator", "dpo")
    assert erased.returncode == 0, erased.stderr
    # the account's notify URL is down: said, and nothing kept to retry (GDPR 19 by hand)
    assert f"tell that tool yourself that {MARIE} was erased" in erased.stderr
    assert "contacts 1" in erased.stdout and "quarantine 1" in erased.stdout
    # Marie's queued copy goes; the held message was only for her, the other one is Bob's too.
    assert "deliveries 1, messages 1, messages_scrubbed 1" in erased.stdout
    # her two decisions (the send, the hold) stay in the audit log, naming no one
    assert "audit_unlinked 2" in erased.stdout
    assert "added (channel erasure)" in erased.stdout
    # several addresses, one compaction; an invalid one among them erases nothing
    assert gw.cli("subject", "erase", CARL, "not-an-address").returncode == 2
    assert b"carl@labo.example" in store_bytes(gw)
    both = gw.cli("subject", "erase", CARL, "nobody@labo.example", "--yes")
    assert both.returncode == 0 and both.stdout.count("erased ") == 2, both.stderr
    assert both.stdout.count("store compacted") == 1

    on_disk = store_bytes(gw)
    # her name too, in Bob's kept message ("Bonjour Marie Curie"; data-lifecycle audit)
    for trace in (b"marie.curie@labo.example", b"carl@labo.example", b"directrice r&d",
                  b"marie curie"):
        assert trace not in on_disk, trace
    assert "names_scrubbed 1" in erased.stdout
    assert rcpt(gw, MARIE) == (550, "5.7.1 R1 recipient objected to prospecting "
                                    "(suppression list)")
    assert rcpt(gw, "MARIE.CURIE@labo.example")[0] == 550
    with sqlite3.connect(db_path) as db:
        # Bob's copy is still queued, its message now without Marie's address.
        [(recipient, content)] = db.execute(
            "SELECT d.recipient, m.content FROM deliveries d JOIN messages m"
            " ON m.id = d.message_id WHERE d.state IN ('queued', 'deferred')").fetchall()
        assert recipient == BOB and b"erased@erased.invalid" in content
        assert db.execute("SELECT count(*) FROM audit").fetchone()[0] >= audit_rows
        # COMPLIANCE 6: nothing but the suppression hash ties the store to her. Her rows keep
        # what was decided and when, with neither her hash nor the salt of its commitment.
        unlinked = db.execute("SELECT decision, recipient_salt, recipient_commit FROM audit"
                              " WHERE recipient_hash = x''").fetchall()
        assert sorted(row[0] for row in unlinked) == ["allow", "quarantine"]
        assert all(salt is None and len(commit) == 32 for _, salt, commit in unlinked)
        assert db.execute("SELECT count(*) FROM notifications").fetchone()[0] == 0
        [(address, closed, note)] = db.execute(
            "SELECT address, closed_at, note FROM requests").fetchall()
        assert address.startswith("erased:") and closed and "erasure" in note
        assert db.execute("SELECT operator, removed FROM erasures ORDER BY id").fetchall()[0][0] \
            == "dpo"
    verified = gw.cli("audit", "verify")
    assert verified.returncode == 0 and "2 of them unlinked from their recipient" in \
        verified.stdout, verified.stdout + verified.stderr
    # the two refusals' audit rows are written just after their sessions end
    after = wait_until(lambda: (d := export(gw, MARIE)) and len(d["decisions"]) == 2 and d,
                       what="the two refusals audited")
    assert after["ledger"] == [] and len(after["erasures"]) == 1
    assert after["suppression"]["channel"] == "erasure"
    # What is held on her now: the refusals of the two RCPTs since, not her earlier mail.
    assert [(d["decision"], d["rule"]) for d in after["decisions"]] == [("reject", "R1")] * 2
    assert "were erased" in gw.cli("subject", "export", MARIE, "--format", "text").stdout
    # The old file imported again does not bring her back; the others' rows still import.
    again = gw.cli("contacts", "import", str(tmp_path / "contacts.csv"))
    assert again.returncode == 1
    assert f"contacts.csv:2: {MARIE} was erased on" in again.stderr
    assert "imported 1 row (0 new, 1 updated), 2 refused" in again.stdout  # Bob; Carl erased
    assert b"directrice r&d" not in store_bytes(gw)


def test_the_export_holds_the_reviewers_words_and_who_was_told_of_the_objection(
        make_gateway, tmp_path, sink: Sink):
    """GDPR 15: a reviewer's reason for rejecting the person's held copy, and the accounts
    her objection was passed on to (15(1)(c), recipients), were held but not exported."""
    gw = start(make_gateway, tmp_path, sink_port=free_port())
    send(gw, [MARIE], "")  # no subject: M3 holds the copy
    [held] = wait_until(lambda: json.loads(gw.cli("quarantine", "list", "--json").stdout),
                        what="the held copy")
    assert gw.cli("quarantine", "reject", str(held["id"]), "--reason",
                  "a quitté le service achats").returncode == 0
    assert gw.cli("accounts", "update", "crm", "--notify-url",
                  f"http://127.0.0.1:{free_port()}/hook").returncode == 0
    assert gw.cli("suppress", "add", MARIE).returncode == 0
    document = export(gw, MARIE)
    [copy] = document["quarantine"]
    assert (copy["state"], copy["decision_reason"]) == ("rejected", "a quitté le service achats")
    assert copy["decided_by"]
    assert [(n["account"], n["event"]) for n in document["notifications"]] == [
        ("crm", "objection")]
    letter = " ".join(gw.cli("subject", "export", MARIE, "--format", "text").stdout.split())
    assert "note de l'examen : a quitté le service achats" in letter
    # the notify URL is down: on its way, not "passed on"
    assert "Votre opposition est en cours de transmission aux outils d'envoi de crm" in letter
    assert "a été transmise" not in letter


def test_the_export_gives_the_requests_notes_and_the_reason_of_an_extension(make_gateway,
                                                                            tmp_path):
    """COMPLIANCE 6 (everything held on the address), GDPR 15 and 12(3): the operator's note
    on the person's request and the reason of an extension, which must be given to the
    person, were held in the request but in neither form of the export."""
    gw = start(make_gateway, tmp_path)
    assert gw.cli("requests", "open", MARIE, "--kind", "access").returncode == 0
    extended = gw.cli("requests", "extend", "1", "--reason",
                      "Marie asked about 40 mailings at once")
    assert extended.returncode == 0, extended.stderr
    assert gw.cli("requests", "open", MARIE, "--kind", "erasure").returncode == 0
    assert gw.cli("requests", "close", "2", "--note",
                  "refused: Marie Curie is a current customer").returncode == 0
    notes = {r["id"]: r["note"] for r in export(gw, MARIE)["requests"]}
    assert notes[1].startswith("extended to ") and notes[1].endswith(
        ": Marie asked about 40 mailings at once")
    assert notes[2] == "refused: Marie Curie is a current customer"
    for lang, extension in (("fr", "délai de réponse prolongé jusqu'au"),
                            ("en", "answer period extended to")):
        letter = " ".join(gw.cli("subject", "export", MARIE, "--format", "text",
                                 "--language", lang).stdout.split())
        assert extension in letter and "Marie asked about 40 mailings at once" in letter
        assert "refused: Marie Curie is a current customer" in letter


def test_an_open_access_request_holds_the_erasure_until_answered(make_gateway, tmp_path):
    """People ask for access and erasure together: the erasure closed the access request
    "unanswered" and dropped it from every list; nothing could answer it afterwards."""
    gw = start(make_gateway, tmp_path)
    assert gw.cli("requests", "open", MARIE, "--kind", "access").returncode == 0
    assert gw.cli("requests", "open", MARIE, "--kind", "erasure").returncode == 0
    refused = gw.cli("subject", "erase", MARIE, BOB, "--yes")
    assert refused.returncode == 1 and "access request 1 open" in refused.stderr
    assert "nothing erased" in refused.stderr
    assert export(gw, BOB)["ledger"] != []  # nor the other address of the command
    answer = tmp_path / "answer.txt"
    assert gw.cli("subject", "export", MARIE, "--format", "text", "--out",
                  str(answer)).returncode == 0
    assert gw.cli("requests", "close", "1", "--note", "sent by post").returncode == 0
    erased = gw.cli("subject", "erase", MARIE, "--yes")
    assert erased.returncode == 0 and "request 2 closed by the erasure" in erased.stdout
    # --unanswered erases all the same, and says so on the request
    assert gw.cli("requests", "open", BOB, "--kind", "access").returncode == 0
    assert gw.cli("subject", "erase", BOB, "--yes", "--unanswered").returncode == 0
    with sqlite3.connect(gw.config.parent / "gateway.db") as db:
        notes = dict(db.execute("SELECT id, note FROM requests"))
    # the operator's note on the answered request was about her: it went with her address
    assert notes[1].startswith("(note erased with the address, ")
    assert notes[2].startswith("answered by the erasure")
    assert notes[3].startswith("closed unanswered")


def test_an_address_left_inside_an_encoded_part_is_reported_not_hidden(
        make_gateway, tmp_path, sink: Sink):
    """The erasure rewrites the address where the bytes show it; inside a base64 part (or a
    quoted-printable line break, an encoded word) it stayed, and the erasure said nothing."""
    import base64

    gw = start(make_gateway, tmp_path, sink_port=free_port())  # Bob's copy stays queued
    body = base64.encodebytes(f"Bonjour Bob, copie envoyée à {MARIE}.\n".encode())
    mail = (b"From: news@example.com\r\nTo: " + BOB.encode() + b"\r\nSubject: Offre\r\n"
            b"Date: Fri, 27 Nov 2026 10:00:00 +0000\r\nMessage-ID: <b64@example.com>\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + body.replace(b"\n", b"\r\n"))
    s = RawSmtp(gw.smtp_port)
    s.cmd("EHLO c")
    assert s.cmd("MAIL FROM:<news@example.com>")[0] == 250
    assert s.cmd(f"RCPT TO:<{BOB}>")[0] == 250
    assert s.cmd("DATA")[0] == 354
    assert s.cmd(mail + b".")[0] == 250
    s.cmd("QUIT")
    erased = gw.cli("subject", "erase", MARIE, "--yes")
    assert erased.returncode == 0, erased.stderr
    assert f"still name {MARIE} inside an encoded part" in erased.stderr
    clean = gw.cli("subject", "erase", CARL, "--yes")  # named nowhere: no warning
    assert clean.returncode == 0 and "encoded part" not in clean.stderr


@pytest.mark.parametrize("args", [("subject", "erase", "no-at-sign"),
                                  ("subject", "export", "a@b.example", "--format", "xml")])
def test_bad_input_is_refused_with_a_clear_error(make_gateway, args):
    gw = make_gateway(start=False)
    result = gw.cli(*args)
    assert result.returncode in (1, 2) and result.stderr.strip()


def test_an_address_beyond_ascii_is_found_and_erased_everywhere(make_gateway, tmp_path):
    """SQLite's lower() folds ASCII only: straße@ and josé@ rows (a held copy, its raw
    message, a request, an objection notification) must be exported and erased all the same."""
    addresses = ("straße@example.de", "JOSÉ@example.fr")
    columns = CSV_HEADER.split(",")
    rows = [{"email": a, "kind": "person", "audience": "b2b", "language": "de",
             "source_name": "Messe", "source_type": "public_directory",
             "source_visibility": "public", "collected_at": days_ago(30)} for a in addresses]
    ledger = tmp_path / "l.csv"  # b2b without topics: R9, held in the quarantine
    ledger.write_text("\n".join([CSV_HEADER] + [",".join(r.get(c, "") for c in columns)
                                                for r in rows]) + "\n")
    gw = make_gateway(contacts=ledger)
    assert gw.cli("accounts", "update", "crm", "--notify-url",
                  "https://crm.example/hook").returncode == 0
    for address in addresses:
        s = RawSmtp(gw.smtp_port)
        s.cmd("EHLO c")
        assert s.cmd("MAIL FROM:<news@example.com> SMTPUTF8")[0] == 250
        assert s.cmd(f"RCPT TO:<{address}>")[0] == 250
        assert s.cmd("DATA")[0] == 354
        assert s.cmd(f"From: <news@example.com>\r\nTo: <{address}>\r\nSubject: Angebot\r\n"
                     "Content-Type: text/plain; charset=utf-8\r\n\r\nHallo\r\n.".encode())[0] \
            == 250
        s.cmd("QUIT")
        assert gw.cli("requests", "open", address.lower(), "--kind", "access").returncode == 0
    assert gw.cli("suppress", "add", "josé@example.fr").returncode == 0  # a notification
    assert gw.cli("requests", "close", "2", "--note",  # a closed request's note quotes it
                  "answered JOSÉ@example.fr by post").returncode == 0
    store = gw.config.parent / "gateway.db"
    wait_until(lambda: len(json.loads(gw.cli("quarantine", "list", "--json").stdout)) == 2,
               what="two held copies")
    for address in addresses:
        record = json.loads(gw.cli("subject", "export", address.lower()).stdout)
        assert len(record["quarantine"]) == 1 and len(record["requests"]) == 1, address
    erased = gw.cli("subject", "erase", "--yes", "--unanswered", *addresses)
    assert erased.returncode == 0, erased.stderr
    with sqlite3.connect(store) as db:
        left = {table: db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: S608
                for table in ("quarantine", "deliveries", "notifications")}
        texts = [row[0] for row in db.execute(
            "SELECT CAST(content AS TEXT) FROM messages UNION ALL SELECT address FROM requests"
            " UNION ALL SELECT note FROM requests UNION ALL SELECT body FROM notifications")]
    assert left == {"quarantine": 0, "deliveries": 0, "notifications": 0}
    for address in addresses:
        assert not any(address.casefold() in (t or "").casefold() for t in texts), address
    assert json.loads(gw.cli("requests", "list", "--json").stdout) == []  # closed by it
    # the closed request's note, by the erasure's operator (the OS user)
    assert any((t or "").startswith("(note erased with the address, ") for t in texts)


def test_the_full_name_is_found_as_messages_write_it_and_a_name_alone_is_not():
    from gateway.store.subject import _full_names
    pattern = _full_names([("Jean Paul", "Martin")])
    for text in ("Bonjour Jean Paul Martin,", "MARTIN, JEAN PAUL", "martin jean\r\n paul"):
        assert pattern.search(text), text
    for text in ("Martin", "Jean Paul Martinez", "Pierre Martin", "jean paulmartin"):
        assert not pattern.search(text), text
    assert _full_names([("Marie", None), (None, "Curie"), ("", "Curie")]) is None
