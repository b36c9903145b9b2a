"""`gateway quarantine`: copies held for a human decision (R9, R2 when configured, M2, M3)."""

from __future__ import annotations

import datetime
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import click
from rich.table import Table

from gateway.cli import (
    EXIT_REFUSED,
    EXIT_USAGE,
    ROW_ID,
    SINCE_FORMATS,
    CliState,
    fail,
    hasher_for,
    operator_name,
    print_json,
    run,
    table_console,
    when,
)
from gateway.errors import NotFound, Refused
from gateway.review import Review
from gateway.store.accounts import AccountStore
from gateway.store.db import Database
from gateway.store.ledger import Ledger, LedgerLookup, ledger_form
from gateway.store.quarantine import QuarantineStore
from gateway.text import preview, printable

TABLE_PAGE = 100  # rows rich renders in well under a second (1,000 take ~0.7 s)


@click.group()
def quarantine() -> None:
    """Held recipient copies: nothing in here is delivered until an operator releases it."""


@quarantine.command("list")
@click.option("--account", help="Only entries of this sending account.")
@click.option("--rule", help="Only entries held by this rule (R9, R2, M2, M3).")
@click.option("--since", type=click.DateTime(SINCE_FORMATS), metavar="DATE",
              help="Only entries held since this day (YYYY-MM-DD, from midnight UTC) or "
                   "moment (YYYY-MM-DD HH:MM[Z], UTC, as the tables print it).")
@click.option("--limit", type=ROW_ID,
              help=f"At most this many entries, oldest first (default: {TABLE_PAGE} in the "
                   "table, all with --json); the counts per rule cover all of them.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def list_(state: CliState, account: str | None, rule: str | None,
          since: datetime.datetime | None, limit: int | None, as_json: bool) -> None:
    """Held entries, oldest first, with counts per rule (paged on a terminal)."""
    after = since.replace(tzinfo=datetime.UTC).timestamp() if since else None

    async def body() -> None:
        async with Database(state.settings.store.path) as db:
            store = QuarantineStore(db)
            rule_id = rule.upper() if rule else None
            entries = await store.list(account=account, rule=rule_id, since=after,
                                       limit=limit or (-1 if as_json else TABLE_PAGE))
            counts = await store.counts(account=account, rule=rule_id, since=after)
        if as_json:
            print_json([e.as_json() for e in entries])
            return
        total = sum(counts.values())
        table = Table(title=f"{total} held copies" + (
            f" (the {len(entries)} oldest shown)" if total > len(entries) else ""))
        for column in ("id", "age", "account", "from", "recipient", "subject", "rule",
                       "reason"):
            table.add_column(column, overflow="fold")  # wrapped, never cut with "…"
        now = time.time()
        for e in entries:
            table.add_row(str(e.id), _age(now - e.created_at), printable(e.account or ""),
                          printable(e.mail_from), printable(e.recipient),
                          printable(e.subject[:60]), e.rule, printable(e.reason))
        console = table_console()
        summary = "  ".join(f"{r}: {n}" for r, n in sorted(counts.items()))
        if console.is_terminal and len(entries) > console.height:
            with console.pager():
                console.print(table)
                console.print(summary)
        else:
            console.print(table)
            console.print(summary)

    run(body)


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _bulk_options(command: Any) -> Any:
    for option in reversed((
        click.argument("entry_ids", type=ROW_ID, nargs=-1),
        click.option("--all", "select_all", is_flag=True,
                     help="Every held entry matching --rule/--account/--older-than."),
        click.option("--rule", help="With --all: only entries held by this rule."),
        click.option("--account", help="With --all: only entries of this account."),
        click.option("--older-than", "older_than", type=click.FloatRange(min=0),
                     help="With --all: only entries held longer than this many days."),
        click.option("--yes", is_flag=True, help="With --all: do not ask for confirmation."),
        click.option("--reason", help="Why (recorded with the decision)."),
        click.option("--operator", help="Who decides (default: the OS user)."),
    )):
        command = option(command)
    return command


