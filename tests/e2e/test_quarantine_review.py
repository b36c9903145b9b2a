"""Quarantine review through the real `gateway` command, on a store filled over SMTP."""

from __future__ import annotations

import datetime
import email
import email.policy
import json
import sqlite3
import time

import pytest

from conftest import GatewayProcess, Sink, message, wait_until
from ledger_cases import ACCOUNT_PRODUCTS, ACCOUNT_TOPICS, write_cases_csv
from rawsmtp import RawSmtp

HELD = "unclear@b2b.example"  # R9 in tests/ledger_cases.py


@pytest.fixture
def gw(make_gateway, tmp_path) -> GatewayProcess:
    gw = make_gateway(contacts=write_cases_csv(tmp_path / "cases.csv"), start=False)
    assert gw.cli("accounts", "update", "crm", "--topics", ACCOUNT_TOPICS,
                  "--product-categories", ACCOUNT_PRODUCTS).returncode == 0
    return gw.start()


def hold(gw: GatewayProcess, mail: bytes | None = None, to: str = HELD) -> int:
    s = RawSmtp(gw.smtp_port)
    s.cmd("EHLO c")
    s.cmd("MAIL FROM:<news@example.com>")
    assert s.cmd(f"RCPT TO:<{to}>")[0] == 250
    s.cmd("DATA")
    assert s.cmd((mail or message(to=to, subject="Autumn offer")) + b".")[0] == 250
    s.cmd("QUIT")
    held = wait_until(lambda: json.loads(gw.cli("quarantine", "list", "--json").stdout),
                      what="a held copy")
    return int(held[-1]["id"])


def test_release_checks_again_then_sends_like_any_allowed_copy(gw, sink: Sink):
    entry = hold(gw)
    released = gw.cli("quarantine", "release", str(entry), "--reason", "relevant: CTO of a "
                      "security firm", "--operator", "alice")
    assert released.returncode == 0, released.stderr
    assert f"quarantine entry {entry} released to {HELD}" in released.stdout
    [copy] = sink.wait_for(1)
    assert copy.rcpt_tos == [HELD]
    assert b"List-Unsubscribe-Post: List-Unsubscribe=One-Click" in copy.content
    text = email.message_from_bytes(copy.content, policy=email.policy.default).get_content()
    assert "dans un cadre professionnel" in text  # the notice, in French: why_other
    with sqlite3.connect(gw.config.parent / "gateway.db") as db:
        row = db.execute("SELECT state, decided_by, decision_reason FROM quarantine").fetchone()
    assert row == ("released", "alice", "relevant: CTO of a security firm")
    again = gw.cli("quarantine", "release", str(entry))
    assert again.returncode == 1 and "already released" in again.stderr


def test_an_objection_since_is_never_released(gw, sink: Sink):
    entry = hold(gw)
    assert gw.cli("suppress", "add", HELD).returncode == 0
    refused = gw.cli("quarantine", "release", str(entry))
    assert refused.returncode == 1 and "R1" in refused.stderr
    time.sleep(0.5)
    assert sink.messages == []
    assert json.loads(gw.cli("quarantine", "list", "--json").stdout)[0]["id"] == entry


def test_reject_deletes_the_raw_message_and_purge_empties_the_quarantine(gw):
    first, second = hold(gw), hold(gw)
    rejected = gw.cli("quarantine", "reject", str(first), "--reason", "not relevant")
    assert rejected.returncode == 0, rejected.stderr
    with sqlite3.connect(gw.config.parent / "gateway.db") as db:
        contents = db.execute("SELECT q.id, m.content IS NULL FROM quarantine q JOIN messages m"
                              " ON m.id = q.message_id ORDER BY q.id").fetchall()
    assert contents == [(first, 1), (second, 0)]
    assert gw.cli("quarantine", "reject", "999").returncode == 1
    purged = gw.cli("quarantine", "purge", "--older-than", "0")
    assert purged.returncode == 0 and "1 quarantine entry purged" in purged.stdout
    assert f"quarantine entry {second} (" in purged.stdout  # what it rejected, by name
    assert json.loads(gw.cli("quarantine", "list", "--json").stdout) == []


def test_message_rule_holds_cannot_be_released(gw, sink: Sink):
    no_subject = (b"From: News <news@example.com>\r\nTo: <cto@b2b.example>\r\n"
                  b"Content-Type: text/plain\r\n\r\nHello\r\n")
    entry = hold(gw, no_subject, to="cto@b2b.example")
    refused = gw.cli("quarantine", "release", str(entry))
    assert refused.returncode == 1 and "M3" in refused.stderr and "reject it" in refused.stderr


