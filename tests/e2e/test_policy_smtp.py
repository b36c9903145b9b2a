"""The rule book over SMTP: a real client, the gateway as a subprocess, a real upstream sink."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from conftest import GatewayProcess, Sink, message, wait_until
from ledger_cases import ACCOUNT_PRODUCTS, ACCOUNT_TOPICS, CASES, UNKNOWN, write_cases_csv
from rawsmtp import RawSmtp


@pytest.fixture
def gateway(make_gateway, tmp_path: Path):
    def build(extra: str = "", smtp_extra: str = "") -> GatewayProcess:
        gw = make_gateway(contacts=write_cases_csv(tmp_path / "cases.csv"), start=False,
                          extra=extra, smtp_extra=smtp_extra)
        updated = gw.cli("accounts", "update", "crm", "--topics", ACCOUNT_TOPICS,
                         "--product-categories", ACCOUNT_PRODUCTS)
        assert updated.returncode == 0, updated.stderr
        return gw.start()
    return build


def session(gw: GatewayProcess) -> RawSmtp:
    s = RawSmtp(gw.smtp_port)
    s.cmd("EHLO client.example")
    assert s.cmd("MAIL FROM:<news@example.com>")[0] == 250
    return s


def db_rows(gw: GatewayProcess, sql: str) -> list[tuple]:
    with sqlite3.connect(gw.config.parent / "gateway.db") as conn:
        return conn.execute(sql).fetchall()


def test_every_case_is_decided_at_rcpt_and_only_allowed_copies_leave(gateway, sink: Sink):
    gw = gateway()
    s = session(gw)
    for case in (*CASES, UNKNOWN):
        code, text = s.cmd(f"RCPT TO:<{case.email}>")
        if case.decision == "reject":
            assert code == 550, (case.name, text)
            assert text.startswith(f"5.7.1 {case.rule} "), (case.name, text)
            assert case.reason_part in text, (case.name, text)
        else:  # allowed, or accepted into the quarantine
            assert code == 250, (case.name, text)
    assert s.cmd("DATA")[0] == 354
    code, text = s.cmd(message(subject="Autumn offer", to="list@example.net") + b".")
    assert code == 250, text
    queue_id = text.split()[1]
    s.cmd("QUIT")
    allowed = sorted(c.email for c in CASES if c.decision == "allow")
    got = sink.wait_for(len(allowed))
    time.sleep(0.5)  # nothing else may arrive
    assert sorted(r for m in sink.messages for r in m.rcpt_tos) == allowed
    held = json.loads(gw.cli("quarantine", "list", "--json").stdout)
    assert [(h["recipient"], h["rule"], h["subject"], h["account"]) for h in held] == [
        ("unclear@b2b.example", "R9", "Autumn offer", "crm")]
    # one audit row per decision, tied to the message, naming nobody in clear
    audit = db_rows(gw, "SELECT rule, decision, message_id, account FROM audit"
                        " WHERE decision != 'sent'")
    assert sorted(r[0] for r in audit) == sorted(c.rule for c in (*CASES, UNKNOWN))
    assert {(r[2], r[3]) for r in audit} == {(queue_id, "crm")}
    # and one row per copy the upstream took (COMPLIANCE 4.5): its rule, its notice version
    sent = wait_until(lambda: len(rows := db_rows(
        gw, "SELECT rule, client_ip, message_id, account, notice_version FROM audit"
            " WHERE decision = 'sent'")) == len(allowed) and rows, what="the sent rows")
    assert sorted(r[0] for r in sent) == sorted(c.rule for c in CASES if c.decision == "allow")
    assert {r[1:] for r in sent} == {("delivery", queue_id, "crm", "fr-2026.11b")}  # the cases: fr
    assert len(got[0].content) > 0
    # R4 refused and marked the expired contact for purge (within MARK_LINGER_SECONDS)
    wait_until(lambda: json.loads(gw.cli("contacts", "show", "expired@b2b.example", "--json")
                                  .stdout)["facts"]["retention_expired_at"] is not None,
               timeout=10, what="the R4 purge mark")
    key = bytes.fromhex((gw.config.parent / "secrets" / "hash.key").read_text().strip())
    expected = {hmac.new(key, c.email.encode(), hashlib.sha256).digest()
                for c in (*CASES, UNKNOWN)}
    assert {r[0] for r in db_rows(gw, "SELECT recipient_hash FROM audit")} == expected
    assert {r[0] for r in db_rows(gw, "SELECT recipient_hash FROM audit"
                                      " WHERE decision = 'sent'")} == {
        hmac.new(key, email.encode(), hashlib.sha256).digest() for email in allowed}


@pytest.mark.parametrize("reads", ["inline", "process", None])
def test_lookups_inline_or_in_the_reader_process_decide_alike(gateway, monkeypatch, reads):
    """`store.ledger_reads`: the same replies whichever side reads the ledger, and the
    gateway says at stop which side did; by default (None) the reader process, so that the
    event loop never waits on the database."""
    if reads is not None:
        monkeypatch.setenv("GATEWAY_STORE_LEDGER_READS", reads)
    gw = gateway()
    s = session(gw)
    for case in (*CASES, UNKNOWN):
        code, text = s.cmd(f"RCPT TO:<{case.email}>")
        expected = (550, case.rule) if case.decision == "reject" else (250, None)
        assert (code, text.split()[1] if code == 550 else None) == expected, (case.name, text)
    s.cmd("QUIT")
    assert gw.terminate() == 0
    found = re.search(r"ledger lookups: (\d+) batches inline \((\d+) slow, (\d+) refused\), "
                      r"(\d+) by the reader", gw.output)
    assert found, gw.output[-2000:]
    inline, reader = int(found[1]), int(found[4])
    if reads == "inline":  # (a loaded machine may make two reads slow: some go to the reader)
        assert inline > 0
    else:
        assert (inline, reader > 0) == (0, True)


def test_an_objection_holds_for_the_very_next_rcpt(gateway):
    gw = gateway()
    s = session(gw)
    assert s.cmd("RCPT TO:<consented@b2c.example>")[0] == 250
    started = time.monotonic()
    assert gw.cli("suppress", "add", "consented@b2c.example").returncode == 0
    code, text = s.cmd("RCPT TO:<consented@b2c.example>")
    assert (code, text.split()[:2]) == (550, ["5.7.1", "R1"])
    assert time.monotonic() - started < 5  # a CLI start included; the lookup itself is live
    # the same session's other recipients are unaffected
    assert s.cmd("RCPT TO:<cto@b2b.example>")[0] == 250


def test_an_objection_holds_in_every_process_sharing_the_store(gateway):
    gw = gateway(smtp_extra="processes = 2")
    sessions = [session(gw) for _ in range(6)]  # the kernel spreads them over both processes
    assert all(s.cmd("RCPT TO:<customer@b2c.example>")[0] == 250 for s in sessions)
    assert gw.cli("suppress", "add", "customer@b2c.example").returncode == 0
    answers = [s.cmd("RCPT TO:<customer@b2c.example>") for s in sessions]
    assert all(code == 550 and text.split()[1] == "R1" for code, text in answers), answers


@pytest.mark.parametrize("body, rule", [
    (b"From: News <news@example.com>\r\nTo: <cto@b2b.example>\r\n"
     b"Content-Type: text/plain\r\n\r\nNo subject here.\r\n", "M3"),
    (b"From: News <news@example.com>\r\nSubject: Signed\r\nMIME-Version: 1.0\r\n"
     b'Content-Type: multipart/signed; protocol="application/pkcs7-signature";'
     b' micalg=sha-256; boundary="s"\r\n\r\n--s\r\nContent-Type: text/plain\r\n\r\nHello\r\n'
     b"--s\r\nContent-Type: application/pkcs7-signature\r\n\r\nMIIB\r\n--s--\r\n", "M2"),
    (b"From: News <news@example.com>\r\nSubject: Broken\r\nMIME-Version: 1.0\r\n"
     b"Content-Type: multipart/mixed\r\n\r\nno boundary at all\r\n", "M2"),
    # a codec that is no text encoding: bytes.decode refuses it (it was a 451, for ever)
    (b"From: News <news@example.com>\r\nSubject: Rot\r\nMIME-Version: 1.0\r\n"
     b"Content-Type: text/plain; charset=rot13\r\n\r\nHello\r\n", "M2"),
    # a parameter name no rewritten Content-Type can carry (the copy stayed queued for ever)
    ("From: News <news@example.com>\r\nSubject: Naive\r\nMIME-Version: 1.0\r\n"
     "Content-Type: text/plain; charset=us-ascii; na\u00efve=1\r\n\r\nHello\r\n"
     .encode(), "M2"),
    # a NUL byte: never in a message (RFC 5322 2.3; no BINARYMIME here); many receivers refuse
    (b"From: News <news@example.com>\r\nSubject: Nul\r\n\r\nHel\x00lo\r\n", "M2"),
    # two Subjects (RFC 5322 3.6: once): Gmail refuses the copy after our 250
    (b"From: News <news@example.com>\r\nSubject: A\r\nSubject: B\r\n\r\nHello\r\n", "M2"),
])
def test_message_rules_quarantine_the_copies(gateway, sink: Sink, body: bytes, rule: str):
    gw = gateway()
    s = session(gw)
    assert s.cmd("RCPT TO:<cto@b2b.example>")[0] == 250
    assert s.cmd("RCPT TO:<prospect@b2c.example>")[0] == 550
    assert s.cmd("DATA")[0] == 354
    assert s.cmd(body + b".")[0] == 250  # accepted: kept for a human, never lost
    held = wait_until(lambda: json.loads(gw.cli("quarantine", "list", "--json").stdout),
                      what="a quarantine entry")
    assert [(h["recipient"], h["rule"]) for h in held] == [("cto@b2b.example", rule)]
    time.sleep(0.3)
    assert sink.messages == []
    content = db_rows(gw, "SELECT m.content FROM messages m JOIN quarantine q"
                          " ON q.message_id = m.id")[0][0]
    assert content == body  # the raw message is kept as received


def test_steering_headers_and_bcc_are_stripped(gateway, sink: Sink):
    """The steering headers narrow the campaign; a Bcc field (the tool's list of hidden
    recipients) went into every personalised copy, naming other prospects to each (compliance
    audit): it goes, as Postfix's cleanup takes it out."""
    gw = gateway()
    s = session(gw)
    for rcpt in ("cto@b2b.example", "customer@b2c.example"):
        assert s.cmd(f"RCPT TO:<{rcpt}>")[0] == 250
    assert s.cmd("DATA")[0] == 354
    narrowed = message(extra_headers="X-Gateway-Campaign-Topics: security\r\n"
                                     "BCC: customer@b2c.example,\r\n secret@other.example\r\n"
                                     "X-Gateway-Product-Category: software\r\n")
    assert s.cmd(narrowed + b".")[0] == 250
    got = sink.wait_for(2)
    for received in got:
        assert b"X-Gateway-" not in received.content
        assert b"Subject: Hello" in received.content
        assert b"secret@other.example" not in received.content
        assert not re.search(rb"(?im)^bcc:", received.content)
    stored = db_rows(gw, "SELECT content FROM messages")
    assert stored and all(b"secret@other.example" not in row[0] for row in stored)