def _select(state: CliState, verb: str, entry_ids: tuple[int, ...], select_all: bool,
            rule: str | None, account: str | None, older_than: float | None,
            yes: bool) -> list[int]:
    """The entry ids to act on: those given, or with --all the matching held ones (after a
    confirmation that shows the count)."""
    if bool(entry_ids) == select_all:
        fail("give entry ids, or --all (with --rule, --account, --older-than)", EXIT_USAGE)
    if not select_all:
        if rule or account or older_than is not None:
            fail("--rule, --account and --older-than go with --all", EXIT_USAGE)
        return list(entry_ids)

    async def matching() -> list[int]:
        async with Database(state.settings.store.path) as db:
            entries = await QuarantineStore(db).list(
                account=account, rule=rule.upper() if rule else None, limit=1_000_000)
        cutoff = time.time() - older_than * 86400 if older_than is not None else None
        return [e.id for e in entries if cutoff is None or e.created_at < cutoff]

    ids = run(matching)
    if ids and not yes:
        if not sys.stdin.isatty():  # a script: the prompt went to its stdout, then "Aborted!"
            fail(f"{verb.lower()} --all would act on {len(ids)} held entries: with no terminal "
                 "to confirm on, add --yes", EXIT_USAGE)
        click.confirm(f"{verb} {len(ids)} held entries?", abort=True, err=True)
    return ids


def _decide_each(state: CliState, entry_ids: tuple[int, ...],
                 one: Callable[[Review, int], Awaitable[str]]) -> None:
    """Apply `one` to each entry, printing what it did or why it was refused; every entry is
    tried, and the exit code is 1 when any was refused."""

    async def body() -> int:
        refused = 0
        async with Database(state.settings.store.path) as db:
            review = await _review(state, db)
            try:
                for entry_id in entry_ids:
                    try:
                        click.echo(await one(review, entry_id))
                    except (NotFound, Refused) as exc:
                        refused += 1
                        click.echo(f"gateway: {exc}", err=True)
            finally:
                await review.lookup.close()
        return refused

    if run(body):
        sys.exit(EXIT_REFUSED)


async def _review(state: CliState, db: Database) -> Review:
    settings = state.settings
    return Review(QuarantineStore(db), AccountStore(db),
                  LedgerLookup(settings.store.path, hasher_for(settings)),
                  settings.policy.knobs())


@quarantine.command()
@click.argument("entry_id", type=ROW_ID)
@click.pass_obj
def show(state: CliState, entry_id: int) -> None:
    """Envelope, decision, headers and a text preview of held entry ENTRY_ID. Nothing from
    the message reaches the terminal unescaped (control characters become spaces)."""

    async def body() -> None:
        async with Database(state.settings.store.path) as db:
            store = QuarantineStore(db)
            entry = await store.get(entry_id)
            content = await store.content(entry)
            try:
                contact = await Ledger(db, hasher_for(state.settings)).contact(entry.recipient)
            except ValueError:
                contact = None
        console = table_console(soft_wrap=True)
        for label, value in (("id", str(entry.id)), ("state", entry.state),
                             ("since", when(entry.created_at)), ("account", entry.account),
                             ("client", entry.client_ip), ("from", entry.mail_from),
                             ("to", entry.recipient), ("subject", entry.subject),
                             ("rule", f"{entry.rule}: {entry.reason}"),
                             ("legal basis", entry.basis)):
            console.print(f"{label:>12}  {printable(value or '')}")
        console.print("\n--- ledger facts ---")
        if contact is None:
            console.print("(the ledger holds nothing on this address)")
        else:
            facts = {"kind": contact.kind, "audience": contact.audience,
                     "relationship": contact.relationship, "language": contact.language,
                     "job title": contact.job_title,
                     "topics": "; ".join(sorted(contact.topics)),
                     "customer categories": "; ".join(sorted(contact.customer_categories)),
                     "consent": f"{contact.consent or 'none'} {when(contact.consent_at)}",
                     "collected": when(contact.collected_at),
                     "last own action": when(contact.last_interaction_at),
                     "sources": "; ".join(f"{src.name} ({src.type}"
                                          f"{', ' + src.visibility if src.visibility else ''})"
                                          for src in contact.sources)}
            for label, value in facts.items():
                console.print(f"{label:>20}  {printable(value or '')}")
        if content is None:
            console.print("(the message content is no longer kept)")
            return
        end = content.find(b"\r\n\r\n")
        console.print("\n--- headers ---")
        for line in content[:end].decode("utf-8", "replace").split("\r\n")[:60]:
            console.print(printable(line))
        console.print("\n--- text ---")
        console.print(printable(preview(content), keep_newlines=True))

    run(body)


