"""A stop never answers 421 to a session whose message is being committed: the commit goes
on (shielded), so the client, told to try again, would send it a second time, delivered
twice. The DATA reply goes out first (250, or 451 if the commit fails), then the 421."""

from __future__ import annotations

import signal
import sqlite3
import threading
import time

from conftest import Sink, message
from rawsmtp import RawSmtp


def test_a_message_being_committed_at_a_stop_gets_its_reply_then_421(make_gateway,
                                                                     sink: Sink):
    gw = make_gateway()
    store = gw.config.parent / "gateway.db"
    s = RawSmtp(gw.smtp_port)
    s.cmd("EHLO c")
    assert s.cmd("MAIL FROM:<news@example.com>")[0] == 250
    assert s.cmd("RCPT TO:<jane@example.net>")[0] == 250
    assert s.cmd("DATA")[0] == 354
    # another process (a CLI command) holds the store's write lock for 2 s: the commit
    # waits on SQLite's busy handler (busy_timeout 5 s), as on any busy store
    lock = sqlite3.connect(store, isolation_level=None, timeout=10,
                           check_same_thread=False)
    lock.execute("BEGIN IMMEDIATE")
    threading.Timer(2.0, lambda: lock.execute("ROLLBACK")).start()
    s.send(message(subject="stopped while committing") + b".\r\n")
    time.sleep(0.5)  # the commit is waiting now
    gw.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    gw.proc.send_signal(signal.SIGTERM)  # a second signal (or the 25 s session drain ending)
    code, text = s.reply()
    after = s.reply()[0]
    assert gw.proc.wait(20) == 0
    with sqlite3.connect(store) as db:
        committed = db.execute("SELECT count(*) FROM messages WHERE account = 'crm'"
                               " AND subject = 'stopped while committing'").fetchone()[0]
    # it was 421 4.3.2 "Service shutting down" with the message committed (queued): the
    # client sent it again, and both went out
    assert (code, committed) == (250, 1), (code, text, committed)
    assert after == 421  # then the stop's word, and the session closed