def test_narrowing_away_a_recipients_basis_refuses_it_with_a_dsn(gateway, sink: Sink):
    gw = gateway()
    s = session(gw)
    assert s.cmd("RCPT TO:<cto@b2b.example>")[0] == 250  # R8 on the account's topics
    assert s.cmd("RCPT TO:<consented@b2c.example>")[0] == 250  # R6, topics do not matter
    assert s.cmd("DATA")[0] == 354
    mail = message(extra_headers="X-Gateway-Campaign-Topics: crm\r\n")  # not security
    assert s.cmd(mail + b".")[0] == 250
    got = sink.wait_for(2)
    consented = [m for m in got if m.rcpt_tos == ["consented@b2c.example"]]
    dsn = [m for m in got if m.mail_from in ("", "<>")]
    assert len(consented) == 1 and len(dsn) == 1
    assert dsn[0].rcpt_tos == ["news@example.com"]
    assert b"cto@b2b.example" in dsn[0].content and b"R10" in dsn[0].content
    failed = json.loads(gw.cli("queue", "list", "--failed", "--json").stdout)
    assert [(f["recipient"], f["last_error"].split()[2]) for f in failed] == [
        ("cto@b2b.example", "R10")]
    retry = gw.cli("queue", "retry", str(failed[0]["id"]))  # never a way around the policy
    assert retry.returncode == 1 and "compliance policy" in retry.stderr
    # /metrics counts it as refused by the rule book (it was counted nowhere)
    metrics = httpx.get(f"http://127.0.0.1:{gw.http_port}/metrics").text
    assert "gateway_deliveries_refused_total 1" in metrics.splitlines()
    assert "gateway_deliveries_failed_total 0" in metrics.splitlines()