@quarantine.command()
@_bulk_options
@click.pass_obj
def release(state: CliState, entry_ids: tuple[int, ...], select_all: bool, rule: str | None,
            account: str | None, older_than: float | None, yes: bool, reason: str | None,
            operator: str | None) -> None:
    """Send held copies after all: each is checked again (every rule but the one that held
    it), then leaves with the unsubscribe fields, the notice and DKIM like any allowed copy.
    Exit 1 if any was refused."""
    who = operator_name(operator)
    entry_ids = tuple(_select(state, "Release", entry_ids, select_all, rule, account,
                              older_than, yes))

    async def one(review: Review, entry_id: int) -> str:
        done = await review.release(entry_id, who, reason)
        return (f"quarantine entry {entry_id} released to {done.entry.recipient} "
                f"(queue entry {done.delivery_id}, rule {done.rule})")

    _decide_each(state, entry_ids, one)


@quarantine.command()
@_bulk_options
@click.pass_obj
def reject(state: CliState, entry_ids: tuple[int, ...], select_all: bool, rule: str | None,
           account: str | None, older_than: float | None, yes: bool, reason: str | None,
           operator: str | None) -> None:
    """Never send held copies: the decision is recorded and the raw message deleted once no
    other copy needs it."""
    who = operator_name(operator)
    entry_ids = tuple(_select(state, "Reject", entry_ids, select_all, rule, account,
                              older_than, yes))

    async def one(review: Review, entry_id: int) -> str:
        await review.reject(entry_id, who, reason)
        return f"quarantine entry {entry_id} rejected"

    _decide_each(state, entry_ids, one)


@quarantine.command()
@click.option("--older-than", "days", type=click.FloatRange(min=0), required=True,
              help="Reject and delete entries held longer than this many days.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation on a terminal.")
@click.option("--operator", help="Who decides (default: the OS user).")
@click.pass_obj
def purge(state: CliState, days: float, yes: bool, operator: str | None) -> None:
    """Reject every entry held longer than --older-than days, so held personal data does not
    pile up; their content is deleted, which cannot be undone. Asks first on a terminal
    (unless --yes), and names each entry it rejected. Recorded as the operator's decision
    (the automatic purge of quarantine.retention_days is recorded as "purge"). The rows of
    an address the ledger does not hold are deleted by `retention run` once held longer
    than quarantine.retention_days; a contact's go with it (R4)."""
    who = operator_name(operator)

    hasher = hasher_for(state.settings)
    cutoff = time.time() - days * 86400

    async def held() -> int:
        async with Database(state.settings.store.path) as db:
            return len(await QuarantineStore(db).held_before(cutoff))

    if not yes and sys.stdin.isatty():
        count = run(held)
        if count:
            click.confirm(f"Reject {count} held entries and delete their content?", abort=True)

    async def body() -> list[str]:
        async with Database(state.settings.store.path) as db:
            store = QuarantineStore(db)
            purged = []
            for entry in await store.held_before(cutoff):
                try:
                    await store.reject(entry, who, f"held longer than {days:g} days",
                                       hasher(ledger_form(entry.recipient)))
                except Refused:  # released or rejected by an operator meanwhile
                    continue
                purged.append(f"quarantine entry {entry.id} ({printable(entry.recipient)}, "
                              f"{entry.rule}) rejected")
        return purged

    purged = run(body)
    for line in purged:
        click.echo(line)
    click.echo(f"{len(purged)} quarantine {'entry' if len(purged) == 1 else 'entries'} purged")


COMMANDS = [quarantine]
