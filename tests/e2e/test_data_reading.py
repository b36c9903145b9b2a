"""DATA is read in bulk, not line by line: the edges of RFC 5321 4.5.2 over a real socket."""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path

import pytest

from conftest import Sink, message, without_gateway_fields
from rawsmtp import RawSmtp


def open_transaction(port: int) -> RawSmtp:
    s = RawSmtp(port)
    s.cmd("EHLO c")
    assert s.cmd("MAIL FROM:<news@example.com>")[0] == 250
    assert s.cmd("RCPT TO:<jane@example.net>")[0] == 250
    assert s.cmd("DATA")[0] == 354
    return s


def test_terminator_split_across_writes_and_pipelined_commands_after_it(make_gateway,
                                                                        sink: Sink):
    gw = make_gateway()
    s = open_transaction(gw.smtp_port)
    content = message(subject="Split", body="a line\r\n. starts with a dot\r\n")
    stuffed = content.replace(b"\r\n. ", b"\r\n.. ")  # what a client sends (RFC 5321 4.5.2)
    for piece in (stuffed[:-1], stuffed[-1:] + b".", b"\r", b"\nNOOP\r\n"):
        s.send(piece)
        time.sleep(0.05)
    assert s.reply()[0] == 250  # the message
    assert s.reply()[0] == 250  # the NOOP pipelined right after the terminator
    (received,) = sink.wait_for(1)
    assert without_gateway_fields(received.content) == content
    s.cmd("QUIT")


def test_dot_stuffed_first_line_and_a_big_message_without_dots(make_gateway, sink: Sink):
    gw = make_gateway()
    s = open_transaction(gw.smtp_port)
    line = b"y" * 998 + b"\r\n"
    head = b"From: <news@example.com>\r\nSubject: big\r\n\r\n"
    # 3 MB without a single ".\r\n": more than the reader buffers in one piece
    s.send(b"." + head + line * 3000 + b".\r\n")
    assert s.reply()[0] == 250
    (received,) = sink.wait_for(1)
    # the first line's stuffed dot is removed; the gateway added the missing identity fields
    fields, _, body = without_gateway_fields(received.content).partition(b"\r\n\r\n")
    assert body == line * 3000
    assert re.fullmatch(rb"From: <news@example\.com>\r\nSubject: big\r\n"
                        rb"Message-ID: <[0-9A-F]{16}\.\d+@gateway\.test>\r\nDate: [^\r]+", fields
                        ), fields
    s.cmd("QUIT")


def test_over_long_line_gets_500_and_the_session_goes_on(make_gateway, sink: Sink):
    gw = make_gateway()
    s = open_transaction(gw.smtp_port)
    s.send(message() + b"z" * 1000 + b"\r\n.\r\n")  # 1002 octets with its CRLF
    code, text = s.reply()
    assert code == 500 and text.startswith("5.5.2")
    assert s.cmd("MAIL FROM:<news@example.com>")[0] == 250  # a new transaction works
    assert s.cmd("RCPT TO:<jane@example.net>")[0] == 250
    assert s.cmd("DATA")[0] == 354
    assert s.cmd(message(subject="Second") + b".")[0] == 250
    received = sink.wait_for(1)
    assert len(received) == 1 and b"Subject: Second" in received[0].content
    s.cmd("QUIT")


def test_empty_data_is_refused_by_the_from_rule_not_lost_in_the_reader(make_gateway):
    gw = make_gateway()
    s = open_transaction(gw.smtp_port)
    code, text = s.cmd(".")  # DATA with nothing in it: no From header
    assert code == 550 and "M1" in text
    assert s.cmd("NOOP")[0] == 250
    s.cmd("QUIT")


def test_an_empty_first_line_then_the_end_is_a_message_of_one_empty_line(make_gateway):
    """The end's CRLF.CRLF begins in the data's first octets: read to see an empty
    message, they are given back to the reader."""
    gw = make_gateway()
    s = open_transaction(gw.smtp_port)
    s.send(b"\r\n.\r\nNOOP\r\n")
    code, text = s.reply()
    assert code == 550 and "M1" in text  # no From: the one empty line was the message
    assert s.reply()[0] == 250  # the NOOP after it
    s.cmd("QUIT")


