"""What every allowed copy carries when it leaves: its own one-click unsubscribe fields with
an HMAC token, the tool's own list fields removed, and a DKIM signature made last."""

from __future__ import annotations

import email
import email.policy
import json
import re
import sqlite3
import time
from pathlib import Path

import dkim

from gateway.security.tokens import load_token_keys

import dkim_reference
from conftest import CSV_HEADER, Sink, message, wait_until
from mailflow import add_dkim_key
from rawsmtp import RawSmtp


def send(gw, to: str, mail: bytes) -> str:
    s = RawSmtp(gw.smtp_port)
    s.cmd("EHLO c")
    assert s.cmd("MAIL FROM:<news@example.com>")[0] == 250
    assert s.cmd(f"RCPT TO:<{to}>")[0] == 250
    assert s.cmd("DATA")[0] == 354
    code, text = s.cmd(mail + b".")
    assert code == 250, text
    s.cmd("QUIT")
    return text.split()[1]


def field(content: bytes, name: bytes) -> list[bytes]:
    head = content.split(b"\r\n\r\n", 1)[0]
    return [line.split(b":", 1)[1].strip() for line in re.sub(rb"\r\n[ \t]+", b" ", head)
            .split(b"\r\n") if line.lower().startswith(name.lower() + b":")]


def test_each_copy_gets_its_own_verifiable_one_click_fields(make_gateway, sink: Sink):
    gw = make_gateway()
    tool_fields = ("List-Unsubscribe: <https://tool.example/unsub?u=jane>\r\n"
                   "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n")
    send(gw, "jane@example.net", message(extra_headers=tool_fields))
    send(gw, "john@example.org", message(to="john@example.org"))
    got = {m.rcpt_tos[0]: m.content for m in sink.wait_for(2)}
    keys = load_token_keys(gw.config.parent / "secrets" / "token.key")
    with sqlite3.connect(gw.config.parent / "gateway.db") as db:
        ids = dict(db.execute("SELECT recipient, id FROM deliveries").fetchall())
        account_id = db.execute("SELECT id FROM accounts WHERE name = 'crm'").fetchone()[0]
        contacts = dict(db.execute("SELECT address, id FROM contacts").fetchall())
    tokens = set()
    for rcpt, content in got.items():
        [unsubscribe] = field(content, b"List-Unsubscribe")  # the tool's own one is gone
        assert field(content, b"List-Unsubscribe-Post") == [b"List-Unsubscribe=One-Click"]
        match = re.fullmatch(rb"<http://127\.0\.0\.1:\d+/u/([a-z2-7]{39})>, "
                             rb"<mailto:unsubscribe\+([a-z2-7]{39})@gateway\.test>", unsubscribe)
        assert match and match[1] == match[2], unsubscribe
        token = keys.verify(match[1].decode())
        assert token is not None
        assert (token.contact_id, token.account_id, token.delivery_id) == (
            contacts[rcpt], account_id, ids[rcpt])
        assert rcpt.encode() not in match[1]
        tokens.add(match[1])
    assert len(tokens) == 2  # per recipient


def test_each_copy_carries_the_gateways_trace_field_on_top(make_gateway, sink: Sink):
    """RFC 5321 4.4: a relay MUST put its Received field on what it passes on (hops count
    them against loops; an operator follows a copy by its queue id). None was added."""
    gw = make_gateway()
    queue_id = send(gw, "jane@example.net", message())
    [copy] = sink.wait_for(1)
    first = copy.content.split(b"\r\n", 1)[0]
    # "c": the client's EHLO name (the tests' sessions say EHLO c)
    assert re.fullmatch(rb"Received: from c \(\[127\.0\.0\.1\]\) by "
                        rb"gateway\.test with ESMTP id " + queue_id.encode()
                        + rb" for <jane@example\.net>; \w{3}, \d{2} \w{3} \d{4} "
                        rb"\d{2}:\d{2}:\d{2} [-+]\d{4}", first), first
    assert len(field(copy.content, b"Received")) == 1


