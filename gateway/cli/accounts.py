"""`gateway accounts`: who may send through the gateway, and as which From domains."""

from __future__ import annotations

import re
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import click
from rich.table import Table

from gateway.addresses import normalize_domain
from gateway.cli import (
    EXIT_REFUSED,
    EXIT_USAGE,
    CliState,
    fail,
    print_json,
    run,
    table_console,
    when,
)
from gateway.errors import NotFound, Refused
from gateway.peers import is_loopback
from gateway.security.passwords import hash_password_async, password_problem
from gateway.store.accounts import CATEGORIES, AccountStore
from gateway.store.db import Database
from gateway.urls import shown_url

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$")


@asynccontextmanager
async def open_accounts(state: CliState) -> AsyncIterator[AccountStore]:
    async with Database(state.settings.store.path) as db:
        yield AccountStore(db)


def _check_name(name: str) -> str:
    if not NAME.match(name):
        fail(f"invalid account name {name!r}: 1-64 characters, letters, digits and . _ @ + -, "
             "starting with a letter or digit", EXIT_USAGE)
    return name


def _domains(values: tuple[str, ...]) -> list[str]:
    result: list[str] = []
    for value in values:
        try:
            domain = normalize_domain(value)
        except ValueError as exc:
            fail(f"--from-domain: {exc}", EXIT_USAGE)
        if domain not in result:
            result.append(domain)
    return result


def _warn_unsigned(state: CliState, domains: list[str]) -> None:
    """With [[dkim]] keys configured, a domain none of them signs: its copies would be
    accepted, then deferred until delivery.max_age_hours and bounced (serve says it too)."""
    keyed = {entry.domain.strip().lower().rstrip(".") for entry in state.settings.dkim}
    unkeyed = [d for d in domains if d not in keyed]
    if keyed and unkeyed:
        click.echo(f"warning: no [[dkim]] key signs {', '.join(unkeyed)}: mail from it will "
                   "be accepted, then deferred and bounced; add one with `gateway dkim keygen "
                   f"--domain {unkeyed[0]} --selector S` and a [[dkim]] entry", err=True)


def _split(value: str | None, option: str) -> list[str] | None:
    """ "a;b" -> ["a", "b"]; None stays None (not given); "" clears."""
    if value is None:
        return None
    items = [item.strip() for item in value.split(";") if item.strip()]
    bad = [item for item in items if any(ord(c) < 32 for c in item) or len(item) > 100]
    if bad:
        fail(f"{option}: invalid value {bad[0]!r}", EXIT_USAGE)
    return items


def _notify_url(value: str | None) -> str | None:
    """An http(s) URL the notification sender can POST to, as given; refused (exit 2) with
    the reason otherwise: urlsplit alone drops tabs and CR/LF and never reads the port, and
    such a URL would only fail at the first objection."""
    if value:
        import httpx  # the sender's own URL parser: what it takes, the sender can POST to

        problem = None
        if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in value):
            problem = "spaces and control characters are not allowed"
        else:
            try:
                parts = urlsplit(value)  # ValueError: a bracketed host left open
                parts.port  # noqa: B018 - raises ValueError for a port that is not a number
                httpx.URL(value)
            except (ValueError, httpx.InvalidURL) as exc:
                problem = str(exc)
            else:
                if parts.scheme not in ("http", "https") or not parts.hostname:
                    problem = "expected http:// or https:// and a host"
                else:
                    from gateway.notify import literal_problem

                    problem = literal_problem(parts.hostname)
        if problem:  # the URL as listed: a password or token in it is not echoed
            fail(f"--notify-url: {problem}: {shown_url(value)!r}", EXIT_USAGE)
        host = (parts.hostname or "").lower()
        if parts.scheme == "http" and host != "localhost" and not is_loopback(host):
            click.echo(f"warning: --notify-url {shown_url(value)} is plain http: the addresses "
                       "of the people who objected, and any credentials in the URL, cross "
                       "the network in clear text; prefer https", err=True)
    return value


def _read_password(name: str, from_stdin: bool) -> str:
    """One line on stdin, or a hidden prompt asked twice; refused unless CNIL-strong."""
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif not sys.stdin.isatty():
        # no terminal to prompt on (a script piping the answers): its first line, as the
        # prompt would have read it (Python's getpass warned it could not hide the input);
        # nothing at all ended in "Aborted!" without a word of --password-stdin
        line = sys.stdin.readline()
        if not line:
            fail("no terminal to ask the password on: give it as one line on stdin with "
                 "--password-stdin", EXIT_USAGE)
        password = line.rstrip("\r\n")
    else:
        password = click.prompt(f"Password for {name}", hide_input=True,
                                confirmation_prompt=True)
    problem = password_problem(password, name=name)
    if problem:
        fail(f"password refused: {problem}", EXIT_REFUSED)
    return password


def _when(ts: float | None) -> str:
    return when(ts) if ts else ""


@click.group()
def accounts() -> None:
    """SMTP AUTH accounts: name, password, allowed From domains, campaign topics."""


@accounts.command()
@click.argument("name")
@click.option("--from-domain", "from_domains", multiple=True, required=True,
              help="A domain this account may send from (envelope and From header); repeat "
                   "for several.")
@click.option("--category", type=click.Choice(CATEGORIES), default="marketing",
              show_default=True, help="Prospecting mail (marketing) or transactional mail.")
@click.option("--topics", help='Campaign topics, ";"-separated, e.g. "crm;payroll".')
@click.option("--product-categories", help='Product categories, ";"-separated.')
@click.option("--notify-url", help="http(s) URL told about unsubscribes of this account.")
@click.option("--password-stdin", is_flag=True,
              help="Read the password as one line on stdin instead of prompting.")