def test_lines_ending_in_a_dot_across_the_readers_pieces_arrive_whole(make_gateway,
                                                                      sink: Sink):
    """Read by CRLF.CRLF in pieces of up to 1 MiB, each piece leaving the octets where the
    end may begin: 2.5 MB of lines ending in a dot, the end at every offset of a piece."""
    gw = make_gateway()
    head = b"From: <news@example.com>\r\nSubject: dots\r\n\r\n"
    for extra in range(1, 6):
        body = b"a.\r\n" * 640_000 + b"x" * extra + b".\r\n"
        s = open_transaction(gw.smtp_port)
        s.send(head + body + b".\r\n")
        assert s.reply()[0] == 250
        s.cmd("QUIT")
        received = sink.wait_for(extra)[-1]
        assert b"\r\n\r\n" + body in without_gateway_fields(received.content)


def _peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc")


@pytest.mark.parametrize("line", [b"a.\r\n", b"ab\r\n"])
def test_a_message_to_an_unsubscribe_address_costs_no_more_memory_than_its_pieces(
        make_gateway, sink: Sink, line: bytes):
    """An MTA needs no AUTH to mail unsubscribe+TOKEN@, and any recipient of a copy holds a
    token. Read by ".\r\n" and split into one object per line, 8 MB of short lines grew the
    gateway by ~250 MB and held its event loop for seconds (25 MB: 780 MB, 8 s); 50 such
    sessions from one address would have ended in the OOM killer (security review). The
    objection is recorded, the message dropped as it is read."""
    gw = make_gateway(trusted=False, smtp_extra=(
        'trusted_clients = [{ network = "127.0.0.2/32", account = "crm" }]'))
    tool = RawSmtp(gw.smtp_port, source="127.0.0.2")
    tool.cmd("EHLO tool")
    tool.cmd("MAIL FROM:<news@example.com>")
    assert tool.cmd("RCPT TO:<jane@example.net>")[0] == 250
    tool.cmd("DATA")
    assert tool.cmd(message() + b".")[0] == 250
    tool.cmd("QUIT")
    copy = sink.wait_for(1)[0].content
    mailto = re.search(rb"<mailto:([^>]+)>", copy)[1].decode()
    before = _peak_rss_kb(gw.proc.pid)
    mta = RawSmtp(gw.smtp_port)  # not trusted, no AUTH
    mta.cmd("EHLO mx.example.net")
    assert mta.cmd("MAIL FROM:<jane@example.net>")[0] == 250
    assert mta.cmd(f"RCPT TO:<{mailto}>")[0] == 250
    assert mta.cmd("DATA")[0] == 354
    mta.send(b"Subject: unsubscribe\r\n\r\n" + line * 2_000_000 + b".\r\n")
    assert mta.reply()[0] == 250
    grown_mb = (_peak_rss_kb(gw.proc.pid) - before) / 1024
    assert grown_mb < 40, f"the gateway grew by {grown_mb:.0f} MB for 8 MB of DATA"
    assert mta.cmd("NOOP")[0] == 250
    mta.cmd("QUIT")
    with sqlite3.connect(gw.config.parent / "gateway.db") as db:
        assert db.execute("SELECT channel FROM suppression").fetchall() == [("mailto",)]


def test_a_message_that_went_round_between_relays_is_refused_not_relayed_again(
        make_gateway, sink: Sink):
    """RFC 5321 6.3: no Received field was counted, so a smarthost handing mail back into
    trusted_clients made the gateway relay it for ever, a copy and an audit row each turn;
    150 Received fields went out with a 151st (SMTP review). 50 is Postfix's hopcount_limit."""
    gw = make_gateway()
    hop = b"Received: from relay.example by mx.example; Sat, 28 Nov 2026 10:00:00 +0000\r\n"
    s = open_transaction(gw.smtp_port)
    assert s.cmd(hop * 50 + message(subject="looped") + b".") == (
        554, "5.4.6 Too many hops: a mail loop (RFC 5321 6.3)")
    assert s.cmd("MAIL FROM:<news@example.com>")[0] == 250  # the session goes on
    assert s.cmd("RCPT TO:<jane@example.net>")[0] == 250
    assert s.cmd("DATA")[0] == 354
    assert s.cmd(hop.upper() * 50 + message(subject="shouted") + b".")[0] == 554  # any case
    assert s.cmd("MAIL FROM:<news@example.com>")[0] == 250
    assert s.cmd("RCPT TO:<jane@example.net>")[0] == 250
    assert s.cmd("DATA")[0] == 354
    assert s.cmd(hop.lower() * 49 + message(subject="far") + b".")[0] == 250
    s.cmd("QUIT")
    (received,) = sink.wait_for(1)
    assert b"Subject: far" in received.content
    time.sleep(0.3)
    assert len(sink.messages) == 1
    assert "a mail loop" in gw.output