def test_copies_are_signed_last_and_verify(make_gateway, sink: Sink, tmp_path: Path):
    gw = make_gateway(start=False)
    public = add_dkim_key(gw, tmp_path, "gw1")
    gw.start()
    # what the tool (or a hop before it) signed and judged: broken by the notice, each went
    # out beside our signature (a failing DKIM-Signature, arc=fail), and a client's
    # Authentication-Results under our name
    earlier = ("DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=tool; h=from;\r\n"
               "\tbh=AAAA; b=BBBB\r\n"
               "ARC-Seal: i=1; a=rsa-sha256; cv=none; d=example.com; s=a; b=CCCC\r\n"
               "ARC-Message-Signature: i=1; a=rsa-sha256; d=example.com; s=a; bh=D; b=E\r\n"
               "ARC-Authentication-Results: i=1; gateway.test; dkim=pass\r\n"
               "Authentication-Results: gateway.test; dkim=pass header.d=bank.example\r\n")
    send(gw, "jane@example.net", message(extra_headers=earlier))
    [received] = sink.wait_for(1)
    record = f"v=DKIM1; k=rsa; p={public}".encode()
    assert dkim.verify(received.content, dnsfunc=lambda name, timeout=5: record)
    assert dkim_reference.verify(received.content, {b"gw1": public.encode()}) == [True]
    [signature] = field(received.content, b"DKIM-Signature")  # ours alone
    assert b"list-unsubscribe-post" in signature and b" l=" not in signature
    head = received.content.split(b"\r\n\r\n", 1)[0].lower()
    assert b"\narc-" not in head and b"authentication-results" not in head
    assert b"s=tool" not in head


def test_a_copy_whose_domain_cannot_be_signed_is_deferred_not_sent(make_gateway, sink: Sink,
                                                                    tmp_path: Path):
    gw = make_gateway(start=False, accounts={"crm": "example.com"})
    assert gw.cli("dkim", "keygen", "--domain", "other.example", "--selector", "s",
                  "--out", str(tmp_path / "k")).returncode == 0
    with gw.config.open("a") as config:  # a key for another domain only
        config.write(f'\n[[dkim]]\ndomain = "other.example"\nselector = "s"\n'
                     f'key_file = "{tmp_path / "k"}"\n')
    gw.start()
    send(gw, "jane@example.net", message())
    entries = wait_until(lambda: [e for e in json.loads(gw.cli("queue", "list", "--json")
                                                        .stdout) if e["state"] == "deferred"],
                         what="a deferred copy")
    assert "no DKIM key for example.com" in entries[0]["last_error"]
    assert sink.messages == []
    # said at start, and by `accounts update` (it was silent: copies deferred for days)
    assert "account crm may send from example.com, which no [[dkim]] key signs" in gw.output
    updated = gw.cli("accounts", "update", "crm", "--from-domain", "example.com",
                     "--from-domain", "other.example")
    assert updated.returncode == 0
    assert "no [[dkim]] key signs example.com:" in updated.stderr


def test_an_objection_while_the_copy_waits_in_the_queue_holds(make_gateway, sink: Sink):
    gw = make_gateway()
    sink.stop()  # upstream down: the copy is accepted and waits
    send(gw, "jane@example.net", message())
    wait_until(lambda: any(e["state"] == "deferred" for e in json.loads(
        gw.cli("queue", "list", "--json").stdout)), what="a deferred copy")
    assert gw.cli("suppress", "add", "jane@example.net").returncode == 0
    sink.start()
    assert gw.cli("queue", "flush").returncode == 0
    failed = wait_until(lambda: json.loads(gw.cli("queue", "list", "--failed", "--json").stdout),
                        what="the copy to fail")
    assert failed[0]["last_error"].startswith("550 5.7.1 R1 ")
    dsn = sink.wait_for(1)[0]  # the tool learns of it through the DSN
    assert dsn.rcpt_tos == ["news@example.com"] and b"R1" in dsn.content
    assert all(m.rcpt_tos != ["jane@example.net"] for m in sink.messages)
    # and the audit says so: it held "R6 allow" alone for a copy refused R1
    with sqlite3.connect(gw.config.parent / "gateway.db") as db:
        decisions = db.execute("SELECT rule, decision, client_ip FROM audit ORDER BY id"
                               ).fetchall()
    assert decisions[-1] == ("R1", "reject", "delivery"), decisions
    assert gw.cli("audit", "verify").returncode == 0  # chained like the others


