"""`gateway serve`: run SMTP, HTTP and delivery until SIGTERM."""

from __future__ import annotations

import logging
import os
import shlex
import sys
import time
from pathlib import Path

import click

from gateway.cli import CliState, errors_to_exit_codes, fail


def _banner(gateway: object) -> None:
    from gateway.runtime import Gateway

    assert isinstance(gateway, Gateway)
    s = gateway.settings
    where, tls = gateway.delivery_target(), gateway.tls_description()
    host = s.smtp.listen.rpartition(":")[0]
    port = s.smtp.listen.rpartition(":")[2]
    # the commands below reach this store only with this config: `gateway accounts add` as
    # printed made its account in ./var/gateway.db, and the swaks test got 535
    gw = "gateway"
    if s.source != "embedded defaults" and os.environ.get("GATEWAY_CONFIG") != s.source:
        gw = f"gateway --config {shlex.quote(str(Path(s.source).absolute()))}"
    # AUTH is offered after STARTTLS only (or in clear on loopback when allowed): with no
    # TLS the banner's AUTH test got 'Host did not advertise authentication'
    auth = gateway.tls is not None or s.smtp.allow_plain_auth_on_loopback
    lines = [
        f"gateway ready (config: {s.source})",
        f"  SMTP  {s.smtp.listen}  {tls}",
        f"  HTTP  {s.http.listen}  /u/TOKEN (unsubscribe) /webhooks/opt-out /healthz /metrics"
        f"  links point to {s.http.public_url}",
        f"  store {s.store.path.absolute()}"
        + (f"  ({s.smtp.processes} processes)" if s.smtp.processes > 1 else ""),
        f"  mail goes to {where}",
        "Send a test message (recipients must be in the contact ledger, else R2 refuses them):",
        f"  {gw} accounts add demo --from-domain example.com   # choose a strong password",
        f"  {gw} contacts import config/contacts.example.csv   # a sample ledger"
        if Path("config/contacts.example.csv").is_file() else
        f"  {gw} contacts import contacts.csv   # your ledger (columns: --help)",
        f"  {gw} check --account demo --to someone@example.net # what would happen, and why",
    ]
    if not auth:
        lines.append("  # no AUTH without TLS: list your client's address in [smtp] "
                     'trusted_clients with account = "demo", then')
    # swaks checks no certificate unless told to (--tls-verify takes no value: given "0",
    # swaks refused the whole command line)
    lines += [
        f"  swaks --server {_reachable(host)} --port {port}"
        f"{' --tls' if gateway.tls is not None else ''}"
        f"{' --auth-user demo' if auth else ''} \\",
        "        --from you@example.com --to someone@example.net",
        "Stop with Ctrl-C or SIGTERM (drains sessions and deliveries first).",
    ]
    click.echo("\n".join(lines))
    sys.stdout.flush()


def _reachable(host: str) -> str:
    """The address to connect to for a listen host: a wildcard is reached on loopback, an
    IPv6 literal's brackets dropped (swaks takes it bare)."""
    host = host.strip("[]")
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


@click.command()
@click.pass_obj
def serve(state: CliState) -> None:
    """Run SMTP + HTTP + delivery workers until stopped.

    SIGTERM, SIGINT (Ctrl-C) and SIGHUP all stop it with a graceful drain (up to 30 s: no new
    connections, messages in progress and deliveries in flight finished); a second signal
    stops at once. There is no reload: SIGHUP stops too (unless ignored, as under nohup), so
    do not point a logrotate postrotate or a systemd ExecReload at it; restart instead.

    With no config file it listens on 127.0.0.1:2525 (SMTP) and 127.0.0.1:8025 (HTTP), keeps
    its store under ./var/ and delivers into the Maildir ./var/outbox/.
    """
    with errors_to_exit_codes():
        settings = state.settings
    logging.basicConfig(
        level=getattr(logging, settings.log.level),
        format="%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S", stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        if handler.formatter is not None:  # UTC, as the CLI and the store show times
            handler.formatter.converter = time.gmtime
        # what clients send reaches log lines (an unknown SMTP command, a webhook's reason,
        # a forwarded address): no escape sequence of theirs reaches an operator's terminal
        handler.setFormatter(PrintableFormatter(handler.formatter))
    # httpx logs every request's URL at INFO, a notify_url's password with it
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if settings.log.level != "DEBUG":
        # aiosmtpd logs every command line at INFO: a trace (and a cost) per command, not an
        # event. Our own log says who connected, authenticated and queued what.
        logging.getLogger("mail.log").setLevel(logging.WARNING)
    # aiosmtpd 1.4 warns on every successful AUTH that its own Session.login_data is
    # deprecated: a WARNING per login that is no news to the operator
    logging.getLogger("mail.log").addFilter(
        lambda record: not record.getMessage().startswith("Session.login_data is deprecated"))
    from gateway.runtime import run

    with errors_to_exit_codes():
        try:
            run(settings, on_ready=_banner)
        except OSError as exc:
            fail(f"cannot start: {exc}", 1)


class PrintableFormatter(logging.Formatter):
    """The formatted line with control characters (ESC, BEL, C1, bidi overrides) made
    spaces; a traceback keeps its newlines."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        from gateway.text import printable  # the CLI's other commands do without it

        super().__init__()
        self.inner = inner or logging.Formatter()
        self.printable = printable

    def format(self, record: logging.LogRecord) -> str:
        return self.printable(self.inner.format(record), keep_newlines=True)


COMMANDS = [serve]
