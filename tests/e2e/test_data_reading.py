"""DATA is read in bulk, not line by line: the edges of RFC 5321 4.5.2 over a real socket."""

from __future__ import annotations

import re
import time

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
    added, _, rest = without_gateway_fields(received.content).partition(b"From: ")
    assert b"From: " + rest == head + line * 3000
    assert re.fullmatch(rb"Message-ID: <[0-9A-F]{16}\.\d+@gateway\.test>\r\nDate: [^\r]+\r\n",
                        added), added
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