def test_the_notice_is_in_the_recipients_language_and_names_the_source(make_gateway,
                                                                       sink: Sink,
                                                                       tmp_path: Path):
    ledger = tmp_path / "ledger.csv"
    ledger.write_text(
        CSV_HEADER + "\n"
        # collected from a trade-show directory, never told: first message = full notice
        "paul@acme.example,person,b2b,prospect,fr,Paul,,DSI,crm,,,,,,Annuaire du Salon Cyber,"
        "public_directory,public,2026-06-01,,,\n"
        "anna@firma.example,person,b2c,prospect,de,Anna,,,,,granted,2026-02-03T10:00:00Z,"
        "web form,v2,Newsletter,direct,,2026-02-03,,,\n")
    gw = make_gateway(contacts=ledger, start=False)
    assert gw.cli("accounts", "update", "crm", "--topics", "crm").returncode == 0
    gw.start()
    send(gw, "paul@acme.example", message(to="paul@acme.example"))
    send(gw, "anna@firma.example", message(to="anna@firma.example"))
    got = {m.rcpt_tos[0]: m.content for m in sink.wait_for(2)}

    def body(raw: bytes) -> str:
        return email.message_from_bytes(raw, policy=email.policy.default).get_content()

    paul = body(got["paul@acme.example"])
    assert "Vous le recevez car il concerne votre activité professionnelle" in paul  # R8
    assert "Annuaire du Salon Cyber" in paul  # the source, not collected from him
    assert "article 14 du RGPD" in paul  # the full information on this first message
    # with the legal basis R8 used, not "legitimate interest or consent"
    assert "Base légale : notre intérêt légitime" in paul and "consentement" not in paul
    anna = body(got["anna@firma.example"])
    assert "am 2026-02-03 zugestimmt" in anna and "Art. 14" not in anna  # R6, direct source
    shown = wait_until(lambda: (lambda s: s if s["facts"]["informed_at"] else None)(json.loads(
        gw.cli("contacts", "show", "paul@acme.example", "--json").stdout)),
        what="informed_at recorded")
    assert shown["facts"]["informed_version"] == "fr-2026.11b"
    assert any(e["kind"] == "information" and e["channel"] == "notice" for e in shown["events"])
    # the second message to him carries the short notice only
    send(gw, "paul@acme.example", message(to="paul@acme.example", subject="Again"))
    again = [m for m in sink.wait_for(3) if b"Subject: Again" in m.content][0]
    assert "article 14 du RGPD" not in body(again.content)


def test_a_service_message_never_carries_the_prospecting_information(make_gateway,
                                                                     sink: Sink,
                                                                     tmp_path: Path):
    """T1: a transactional account's message got the full prospecting notice (purpose,
    legal basis) and marked the person informed, so the real one never came."""
    ledger = tmp_path / "ledger.csv"
    ledger.write_text(
        CSV_HEADER + "\n"
        "paul@acme.example,person,b2b,prospect,fr,Paul,,DSI,crm,,,,,,Annuaire du Salon Cyber,"
        "public_directory,public,2026-06-01,,,\n")
    gw = make_gateway(contacts=ledger, start=False)
    assert gw.cli("accounts", "update", "crm", "--category", "transactional").returncode == 0
    gw.start()
    send(gw, "paul@acme.example", message(to="paul@acme.example"))
    [copy] = sink.wait_for(1)
    text = email.message_from_bytes(copy.content, policy=email.policy.default).get_content()
    assert "message de service" in text
    assert "article 14 du RGPD" not in text and "prospection" not in text
    time.sleep(0.5)  # a sent mark and its informed_at would be written by now
    shown = json.loads(gw.cli("contacts", "show", "paul@acme.example", "--json").stdout)
    assert shown["facts"]["informed_at"] is None