def test_unknown_recipients_can_be_quarantined_instead(gateway, sink: Sink):
    gw = gateway(extra='[policy]\nunknown_recipient = "quarantine"\n')
    s = session(gw)
    assert s.cmd(f"RCPT TO:<{UNKNOWN.email}>")[0] == 250
    assert s.cmd("DATA")[0] == 354
    assert s.cmd(message() + b".")[0] == 250
    held = wait_until(lambda: json.loads(gw.cli("quarantine", "list", "--json").stdout),
                      what="a quarantine entry")
    assert [(h["recipient"], h["rule"]) for h in held] == [(UNKNOWN.email, "R2")]
    # released as it is, it left with a notice saying "a professional context" and no
    # source to anyone: the person must be in the ledger first
    refused = gw.cli("quarantine", "release", str(held[0]["id"]))
    assert refused.returncode == 1 and "still not in the contact ledger" in refused.stderr


def test_refused_transactions_are_audited_too(gateway):
    gw = gateway()
    s = session(gw)
    assert s.cmd("RCPT TO:<bought@b2c.example>")[0] == 550
    assert s.cmd("RSET")[0] == 250
    assert s.cmd("MAIL FROM:<news@example.com>")[0] == 250
    assert s.cmd("RCPT TO:<scraped@b2b.example>")[0] == 550
    s.cmd("QUIT")
    wait_until(lambda: len(db_rows(gw, "SELECT 1 FROM audit")) >= 2, what="two audit rows")
    rows = db_rows(gw, "SELECT rule, decision, message_id FROM audit")
    assert sorted(rows) == [("R3", "reject", None), ("R3", "reject", None)]


