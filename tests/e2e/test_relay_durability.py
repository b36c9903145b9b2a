"""Store-and-forward: a 250 is a promise. Real gateway process, real sockets, real sink."""

from __future__ import annotations

import json
import re
import smtplib
import sqlite3
import stat

import pytest
from click.testing import CliRunner

from gateway.cli import main

from conftest import Sink, free_port, message, wait_until, without_gateway_fields

BARE_LINE_END = re.compile(rb"\r(?!\n)|(?<!\r)\n")
QUEUED = re.compile(r"^2\.0\.0 ([0-9A-F]{16}) ")


def send(port: int, content: bytes, to: list[str] | None = None,
         sender: str = "news@example.com") -> str:
    """Send over SMTP, return the queue id from the 250 2.0.0 reply."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("client.test")
        client.mail(sender)
        for rcpt in to or ["jane@example.net"]:
            code, text = client.rcpt(rcpt)
            assert code == 250, text
        code, text = client.data(content)
    assert code == 250, text
    match = QUEUED.match(text.decode())
    assert match, text
    return match.group(1)


def test_accepted_message_reaches_upstream_with_the_same_body(make_gateway, sink: Sink):
    gw = make_gateway()
    # lines that only survive correct dot-stuffing on both hops
    content = message(subject="Durable", body="Hi,\r\n.\r\n..two dots\r\n.leading dot\r\n")
    send(gw.smtp_port, content, to=["jane@example.net", "john@example.org"])
    received = sink.wait_for(2)
    # each accepted recipient goes upstream as its own transaction
    assert sorted(r.rcpt_tos[0] for r in received) == ["jane@example.net", "john@example.org"]
    assert all(len(r.rcpt_tos) == 1 and r.mail_from == "news@example.com" for r in received)
    assert all(without_gateway_fields(r.content) == content for r in received)
    # nothing a lenient upstream could read as an end of data: no bare CR, no bare LF
    assert all(BARE_LINE_END.search(r.content) is None for r in received)


def test_upstream_down_at_accept_time_is_delivered_once_it_is_back(make_gateway, tmp_path):
    upstream = Sink(free_port())  # not started: connections are refused
    gw = make_gateway(sink_port=upstream.port)
    send(gw.smtp_port, message(subject="Deferred"))

    def deferred() -> list:
        entries = json.loads(gw.cli("queue", "list", "--json").stdout)
        return [e for e in entries if e["state"] == "deferred" and e["last_error"]]

    entries = wait_until(deferred, what="a deferred queue entry")
    assert entries[0]["recipient"] == "jane@example.net" and entries[0]["attempts"] >= 1
    upstream.start()
    try:
        assert gw.cli("queue", "flush").returncode == 0
        received = upstream.wait_for(1)
        assert b"Subject: Deferred" in received[0].content
        wait_until(lambda: json.loads(gw.cli("queue", "list", "--json").stdout) == [],
                   what="an empty queue")
    finally:
        upstream.stop()


def test_sigkill_right_after_250_loses_nothing(make_gateway, tmp_path):
    upstream = Sink(free_port())  # down: everything stays in the queue at the kill
    gw = make_gateway(sink_port=upstream.port)
    ids = [send(gw.smtp_port, message(subject=f"Kill {i}")) for i in range(5)]
    gw.kill()  # SIGKILL: no drain, no clean-up
    upstream.start()
    try:
        gw.start()
        received = upstream.wait_for(5, timeout=30)
        subjects = sorted(re.search(rb"Subject: (Kill \d)", r.content).group(1) for r in received)
        assert subjects == [f"Kill {i}".encode() for i in range(5)]
        assert len(set(ids)) == 5
    finally:
        upstream.stop()


def test_sigkill_while_delivering_still_delivers_every_message(make_gateway, sink: Sink):
    gw = make_gateway()
    for i in range(20):
        send(gw.smtp_port, message(subject=f"Race {i}"))
    gw.kill()
    gw.start()
    wait_until(lambda: len({re.search(rb"Subject: (Race \d+)", r.content).group(1)
                            for r in sink.messages}) == 20, timeout=30,
               what="all 20 messages at the sink")


def test_permanent_upstream_failure_ends_failed_with_a_dsn(make_gateway, sink: Sink):
    sink.handler.refuse["gone@example.net"] = "550 5.1.1 <gone@example.net>: user unknown"
    gw = make_gateway()
    send(gw.smtp_port, message(subject="Bounce me", to="gone@example.net"),
         to=["gone@example.net"])
    received = sink.wait_for(1)  # the DSN, to the envelope sender, from the null sender
    dsn = received[0]
    assert dsn.mail_from in ("", "<>")  # aiosmtpd spells the null sender "<>"
    assert dsn.rcpt_tos == ["news@example.com"]
    assert b"multipart/report" in dsn.content and b"report-type=delivery-status" in dsn.content
    assert b"Final-Recipient: rfc822; gone@example.net" in dsn.content
    assert b"Status: 5.1.1" in dsn.content
    assert b"Remote-MTA: dns; 127.0.0.1" in dsn.content  # the upstream that refused it
    failed = json.loads(gw.cli("queue", "list", "--failed", "--json").stdout)
    assert [e["recipient"] for e in failed] == ["gone@example.net"]
    assert failed[0]["state"] == "failed" and "550" in failed[0]["last_error"]
    # the log ties the DSN to the copy it reports (an operator review: "DSN queued" named
    # no id, and the DSN's own lines came later under an id nothing led to)
    dsn_id = re.search(r"to=<gone@example.net> failed, DSN ([0-9A-F]{16}) queued", gw.output)
    assert dsn_id is not None, gw.output
    assert f"msg {dsn_id.group(1)} to=<news@example.com> sent" in gw.output


def test_store_and_keys_are_owner_only(make_gateway, tmp_path):
    gw = make_gateway()
    send(gw.smtp_port, message())
    for path in (tmp_path / "gateway.db", tmp_path / "tls" / "key.pem"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_queue_retry_and_delete_steer_single_entries(make_gateway):
    upstream = Sink(free_port())
    gw = make_gateway(sink_port=upstream.port, retry_base=600.0)  # only `retry` brings it back
    send(gw.smtp_port, message(subject="Keep"), to=["a@example.net", "b@example.net"])
    entries = wait_until(lambda: [e for e in json.loads(gw.cli("queue", "list", "--json").stdout)
                                  if e["state"] == "deferred"] or None, what="deferred entries")
    listing = json.loads(gw.cli("queue", "list", "--json").stdout)
    by_rcpt = {e["recipient"]: e["id"] for e in listing}
    assert len(entries) >= 1
    limited = gw.cli("queue", "list", "--json", "--limit", "1")  # silently 1,000 before
    assert len(json.loads(limited.stdout)) == 1 and "(--limit)" in limited.stderr
    # the table stops at its page; --json without --limit is every entry, as `quarantine
    # list --json` (a script counting the backlog got 1,000 of them, the cut on stderr only)
    runner = CliRunner()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("gateway.cli.queue.TABLE_ROWS", 1)
        table = runner.invoke(main, ["--config", str(gw.config), "queue", "list"])
        whole = runner.invoke(main, ["--config", str(gw.config), "queue", "list", "--json"])
    assert table.exit_code == 0 and "only 1 queue entries" in table.stderr, table.output
    assert whole.exit_code == 0 and "(--limit)" not in whole.stderr
    assert len(json.loads(whole.stdout)) == len(listing) == 2
    deleted = gw.cli("queue", "delete", str(by_rcpt["b@example.net"]), "--operator", "ops")
    assert deleted.returncode == 0 and "ops" in deleted.stdout
    assert gw.cli("queue", "delete", "999999").returncode == 1
    assert gw.cli("queue", "delete", "00000000DEADBEEF").returncode == 1  # no such queue id
    assert gw.cli("queue", "delete", "not-an-id").returncode == 2
    # recorded (INTERFACE: nothing leaves the queue unrecorded): the person's access
    # export says who withdrew it, the chain still verifies
    export = json.loads(gw.cli("subject", "export", "b@example.net", "--format", "json").stdout)
    assert [(d["decision"], d["rule"]) for d in export["decisions"]][-1] == ("reject", "OP")
    letter = gw.cli("subject", "export", "b@example.net", "--format", "text").stdout
    assert "an operator withdrew the message" in " ".join(letter.split())
    assert gw.cli("audit", "verify").returncode == 0
    upstream.start()
    try:
        # by the queue id the 250 named (hex): every copy of the message not sent yet
        queue_id = listing[0]["message_id"]
        retried = gw.cli("queue", "retry", queue_id.lower())
        assert retried.returncode == 0, retried.stderr
        assert retried.stdout == f"queue entry {by_rcpt['a@example.net']} will be retried now\n"
        received = upstream.wait_for(1)
        assert received[0].rcpt_tos == ["a@example.net"]
        wait_until(lambda: not json.loads(gw.cli("queue", "list", "--json").stdout),
                   what="empty queue")
        assert all(r.rcpt_tos != ["b@example.net"] for r in upstream.messages)
    finally:
        upstream.stop()


def test_a_copy_too_old_to_retry_ends_failed_with_a_delay_dsn(make_gateway, sink: Sink):
    sink.handler.refuse["slow@example.net"] = "451 4.2.0 mailbox busy, try later"
    gw = make_gateway(delivery_extra="max_age_hours = 0.0005")  # 1.8 s
    send(gw.smtp_port, message(subject="Too old", to="slow@example.net"),
         to=["slow@example.net"])
    (dsn,) = sink.wait_for(1, timeout=30)  # the DSN to the sender, after retries
    assert dsn.rcpt_tos == ["news@example.com"] and b"Status: 4.4.7" in dsn.content
    assert b"451 4.2.0" in dsn.content  # the last upstream answer is reported
    assert b"Remote-MTA: dns; 127.0.0.1" in dsn.content  # and who gave it (it was left out)
    failed = json.loads(gw.cli("queue", "list", "--failed", "--json").stdout)
    assert [e["recipient"] for e in failed] == ["slow@example.net"]
    assert failed[0]["attempts"] >= 2 and "gave up after" in failed[0]["last_error"]


def test_upstream_starttls_required_but_not_offered_sends_nothing_in_clear(make_gateway,
                                                                          sink: Sink):
    gw = make_gateway(delivery_extra='starttls = true\nusername = "relay"\npassword = "secret"')
    send(gw.smtp_port, message(subject="Never in clear"))

    def deferred() -> list:
        entries = json.loads(gw.cli("queue", "list", "--json").stdout)
        return [e for e in entries if e["state"] == "deferred"]

    (entry,) = wait_until(deferred, what="a deferred entry")
    assert "STARTTLS" in entry["last_error"] or "starttls" in entry["last_error"].lower()
    assert sink.messages == []  # the plain-text sink never got the mail (nor credentials)


def _upstream_tls(folder):
    """A certificate for 127.0.0.1 (an IP SAN, which the gateway's verification needs) and a
    server context with it; returns (context, the certificate file as CA)."""
    import datetime
    import ipaddress
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    (folder / "up.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "up.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(folder / "up.pem", folder / "up.key")
    return context, folder / "up.pem"


def test_the_upstream_refusing_our_credentials_defers_instead_of_failing(make_gateway,
                                                                        tmp_path):
    """A rotated delivery.password (535 at AUTH, before any MAIL) is the gateway's problem,
    not the message's: copies wait for the fix (Postfix: smtp_sasl_auth_soft_bounce)."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult

    from conftest import SinkHandler

    context, ca = _upstream_tls(tmp_path)
    port = free_port()
    upstream = Controller(SinkHandler(), hostname="127.0.0.1", port=port, tls_context=context,
                          require_starttls=True,
                          authenticator=lambda *a: AuthResult(success=False, handled=False))
    upstream.start()
    try:
        gw = make_gateway(sink_port=port, delivery_extra=(
            f'starttls = true\nusername = "relay"\npassword = "rotated"\ntls_ca_file = "{ca}"'))
        send(gw.smtp_port, message(subject="Auth"))

        def deferred() -> list:
            entries = json.loads(gw.cli("queue", "list", "--json").stdout)
            return [e for e in entries if e["state"] == "deferred"]
        (entry,) = wait_until(deferred, what="a deferred entry")
        assert "535" in entry["last_error"] and "upstream connection" in entry["last_error"]
        states = {e["state"] for e in json.loads(gw.cli("queue", "list", "--json").stdout)}
        assert states == {"deferred"}  # no failure, so no DSN either
    finally:
        upstream.stop()


def test_a_client_gone_during_the_commit_neither_doubles_the_audit_nor_delays_the_copy(
        make_gateway, sink: Sink):
    """The client closes right after the final dot, while its message commits: the message
    is kept (committed), its copy goes out at once (not when its claim expires, 10 minutes
    later), and its recipients' decisions are audited once, not again as "abandoned"."""
    import socket
    import sqlite3
    import time

    from rawsmtp import RawSmtp

    gw = make_gateway()
    for n in range(5):
        s = RawSmtp(gw.smtp_port)
        s.cmd("EHLO c")
        s.cmd("MAIL FROM:<news@example.com>")
        assert s.cmd("RCPT TO:<jane@example.net>")[0] == 250
        assert s.cmd("DATA")[0] == 354
        s.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.send(message(subject=f"Gone {n}") + b".\r\n")
        s.sock.close()  # a reset, at once: the server is committing
    def counts() -> tuple[int, int]:
        with sqlite3.connect(gw.config.parent / "gateway.db") as db:
            return (db.execute("SELECT count(*) FROM messages WHERE account = 'crm'"
                               ).fetchone()[0],
                    db.execute("SELECT count(*) FROM audit WHERE decision != 'sent'"
                               ).fetchone()[0])
    # each commit (or, for a session gone first, the abandoned decisions) lands in its time
    wait_until(lambda: counts()[1] >= 5, what="a decision per RCPT")
    time.sleep(0.5)  # time for a second record of any of them, if there were one
    messages, audit = counts()
    assert audit == 5, audit  # one decision per RCPT, whatever became of the session
    wait_until(lambda: len(sink.messages) >= messages, timeout=5,
               what="every committed message delivered now")


def test_an_address_beyond_ascii_goes_upstream_with_smtputf8_or_fails_at_once(make_gateway,
                                                                              sink: Sink,
                                                                              tmp_path):
    """The gateway takes josé@ (it offers SMTPUTF8), so it must hand it on with SMTPUTF8;
    an upstream without it is a permanent 5.6.7 with a DSN, not days of retries."""
    from aiosmtpd.controller import Controller

    from conftest import CSV_HEADER, SinkHandler
    from rawsmtp import RawSmtp

    def send_utf8(gw) -> None:
        s = RawSmtp(gw.smtp_port)
        s.cmd("EHLO c")
        assert s.cmd("MAIL FROM:<news@example.com> SMTPUTF8")[0] == 250
        assert s.cmd("RCPT TO:<josé@example.fr>")[0] == 250
        assert s.cmd("DATA")[0] == 354
        assert s.cmd(message(to="josé@example.fr", subject="Bonjour") + b".")[0] == 250
        s.cmd("QUIT")

    ledger = tmp_path / "l.csv"
    ledger.write_text(CSV_HEADER + "\njosé@example.fr,person,b2c,prospect,fr,,,,,,granted,"
                      "2026-01-05,web form,v1,signup form,direct,,2026-01-05,,,\n")
    gw = make_gateway(contacts=ledger)
    send_utf8(gw)
    assert [m.rcpt_tos for m in sink.wait_for(1)] == [["josé@example.fr"]]
    gw.stop()

    handler, port = SinkHandler(), free_port()
    plain = Controller(handler, hostname="127.0.0.1", port=port, enable_SMTPUTF8=False)
    plain.start()
    try:
        gw = make_gateway(contacts=ledger, sink_port=port, accounts={})  # same store
        send_utf8(gw)

        def failed() -> list:
            return [e for e in json.loads(gw.cli("queue", "list", "--json", "--failed").stdout)
                    if e["recipient"] == "josé@example.fr"]
        (entry,) = wait_until(failed, what="a failed entry")
        assert entry["last_error"].startswith("554 5.6.7")
        dsn = wait_until(lambda: [m for m in handler.messages
                                  if m.rcpt_tos == ["news@example.com"]], what="the DSN")
        assert b"5.6.7" in dsn[0].content
    finally:
        plain.stop()


def test_folders_the_gateway_makes_are_owner_only_whatever_the_umask(tmp_path):
    """Under umask 000, Path.mkdir(parents=True, mode=0o700) made ./var world-writable: only
    the last folder gets the mode. The store, its keys and the outbox live under it."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "dkim", "keygen", "--domain", "example.com",
         "--selector", "s1"], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=60, preexec_fn=lambda: os.umask(0))  # noqa: PLW1509 - the point of the test
    assert result.returncode == 0, result.stderr
    [key] = (tmp_path / "var").rglob("*.key")
    for folder in (tmp_path / "var", key.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_delivery_counters_are_the_stores_and_outlive_a_restart(make_gateway, sink: Sink):
    """/metrics counted in memory: the HTTP process's own deliveries only (smtp.processes >
    1 showed 30 of 80), back to 0 at each start, typed as gauges, printed as 1.23457e+06.
    With http.metrics_token, /metrics answers only that bearer token (COMPLIANCE.md 7)."""
    import httpx

    gw = make_gateway(http_extra='metrics_token = "m3trics-Token-2026-for-the-tests"')
    send(gw.smtp_port, message(subject="Counted"), to=["jane@example.net", "john@example.org"])
    sink.wait_for(2)
    url = f"http://127.0.0.1:{gw.http_port}/metrics"
    for headers in ({}, {"Authorization": "Bearer m3trics-Token-2025"},
                    {"Authorization": "m3trics-Token-2026"}):
        refused = httpx.get(url, headers=headers)
        assert refused.status_code == 401 and "gateway_" not in refused.text, headers
        assert refused.headers["www-authenticate"].startswith("Bearer")

    def sent() -> list[str]:
        text = httpx.get(url, headers={
            "Authorization": "Bearer m3trics-Token-2026-for-the-tests"}).text
        return [line for line in text.splitlines() if "deliveries_sent_total" in line]

    wait_until(lambda: sent()[-1].endswith(" 2"), what="two copies counted")
    assert sent() == ["# TYPE gateway_deliveries_sent_total counter",
                      "gateway_deliveries_sent_total 2"]
    assert gw.terminate() == 0
    gw.start()
    assert sent()[-1] == "gateway_deliveries_sent_total 2"
    with sqlite3.connect(gw.config.parent / "gateway.db") as db:  # another process's sends
        db.execute("UPDATE delivery_counts SET total = 1234567 WHERE state = 'sent'")
    assert sent()[-1] == "gateway_deliveries_sent_total 1234567"


def test_an_account_with_mail_in_hand_is_removed_only_with_force(make_gateway):
    """`accounts remove` said queued mail was still delivered; it was deferred for 5 days
    ("account no longer exists") and then bounced. Now it is refused while copies wait, and
    --force fails them at once."""
    upstream = Sink(free_port())  # not started: the copy waits, deferred
    gw = make_gateway(sink_port=upstream.port)
    send(gw.smtp_port, message(subject="Waiting"))
    wait_until(lambda: [e for e in json.loads(gw.cli("queue", "list", "--json").stdout)
                        if e["state"] == "deferred"], what="a deferred copy")
    refused = gw.cli("accounts", "remove", "crm")
    assert refused.returncode == 1 and "1 copies queued or deferred" in refused.stderr
    forced = gw.cli("accounts", "remove", "crm", "--force")
    assert forced.returncode == 0 and "will fail" in forced.stdout
    assert gw.cli("queue", "flush").returncode == 0
    failed = wait_until(lambda: json.loads(gw.cli("queue", "list", "--failed", "--json").stdout),
                        what="the copy failed")
    assert failed[0]["last_error"] == "account crm was removed: not sent"


def test_eight_bit_content_is_declared_to_the_upstream(make_gateway, sink: Sink):
    """RFC 6152: 8-bit data goes with BODY=8BITMIME to a server offering it (it went
    undeclared); 7-bit data without it. A client's SMTPUTF8 (header fields in UTF-8, RFC
    6532) is passed on (only the addresses decided it: the request was dropped); without the
    request, the copy goes as it came."""
    gw = make_gateway()
    plain = message(subject="Seven bits")
    eight = (message(subject="Huit bits", body="\u00e9t\u00e9 Hello Jane,\r\n")
             .replace(b"charset=utf-8\r\n", b"charset=utf-8\r\nContent-Transfer-Encoding: 8bit"
                      b"\r\n", 1))
    utf8_subject = message(subject="R\u00e9sum\u00e9 d'\u00e9t\u00e9", body="Hello Jane,\r\n")
    send(gw.smtp_port, plain)
    send(gw.smtp_port, eight)
    with smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=10) as client:
        client.ehlo("client.test")
        client.sendmail("news@example.com", ["jane@example.net"], utf8_subject,
                        mail_options=["SMTPUTF8"])
    send(gw.smtp_port, utf8_subject.replace("Résumé".encode(), b"Unasked"))
    received = {r.content.split(b"Subject: ", 1)[1][:4]: r for r in sink.wait_for(4)}
    assert "BODY=8BITMIME" in received[b"Huit"].mail_options
    assert "BODY=8BITMIME" not in received[b"Seve"].mail_options
    assert "SMTPUTF8" in received["Rés".encode()].mail_options
    assert "SMTPUTF8" not in (received[b"Huit"].mail_options + received[b"Seve"].mail_options
                              + received[b"Unas"].mail_options)


def test_a_tls_key_readable_by_others_is_made_owner_only(tmp_path, caplog):
    """smtp.tls_key at 0644 (or the self-signed one's, chmod-ed by hand) was loaded as it was,
    silently: the DKIM and store keys are made owner-only, with a warning."""
    from gateway.runtime import Gateway
    from gateway.settings import load_settings
    from gateway.tls import ensure_self_signed

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    ensure_self_signed(cert, key, "localhost")
    key.chmod(0o644)
    config = tmp_path / "g.toml"
    config.write_text(f'[store]\nurl = "sqlite:///{tmp_path / "g.db"}"\n'
                      f'[smtp]\ntls_cert = "{cert}"\ntls_key = "{key}"\n')
    with caplog.at_level("WARNING"):
        assert Gateway(load_settings(config, environ={})).certificate() is not None
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and "made owner-only" in caplog.text