@click.pass_obj
def add(state: CliState, name: str, from_domains: tuple[str, ...], category: str,
        topics: str | None, product_categories: str | None, notify_url: str | None,
        password_stdin: bool) -> None:
    """Create account NAME (the SMTP AUTH user name).

    The password must carry at least 80 bits of entropy (CNIL deliberation 2022-100): e.g. 12
    characters mixing upper case, lower case, digits and symbols, 14 of upper case, lower case
    and digits, or a passphrase of 7 different words or more. Common and breached passwords,
    and common words dressed up with a year or a symbol (under 10^10 guesses by zxcvbn), are
    refused.
    """
    _check_name(name)
    domains = _domains(from_domains)
    topic_list = _split(topics, "--topics") or []
    category_list = _split(product_categories, "--product-categories") or []
    url = _notify_url(notify_url)

    async def absent() -> None:
        async with open_accounts(state) as store:
            if await store.get(name) is not None:
                raise Refused(f"account {name!r} already exists")

    run(absent)  # said before the password is asked for (twice) and checked
    password = _read_password(name, password_stdin)

    async def body() -> None:
        password_hash = await hash_password_async(password)
        async with open_accounts(state) as store:
            await store.add(name, password_hash, domains, category=category,
                            topics=topic_list, product_categories=category_list,
                            notify_url=url)
        click.echo(f"account {name} created; may send from {', '.join(domains)}")
        _warn_unsigned(state, domains)

    run(body)


@accounts.command()
@click.argument("name")
@click.option("--from-domain", "from_domains", multiple=True,
              help="Replace the allowed From domains (repeat for several).")
@click.option("--category", type=click.Choice(CATEGORIES),
              help="Prospecting mail (marketing) or transactional mail.")
@click.option("--topics", help='Replace the campaign topics ("a;b"; "" clears).')
@click.option("--product-categories", help='Replace the product categories ("" clears).')
@click.option("--notify-url", help='Replace the unsubscribe notification URL ("" clears).')
@click.pass_obj
def update(state: CliState, name: str, from_domains: tuple[str, ...], category: str | None,
           topics: str | None, product_categories: str | None,
           notify_url: str | None) -> None:
    """Change account NAME; options not given are kept."""
    domains = _domains(from_domains) if from_domains else None
    topic_list = _split(topics, "--topics")
    category_list = _split(product_categories, "--product-categories")
    url = _notify_url(notify_url)

    async def body() -> None:
        async with open_accounts(state) as store:
            account = await store.update(name, from_domains=domains, category=category,
                                         topics=topic_list, product_categories=category_list,
                                         notify_url=url)
        click.echo(f"account {name} updated; may send from {', '.join(account.from_domains)}")
        if domains:
            _warn_unsigned(state, domains)

    run(body)


@accounts.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def list_(state: CliState, as_json: bool) -> None:
    """Every account, with its domains and lock state (never a password hash)."""

    async def body() -> None:
        async with open_accounts(state) as store:
            found = await store.list()
        if as_json:
            print_json([a.as_json() for a in found])
            return
        table = Table(title=f"{len(found)} accounts")
        for column in ("name", "from domains", "category", "topics", "failed logins",
                       "locked until", "created"):
            table.add_column(column, overflow="fold")  # wrapped, never cut with "…"
        for a in found:
            table.add_row(a.name, ", ".join(a.from_domains), a.category, ";".join(a.topics),
                          str(a.failed_logins), _when(a.locked_until) if a.locked() else "",
                          _when(a.created_at))
        table_console().print(table)

    run(body)


@accounts.command()
@click.argument("name")
@click.option("--password-stdin", is_flag=True,
              help="Read the new password as one line on stdin instead of prompting.")
@click.pass_obj
def passwd(state: CliState, name: str, password_stdin: bool) -> None:
    """Set a new password for NAME (same strength rule as `add`); also unlocks it."""

    async def exists() -> None:
        async with open_accounts(state) as store:
            await store.require(name)

    run(exists)  # say "no such account" before asking for a password
    password = _read_password(name, password_stdin)

    async def body() -> None:
        password_hash = await hash_password_async(password)
        async with open_accounts(state) as store:
            await store.set_password(name, password_hash)
        click.echo(f"password of {name} changed")

    run(body)


@accounts.command()
@click.argument("name")
@click.pass_obj
def unlock(state: CliState, name: str) -> None:
    """Lift the temporary lock set after repeated AUTH failures."""

    async def body() -> None:
        async with open_accounts(state) as store:
            await store.unlock(name)
        click.echo(f"account {name} unlocked")

    run(body)


@accounts.command()
@click.argument("name")
@click.option("--force", is_flag=True,
              help="Remove it even with mail still queued or held: those copies then fail "
                   "(a DSN to their sender) instead of being delivered.")
@click.pass_obj
def remove(state: CliState, name: str, force: bool) -> None:
    """Delete account NAME: it can no longer authenticate. Refused while copies of its mail
    are still queued, deferred or held (their delivery needs the account: its unsubscribe
    links name it): wait for them, or --force."""

    async def body() -> None:
        async with open_accounts(state) as store:
            if await store.get(name) is None:
                raise NotFound(f"no account {name}")
            queued, held = await store.mail_in_hand(name)
            if (queued or held) and not force:
                raise Refused(f"account {name} still has {queued} copies queued or deferred "
                              f"and {held} held in the quarantine: not removed. Wait for "
                              "them (gateway queue list; gateway quarantine list), or "
                              "--force to fail them")
            await store.remove(name)
        click.echo(f"account {name} removed"
                   + (f" ({queued} queued and {held} held copies will fail)"
                      if queued or held else ""))

    run(body)


COMMANDS = [accounts]