def test_a_refusal_is_audited_once_the_store_takes_writes_again(gateway):
    """With the store refusing writes (a full disk; here another writer's lock past the busy
    timeout) the refusal's audit row was dropped: the 550 said, the decision not recorded."""
    gw = gateway()
    lock = sqlite3.connect(gw.config.parent / "gateway.db", isolation_level=None)
    try:
        lock.execute("BEGIN EXCLUSIVE")
        s = session(gw)
        assert s.cmd("RCPT TO:<bought@b2c.example>")[0] == 550
        s.cmd("QUIT")
        wait_until(lambda: "audit records not written, kept and retried" in gw.output,
                   timeout=30, what="the refused write")
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    rows = wait_until(lambda: db_rows(gw, "SELECT rule, decision FROM audit"), timeout=30,
                      what="the audit row")
    assert rows == [("R3", "reject")]
    assert gw.cli("audit", "verify").returncode == 0


def test_a_from_header_refusal_is_audited_as_m1(gateway):
    gw = gateway()
    s = session(gw)
    assert s.cmd("RCPT TO:<consented@b2c.example>")[0] == 250
    assert s.cmd("DATA")[0] == 354
    code, text = s.cmd(message(sender="ceo@elsewhere.example") + b".")
    assert (code, text.split()[1]) == (550, "M1")
    rows = wait_until(lambda: db_rows(gw, "SELECT rule, decision FROM audit"),
                      what="audit rows")
    assert rows == [("M1", "reject")]