def hostile_messages() -> dict[str, bytes]:
    head = b"From: News <news@example.com>\r\nSubject: hostile\r\nMIME-Version: 1.0\r\n"
    deep = head + b"".join(b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n"
                           % (i, i) for i in range(1000)) + b"\r\nx\r\n"
    wide = (head + b"Content-Type: multipart/mixed; boundary=w\r\n\r\n"
            + b"--w\r\nContent-Type: text/plain\r\n\r\nx\r\n" * 50_000 + b"--w--\r\n")
    # a 1 MB header made of folded lines (each line under the 998-octet limit)
    folded = b"".join(b" " + b"a" * 900 + b"\r\n" for _ in range(1200))
    big_header = head + b"X-Big: start\r\n" + folded + b"Content-Type: text/plain\r\n\r\nhi\r\n"
    # a boundary beyond ASCII (RFC 2046 5.1.1 allows none): answered 451 for ever, the
    # client retrying, as the scan could not encode it (durability review)
    eight_bit = (head + b'Content-Type: multipart/mixed; boundary="\xe9\xff"\r\n\r\n'
                 b"--\xe9\xff\r\nContent-Type: text/plain\r\n\r\nx\r\n--\xe9\xff--\r\n")
    # a document of frames: the notice put after it was dropped by every reader (compliance
    # audit, Chromium)
    frames = (head + b"Content-Type: text/html\r\n\r\n<html><head></head><frameset>"
              b'<frame src="about:blank"></frameset></html>\r\n')
    return {"nesting 1,000 deep": deep, "50,000 parts": wide, "a 1 MB header": big_header,
            "a boundary beyond ASCII": eight_bit, "a frameset": frames}


def test_hostile_structure_is_quarantined_or_refused_within_bounded_time(make_gateway,
                                                                         sink: Sink):
    gw = make_gateway()
    for name, mail in hostile_messages().items():
        s = RawSmtp(gw.smtp_port)
        s.cmd("EHLO c")
        assert s.cmd("MAIL FROM:<news@example.com>")[0] == 250
        assert s.cmd("RCPT TO:<jane@example.net>")[0] == 250
        assert s.cmd("DATA")[0] == 354
        started = time.monotonic()
        code, text = s.cmd(mail + b".")
        elapsed = time.monotonic() - started
        assert elapsed < 5, (name, elapsed)
        assert code == 250 or 500 <= code < 600, (name, code, text)
        s.cmd("QUIT")
    held = json.loads(gw.cli("quarantine", "list", "--json").stdout)
    assert {h["rule"] for h in held} <= {"M2"} and len(held) >= 4, held
    assert any("ASCII" in h["reason"] for h in held), held
    assert any("frameset" in h["reason"] for h in held), held
    time.sleep(0.5)
    assert sink.messages == []  # none of them went upstream


CORPUS = Path(__file__).resolve().parents[1] / "data" / "corpus"
# real-world messages whose From domain is example.com: sent through SMTP as they are
CORPUS_OVER_SMTP = ("01-evolution-utf8-8bit-alternative.eml",
                    "03-outlook2000-iso-8859-1-qp-png-attachments.eml",
                    "07-thunderbird-related-cid-inline-images.eml",
                    "08-applemail-forwarded-message-rfc822.eml")


def test_real_world_messages_arrive_with_the_notice_and_a_signature_that_verifies(
        make_gateway, sink: Sink, tmp_path: Path):
    gw = make_gateway(start=False)
    public = add_dkim_key(gw, tmp_path, "c1")
    gw.start()
    for name in CORPUS_OVER_SMTP:
        data = (CORPUS / name).read_bytes()
        body = data.replace(b"\r\n.", b"\r\n..")  # dot-stuffing, as any client does
        send(gw, "jane@example.net", body if body.endswith(b"\r\n") else body + b"\r\n")
    received = sink.wait_for(len(CORPUS_OVER_SMTP))
    record = f"v=DKIM1; k=rsa; p={public}".encode()
    for copy in received:
        assert dkim.verify(copy.content, dnsfunc=lambda n, timeout=5: record)
        assert dkim_reference.verify(copy.content, {b"c1": public.encode()})[0]
        parsed = email.message_from_bytes(copy.content, policy=email.policy.default)
        texts = [p.get_content() for p in parsed.walk() if p.get_content_type() in (
            "text/plain", "text/html") and p.get_content_disposition() != "attachment"]
        assert any("Unsubscribe in one click" in text for text in texts)