def test_show_never_lets_terminal_escapes_through(gw):
    evil = (b"From: News <news@example.com>\r\nTo: <unclear@b2b.example>\r\n"
            b"Subject: \x1b]0;pwned\x07 \x1b[2J Offer\r\nContent-Type: text/html\r\n\r\n"
            b"<html><body><p>Hello \x1b[31mred\x1b[0m</p><script>x()</script></body></html>\r\n")
    entry = hold(gw, evil)
    shown = gw.cli("quarantine", "show", str(entry))
    assert shown.returncode == 0, shown.stderr
    assert "\x1b" not in shown.stdout and "\x07" not in shown.stdout
    assert "Offer" in shown.stdout and "Hello" in shown.stdout and "red" in shown.stdout
    assert "x()" not in shown.stdout  # scripts are not text
    assert "R9" in shown.stdout and "NESTOR" in shown.stdout  # the rule and its legal basis
    assert "b2b" in shown.stdout and "website form (direct)" in shown.stdout  # ledger facts


def test_bulk_decisions_ask_for_confirmation_and_filter(gw, sink: Sink):
    ids = [hold(gw) for _ in range(3)]
    listed = gw.cli("quarantine", "list")
    assert "3 held copies" in listed.stdout and "R9: 3" in listed.stdout
    usage = gw.cli("quarantine", "release", str(ids[0]), "--all")
    assert usage.returncode == 2
    assert gw.cli("quarantine", "release").returncode == 2
    # no terminal (a script, cron): the prompt went to stdout, then "Aborted!"; now a usage
    # error that says what --all would do and how to confirm
    declined = gw.cli("quarantine", "reject", "--all", "--rule", "R9", stdin="n\n")
    assert declined.returncode == 2 and declined.stdout == ""
    assert "would act on 3 held entries" in declined.stderr and "--yes" in declined.stderr
    assert len(json.loads(gw.cli("quarantine", "list", "--json").stdout)) == 3
    none_old = gw.cli("quarantine", "reject", "--all", "--older-than", "1", "--yes")
    assert none_old.returncode == 0
    assert len(json.loads(gw.cli("quarantine", "list", "--json").stdout)) == 3
    assert json.loads(gw.cli("quarantine", "list", "--since", "2999-01-01", "--json")
                      .stdout) == []
    for moment in ("2000-01-01 10:08Z", "2000-01-01T10:08Z"):  # as the tables print it
        assert len(json.loads(gw.cli("quarantine", "list", "--since", moment, "--json")
                              .stdout)) == 3, moment
    released = gw.cli("quarantine", "release", "--all", "--account", "crm", "--yes",
                      "--reason", "campaign reviewed")
    assert released.returncode == 0, released.stderr
    assert released.stdout.count("released to") == 3
    assert len(sink.wait_for(3)) == 3
    assert json.loads(gw.cli("quarantine", "list", "--json").stdout) == []


def test_serve_purges_held_copies_after_the_retention_period(gw):
    entry = hold(gw)
    gw.stop()
    with gw.config.open("a") as config:
        config.write("\n[quarantine]\nretention_days = 0\n")
    gw.start()  # housekeeping runs at start, then every minute
    wait_until(lambda: json.loads(gw.cli("quarantine", "list", "--json").stdout) == [],
               what="the purge")
    with sqlite3.connect(gw.config.parent / "gateway.db") as db:
        assert db.execute("SELECT state, decided_by FROM quarantine WHERE id = ?",
                          (entry,)).fetchone() == ("rejected", "purge")
    # logged once the purge's transaction has returned: a moment after the commit
    wait_until(lambda: "purged after 0 days" in gw.output, what="the purge's log line")


def test_serve_warns_about_requests_due_within_a_week(make_gateway):
    gw = make_gateway(start=False)
    received = (datetime.date.today() - datetime.timedelta(days=28)).isoformat()
    assert gw.cli("requests", "open", "jane@example.net", "--kind", "erasure",
                  "--received", received).returncode == 0
    assert gw.cli("requests", "open", "john@example.org", "--kind", "access").returncode == 0
    gw.start()  # the daily warning runs at start, then once a day
    wait_until(lambda: "data-subject request 1 (erasure" in gw.output, what="the warning")
    assert "data-subject request 2" not in gw.output  # due in a month: no warning yet