def test_a_message_refused_at_data_says_why_and_is_logged(gateway):
    """An operator review: a message without From, or with two, was answered "From header
    domain not allowed for this account" (the domain was allowed), and no refusal at DATA
    left a line in the log (Postfix logs each as NOQUEUE: reject)."""
    gw = gateway()
    for head, reason in (
            (b"To: <consented@b2c.example>\r\n", "no From header field"),
            (b"From: <news@example.com>\r\nFrom: <news@example.com>\r\n",
             "From header field given 2 times (RFC 5322 3.6: once)"),
            (b"From: ceo@elsewhere.example\r\n",
             "From header domain not allowed for this account")):
        s = session(gw)
        assert s.cmd("RCPT TO:<consented@b2c.example>")[0] == 250
        assert s.cmd("DATA")[0] == 354
        code, text = s.cmd(head + b"Subject: Offer\r\n\r\nHello\r\n.")
        assert (code, text) == (550, f"5.7.1 M1 {reason}")
        s.cmd("QUIT")
        line = "refused from=<news@example.com> account=crm nrcpt=1 size="
        wait_until(lambda line=line, reason=reason: line in gw.output and reason in gw.output,
                   what="the refusal's log line")


def test_editing_one_audit_row_makes_audit_verify_name_it(gateway):
    gw = gateway()
    s = session(gw)
    for case in CASES[:4]:
        s.cmd(f"RCPT TO:<{case.email}>")
    s.cmd("RSET")
    s.cmd("QUIT")
    wait_until(lambda: len(db_rows(gw, "SELECT 1 FROM audit")) >= 4, what="audit rows")
    intact = gw.cli("audit", "verify")
    assert intact.returncode == 0 and "4 rows, hash chain verified" in intact.stdout
    anchor = intact.stdout.split("keep it outside the store): ")[1].strip()
    assert anchor.startswith("4:")
    held = gw.cli("audit", "verify", "--anchor", anchor)
    assert held.returncode == 0 and "anchor held" in held.stdout
    store = gw.config.parent / "gateway.db"
    with sqlite3.connect(store) as conn:
        # the triggers refuse edits; somebody with the file drops them first
        conn.execute("DROP TRIGGER audit_no_update")
        conn.execute("DROP TRIGGER audit_no_delete")
        conn.execute("DELETE FROM audit WHERE id = 4")  # the last decision, cut
    assert gw.cli("audit", "verify").returncode == 0  # the chain alone cannot tell...
    cut = gw.cli("audit", "verify", "--anchor", anchor, "--json")  # ...the anchor can
    assert cut.returncode == 1 and json.loads(cut.stdout)["anchor_holds"] is False
    anchor = json.loads(cut.stdout)["anchor"]  # 3:..., as if kept from before the edit below
    from gateway.store.audit import GENESIS, link
    with sqlite3.connect(store) as conn:  # an edit, the chain recomputed over it
        conn.execute("UPDATE audit SET decision = 'allow' WHERE id = 2")
        previous = GENESIS
        for row in conn.execute("SELECT id, at, account, client_ip, recipient_hash, rule,"
                                " decision, message_id, notice_version, recipient_commit"
                                " FROM audit ORDER BY id").fetchall():
            previous = link(previous, row[1:9], row[9])
            conn.execute("UPDATE audit SET chain = ? WHERE id = ?", (previous, row[0]))
    assert gw.cli("audit", "verify").returncode == 0
    recomputed = gw.cli("audit", "verify", "--anchor", anchor)
    assert recomputed.returncode == 1 and "does NOT hold" in recomputed.stderr
    with sqlite3.connect(store) as conn:  # an edit alone: the chain names the row
        conn.execute("UPDATE audit SET rule = 'R99' WHERE id = 3")
    broken = gw.cli("audit", "verify", "--json")
    assert broken.returncode == 1 and json.loads(broken.stdout) == {
        "rows": 2, "first_broken": 3, "broken_at_upgrade": False, "anchor": None,
        "anchor_holds": None, "anchor_predates_upgrade": False, "unlinked": 0}
    assert gw.cli("audit", "verify", "--anchor", "nonsense").returncode == 2