def test_the_notice_never_states_a_shorter_retention_than_r4_keeps(make_gateway, sink: Sink):
    """547 days is "at most 2 years" (rounded up), not 1."""
    gw = make_gateway(extra="[policy]\nprospect_retention_days = 547\n")
    send(gw, "jane@example.net", message())
    [copy] = sink.wait_for(1)
    text = email.message_from_bytes(copy.content, policy=email.policy.default)
    body = text.get_body(("plain",)).get_content()
    assert "at most 2 years" in " ".join(body.split()), body

    def recorded() -> list:  # COMPLIANCE 4.5: which notice version the copy carried
        with sqlite3.connect(gw.config.parent / "gateway.db") as db:
            return db.execute("SELECT notice_version FROM deliveries"
                              " WHERE state = 'sent'").fetchall()
    assert wait_until(recorded, what="the sent mark") == [("en-2026.11b",)]
    export = json.loads(gw.cli("subject", "export", "jane@example.net").stdout)
    assert [d["notice_version"] for d in export["decisions"]] == ["en-2026.11b"]


def _deferred(gw, sink: Sink) -> None:
    """A copy to jane@ accepted (R6) and deferred by the upstream."""
    sink.handler.refuse["jane@example.net"] = "451 4.3.0 try again later"
    send(gw, "jane@example.net", message())
    wait_until(lambda: any(e["state"] == "deferred" for e in json.loads(
        gw.cli("queue", "list", "--json").stdout)), what="a deferred copy")
    del sink.handler.refuse["jane@example.net"]


def _failed_at_delivery(gw, sink: Sink, rule: str) -> None:
    assert gw.cli("queue", "flush").returncode == 0
    failed = wait_until(lambda: json.loads(gw.cli("queue", "list", "--failed", "--json").stdout),
                        what="the copy to fail")
    assert failed[0]["last_error"].startswith(f"550 5.7.1 {rule} "), failed
    dsn = sink.wait_for(1)[0]
    assert dsn.rcpt_tos == ["news@example.com"] and rule.encode() in dsn.content
    time.sleep(0.3)
    assert all(m.rcpt_tos != ["jane@example.net"] for m in sink.messages)
    with sqlite3.connect(gw.config.parent / "gateway.db") as db:
        decisions = db.execute("SELECT rule, decision, client_ip FROM audit ORDER BY id"
                               ).fetchall()
    assert decisions[-1] == (rule, "reject", "delivery"), decisions


def test_a_copy_whose_retention_ran_out_in_the_queue_is_not_sent(make_gateway, sink: Sink):
    """Only R1 was checked again at delivery: a copy deferred past the end of the person's
    retention period went out (compliance audit). R4 holds at delivery too."""
    gw = make_gateway()
    _deferred(gw, sink)
    assert gw.terminate() == 0
    gw.config.write_text(gw.config.read_text().replace(
        "[policy]", "[policy]\nprospect_retention_days = 1", 1)
        if "[policy]" in gw.config.read_text()
        else gw.config.read_text() + "\n[policy]\nprospect_retention_days = 1\n")
    gw.start()
    _failed_at_delivery(gw, sink, "R4")


def test_a_copy_whose_contact_was_purged_in_the_queue_is_withdrawn(make_gateway, sink: Sink):
    """`retention run` purged the contact while its copy waited; the copy then went out
    without its source, in no language of the person's, and its row kept the address past
    the purge for good (compliance audit). The purge withdraws it, as an erasure does."""
    import os
    import subprocess
    import sys
    # no retry of its own before the purge: one sent or being sent meanwhile was no
    # waiting copy to withdraw (the test failed so, now and then)
    gw = make_gateway(retry_base=600.0)
    _deferred(gw, sink)
    env = {**os.environ, "GATEWAY_POLICY_PROSPECT_RETENTION_DAYS": "1"}
    purge = subprocess.run(
        [sys.executable, "-m", "gateway", "--config", str(gw.config), "retention", "run"],
        capture_output=True, text=True, timeout=60, env=env)
    assert purge.returncode == 0 and "purged" in purge.stdout, purge.stdout + purge.stderr
    assert "1 waiting copy withdrawn" in purge.stdout, purge.stdout
    with sqlite3.connect(gw.config.parent / "gateway.db") as db:
        assert db.execute("SELECT count(*) FROM deliveries").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM messages").fetchone() == (0,)
    assert gw.cli("queue", "flush").returncode == 0
    time.sleep(1)
    assert all(m.rcpt_tos != ["jane@example.net"] for m in sink.messages)