def test_a_release_decides_on_the_campaign_the_message_said_and_is_audited(make_gateway,
                                                                           sink: Sink,
                                                                           tmp_path):
    """The X-Gateway-* headers are stripped at DATA, but kept with the held copy: a release
    decides on the campaign as the message narrowed it, never the account's wider one, and
    the release is a decision of the audit log."""
    from conftest import CSV_HEADER

    pat = "pat@acme.example"
    empty = tmp_path / "empty.csv"
    empty.write_text(CSV_HEADER + "\n")
    gw = make_gateway(contacts=empty, start=False,
                      extra='[policy]\nunknown_recipient = "quarantine"\n')
    assert gw.cli("accounts", "update", "crm", "--topics", "saas;crm").returncode == 0
    gw.start()
    narrowed = message(subject="Our SaaS offer", to=pat,
                       extra_headers="X-Gateway-Campaign-Topics: saas\r\n")
    hold(gw, narrowed, to=pat)  # unknown: R2, held
    held = json.loads(gw.cli("quarantine", "list", "--json").stdout)
    assert [(h["rule"], h["steering_topics"]) for h in held] == [("R2", "saas")]
    ledger = tmp_path / "pat.csv"  # the operator adds Pat: a CRM person, not a SaaS one
    ledger.write_text(CSV_HEADER + "\n" + f"{pat},person,b2b,prospect,en,Pat,,CIO,crm,,,,,,"
                      "Trade fair,public_directory,public,2026-06-01,,2026-06-02,\n")
    assert gw.cli("contacts", "import", str(ledger)).returncode == 0
    refused = gw.cli("quarantine", "release", str(held[0]["id"]), "--operator", "op")
    assert refused.returncode == 1 and "R10" in refused.stderr  # saas is not Pat's topic
    hold(gw, message(subject="Our CRM offer", to="sam@acme.example",
                     extra_headers="X-Gateway-Campaign-Topics: crm\r\n"), to="sam@acme.example")
    sam = [h for h in json.loads(gw.cli("quarantine", "list", "--json").stdout)
           if h["recipient"] == "sam@acme.example"]
    ledger.write_text(CSV_HEADER + "\n" + "sam@acme.example,person,b2b,prospect,en,Sam,,CIO,"
                      "crm,,,,,,Trade fair,public_directory,public,2026-06-01,,2026-06-02,\n")
    assert gw.cli("contacts", "import", str(ledger)).returncode == 0
    released = gw.cli("quarantine", "release", str(sam[0]["id"]), "--operator", "op")
    assert released.returncode == 0 and "rule R8" in released.stdout, released.stderr
    sink.wait_for(1)
    with sqlite3.connect(gw.config.parent / "gateway.db") as db:
        audit = db.execute("SELECT client_ip, rule, decision FROM audit"
                           " WHERE decision = 'allow'").fetchall()
    assert audit == [("operator op", "R8", "allow")]
    assert gw.cli("audit", "verify").returncode == 0  # the release row is on the chain


def test_rejects_and_purges_are_audited_and_release_checks_m1_again(gw, sink: Sink):
    """An operator's reject left no audit row (a release did); a release after the account
    lost the domain sent mail From: a domain it may no longer use."""
    first, second, third = hold(gw), hold(gw), hold(gw)
    assert gw.cli("quarantine", "reject", str(first), "--operator", "bob").returncode == 0
    assert gw.cli("accounts", "update", "crm", "--from-domain", "other.example"
                  ).returncode == 0
    refused = gw.cli("quarantine", "release", str(second))
    assert refused.returncode == 1 and "M1" in refused.stderr, refused.stderr
    assert gw.cli("quarantine", "purge", "--older-than", "0", "--operator", "eve"
                  ).returncode == 0
    with sqlite3.connect(gw.config.parent / "gateway.db") as db:
        rows = db.execute("SELECT client_ip, rule, decision FROM audit"
                          " WHERE client_ip LIKE 'operator %' ORDER BY id").fetchall()
    # a person's bulk rejection is theirs, told apart from the automatic purge's "purge"
    assert rows == [("operator bob", "R9", "reject"), ("operator eve", "R9", "reject"),
                    ("operator eve", "R9", "reject")]
    assert "intact" in gw.cli("audit", "verify").stdout
    time.sleep(0.3)
    assert sink.messages == [] and third


def test_a_copy_held_for_an_unknown_address_leaves_the_store_after_the_period(make_gateway,
                                                                             tmp_path):
    """R2 quarantined, GDPR 5-1-e (KASPR: no unlimited retention): the purge rejected the
    copy of an address the ledger never held and kept its row, the address, the subject and
    the message's subject, for ever. `retention run` deletes the decided rows older than
    quarantine.retention_days, and says how many (the export shows them until then)."""
    gw = make_gateway(contacts=write_cases_csv(tmp_path / "cases.csv"),
                      extra='[policy]\nunknown_recipient = "quarantine"\n')
    stranger = "zed.zedson@unknown.example"
    entry = hold(gw, message(to=stranger, subject="Offer for Zed Zedson"), to=stranger)
    assert [q["rule"] for q in json.loads(gw.cli("subject", "export", stranger).stdout)[
        "quarantine"]] == ["R2"]
    gw.stop()  # its daily run is not this test's
    db_path = gw.config.parent / "gateway.db"
    with sqlite3.connect(db_path) as db:
        db.execute("UPDATE quarantine SET created_at = created_at - 40 * 86400")
        db.execute("UPDATE messages SET received_at = received_at - 40 * 86400")
    purged = gw.cli("quarantine", "purge", "--older-than", "30", "--yes")
    assert purged.returncode == 0 and f"quarantine entry {entry} (" in purged.stdout
    run = gw.cli("retention", "run", "--json")
    assert run.returncode == 0, run.stderr
    removed = json.loads(run.stdout)["removed"]
    assert (removed["outside_quarantine"], removed["messages"]) == (1, 1)
    with sqlite3.connect(db_path) as db:
        for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
            for row in db.execute(f"SELECT * FROM {table}"):  # noqa: S608 - the schema's
                text = " ".join(v.decode(errors="replace") if isinstance(v, bytes) else str(v)
                                for v in row)
                assert stranger not in text and "Zed Zedson" not in text, table
    said = gw.cli("retention", "run")
    assert "outside the ledger, past their period: 0 copies, 0 quarantine rows" in said.stdout
