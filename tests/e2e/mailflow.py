"""Helpers the end-to-end tests share: send one message, ask one RCPT, read the store,
configure a DKIM key through the real CLI."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

from conftest import GatewayProcess, Sink, message
from rawsmtp import RawSmtp


def deliver(gw: GatewayProcess, sink: Sink, to: str) -> str:
    """Send one message to `to` and return the URL of its List-Unsubscribe (http here)."""
    before = len(sink.messages)
    s = RawSmtp(gw.smtp_port)
    s.cmd("EHLO c")
    s.cmd("MAIL FROM:<news@example.com>")
    assert s.cmd(f"RCPT TO:<{to}>")[0] == 250
    s.cmd("DATA")
    assert s.cmd(message(to=to) + b".")[0] == 250
    s.cmd("QUIT")
    copy = sink.wait_for(before + 1)[-1].content
    return re.search(rb"List-Unsubscribe: <([^>]+)>", copy)[1].decode()


def rcpt(gw: GatewayProcess, to: str) -> tuple[int, str]:
    """The reply to RCPT TO:<to> in a new session as the trusted account."""
    s = RawSmtp(gw.smtp_port)
    s.cmd("EHLO c")
    s.cmd("MAIL FROM:<news@example.com>")
    return s.cmd(f"RCPT TO:<{to}>")


def suppressed(gw: GatewayProcess) -> list[str]:
    """The channel of every suppression entry in the store."""
    with sqlite3.connect(gw.config.parent / "gateway.db") as db:
        return [row[0] for row in db.execute("SELECT channel FROM suppression")]


def add_dkim_key(gw: GatewayProcess, folder: Path, selector: str,
                 domain: str = "example.com") -> str:
    """`gateway dkim keygen`, then the [[dkim]] lines it prints, in the (stopped) gateway's
    config; returns the p= value of the DNS record."""
    key = folder / f"{selector}.key"
    made = gw.cli("dkim", "keygen", "--domain", domain, "--selector", selector,
                  "--out", str(key))
    assert made.returncode == 0, made.stderr
    record_line = next(line for line in made.stdout.splitlines() if "IN TXT" in line)
    with gw.config.open("a") as config:
        config.write(f'\n[[dkim]]\ndomain = "{domain}"\nselector = "{selector}"\n'
                     f'key_file = "{key}"\n')
    return "".join(re.findall(r'"([^"]*)"', record_line)).split("p=")[1]