def test_a_copy_sent_on_a_retry_gets_its_sent_row_and_notice_version(make_gateway,
                                                                       sink: Sink):
    """The version and the audit row waited in a per-process table, by delivery id, from
    the copy's preparing to its sending: a copy deferred (or one of 1,024 others prepared
    meanwhile) lost its place and was recorded sent without either."""
    gw = make_gateway()
    sink.handler.refuse["jane@example.net"] = "451 4.3.0 try again later"
    send(gw, "jane@example.net", message())
    store = gw.config.parent / "gateway.db"

    def state() -> str | None:
        with sqlite3.connect(store) as db:
            row = db.execute("SELECT state FROM deliveries").fetchone()
        return row[0] if row else None
    wait_until(lambda: state() == "deferred", what="the deferred copy")
    del sink.handler.refuse["jane@example.net"]
    assert gw.cli("queue", "flush").returncode == 0
    sink.wait_for(1)
    wait_until(lambda: state() == "sent", what="the sent mark")
    with sqlite3.connect(store) as db:
        rows = db.execute("SELECT decision, rule, notice_version FROM audit"
                          " WHERE decision = 'sent'").fetchall()
        [(version,)] = db.execute("SELECT notice_version FROM deliveries").fetchall()
    assert rows == [("sent", "R6", "en-2026.11b")] and version == "en-2026.11b"


def test_the_audit_keeps_the_notice_version_after_the_copy_is_purged(make_gateway, sink: Sink):
    """COMPLIANCE 4.5: the version was only on the copy's row, which R4's purge deletes with
    the contact: the access export then said neither that the copy was sent nor which notice
    it carried. The sending has its own chained audit row."""
    import os
    import subprocess
    import sys
    gw = make_gateway()
    send(gw, "jane@example.net", message())
    sink.wait_for(1)
    store = gw.config.parent / "gateway.db"

    def sent_rows() -> list:
        with sqlite3.connect(store) as db:
            return db.execute("SELECT rule, decision, client_ip, notice_version FROM audit"
                              " WHERE decision = 'sent'").fetchall()
    assert wait_until(sent_rows, what="the sent row") == [
        ("R6", "sent", "delivery", "en-2026.11b")]
    purge = subprocess.run(
        [sys.executable, "-m", "gateway", "--config", str(gw.config), "retention", "run"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "GATEWAY_POLICY_PROSPECT_RETENTION_DAYS": "1"})
    assert purge.returncode == 0 and "purged" in purge.stdout, purge.stdout + purge.stderr
    with sqlite3.connect(store) as db:
        assert db.execute("SELECT count(*) FROM deliveries").fetchone() == (0,)
    export = json.loads(gw.cli("subject", "export", "jane@example.net").stdout)
    [decision] = export["decisions"]
    assert (decision["decision"], decision["rule"], decision["delivery"],
            decision["notice_version"]) == ("allow", "R6", "sent", "en-2026.11b")
    assert decision["delivery_at"] >= decision["at"]
    # what the purge kept (the clock's start, under the address's hash) is said too
    [purge] = export["retention_purges"]
    assert purge["purged_at"] > purge["clock_start"]
    letter = gw.cli("subject", "export", "jane@example.net", "--format", "text").stdout
    assert "at the end of their retention period" in " ".join(letter.split())
    verify = gw.cli("audit", "verify", "--json")
    assert verify.returncode == 0 and json.loads(verify.stdout)["rows"] == 2, verify.stdout