def test_one_mailbox_written_two_ways_is_one_contact_and_one_objection(make_gateway,
                                                                      tmp_path: Path):
    """A quoted local part that needs no quotes and an IDNA domain in either form name the
    same mailbox as SMTP's RCPT does: `check` and the RCPT agree, and a withdrawal or an
    objection written the other way holds."""
    ledger = tmp_path / "c.csv"
    ledger.write_text(
        "email,consent,consent_at,consent_method,source_name,source_type,collected_at\n"
        '"""john.doe""@b2c.example",granted,2026-01-02,web form,form,direct,2026-01-01\n'
        "jane@faß.de,granted,2026-01-02,web form,form,direct,2026-01-01\n")
    gw = make_gateway(contacts=ledger)
    check = json.loads(gw.cli("check", "--account", "crm", "--to", "john.doe@b2c.example",
                              "--json").stdout)
    assert (check["decision"], check["rule"]) == ("allow", "R6")
    s = session(gw)
    assert s.cmd('RCPT TO:<"john.doe"@b2c.example>')[0] == 250
    assert s.cmd("RCPT TO:<jane@xn--fa-hia.de>")[0] == 250  # faß.de's IDNA 2008 A-label
    s.cmd("QUIT")
    withdrawal = tmp_path / "w.csv"
    withdrawal.write_text('email,consent,consent_at\n"""john.doe""@b2c.example",withdrawn,'
                          "2026-02-01\n")
    assert gw.cli("contacts", "import", str(withdrawal)).returncode == 0
    assert gw.cli("suppress", "add", "jane@xn--fa-hia.de").returncode == 0
    s = session(gw)
    code, text = s.cmd("RCPT TO:<john.doe@b2c.example>")
    assert code == 550 and " R1 " in text, (code, text)
    assert s.cmd("RCPT TO:<jane@xn--fa-hia.de>")[1].startswith("5.7.1 R1 ")
    check = json.loads(gw.cli("check", "--account", "crm", "--to", "jane@faß.de",
                              "--json").stdout)
    assert (check["decision"], check["rule"]) == ("reject", "R1")


def test_a_recipient_given_twice_gets_one_copy(gateway, sink: Sink):
    gw = gateway()
    s = session(gw)
    assert s.cmd("RCPT TO:<cto@b2b.example>")[0] == 250
    assert s.cmd("RCPT TO:<cto@b2b.example>")[0] == 250  # the same recipient again
    assert s.cmd("DATA")[0] == 354
    assert s.cmd(message(to="cto@b2b.example") + b".")[0] == 250
    sink.wait_for(1)
    time.sleep(0.5)
    assert len(sink.messages) == 1
    # each RCPT was a decision, audited; one copy all the same
    assert len(db_rows(gw, "SELECT id FROM audit WHERE decision = 'allow'")) == 2


def test_an_envelope_sender_refused_at_rcpt_is_audited_and_reported(gateway):
    """M1 said at RCPT (the envelope sender not the account's) was recorded nowhere: not in
    the audit log, not in `report` (compliance audit). Every decision is (GDPR 5-2)."""
    gw = gateway()
    s = RawSmtp(gw.smtp_port)
    s.cmd("EHLO client.example")
    assert s.cmd("MAIL FROM:<news@evil.example>")[0] == 250
    assert s.cmd("RCPT TO:<cto@b2b.example>")[0] == 550
    assert s.cmd("RCPT TO:<customer@b2c.example>")[0] == 550
    assert s.cmd("RSET")[0] == 250
    s.cmd("QUIT")
    rows = wait_until(lambda: db_rows(gw, "SELECT rule, decision FROM audit"), timeout=5,
                      what="the audit rows")
    assert rows == [("M1", "reject"), ("M1", "reject")], rows
    report = gw.cli("report")
    assert "M1" in report.stdout, report.stdout
