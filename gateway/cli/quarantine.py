"""`gateway quarantine`: copies held for a human decision (R9, R2 when configured, M2, M3)."""

from __future__ import annotations

import getpass
import sys
import time
from collections import Counter

import click
from rich.console import Console
from rich.table import Table

from gateway.cli import EXIT_REFUSED, CliState, hasher_for, print_json, run, when
from gateway.errors import NotFound, Refused
from gateway.review import Review
from gateway.store.accounts import AccountStore
from gateway.store.db import Database
from gateway.store.ledger import LedgerLookup
from gateway.store.quarantine import QuarantineStore
from gateway.text import preview, printable


@click.group()
def quarantine() -> None:
    """Held recipient copies: nothing in here is delivered until an operator releases it."""


@quarantine.command("list")
@click.option("--account", help="Only entries of this sending account.")
@click.option("--rule", help="Only entries held by this rule (R9, R2, M2, M3).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def list_(state: CliState, account: str | None, rule: str | None, as_json: bool) -> None:
    """Held entries, oldest first, with counts per rule."""

    async def body() -> None:
        async with Database(state.settings.store.path) as db:
            entries = await QuarantineStore(db).list(account=account,
                                                     rule=rule.upper() if rule else None)
        if as_json:
            print_json([e.as_json() for e in entries])
            return
        table = Table(title=f"{len(entries)} held copies")
        for column in ("id", "since", "account", "from", "recipient", "subject", "rule",
                       "reason"):
            table.add_column(column)
        for e in entries:
            table.add_row(str(e.id), when(e.created_at), e.account or "", e.mail_from,
                          e.recipient, e.subject[:60], e.rule, e.reason)
        console = Console(markup=False, highlight=False)
        console.print(table)
        counts = Counter(e.rule for e in entries)
        if counts:
            console.print("  ".join(f"{r}: {n}" for r, n in sorted(counts.items())))

    run(body)


def _operator(value: str | None) -> str:
    return value or getpass.getuser()


async def _review(state: CliState, db: Database) -> Review:
    settings = state.settings
    return Review(QuarantineStore(db), AccountStore(db),
                  LedgerLookup(settings.store.path, hasher_for(settings)),
                  settings.policy.knobs())


@quarantine.command()
@click.argument("entry_id", type=int)
@click.pass_obj
def show(state: CliState, entry_id: int) -> None:
    """Envelope, decision, headers and a text preview of held entry ENTRY_ID. Nothing from
    the message reaches the terminal unescaped (control characters become spaces)."""

    async def body() -> None:
        async with Database(state.settings.store.path) as db:
            store = QuarantineStore(db)
            entry = await store.get(entry_id)
            content = await store.content(entry)
        console = Console(markup=False, highlight=False, soft_wrap=True)
        for label, value in (("id", str(entry.id)), ("state", entry.state),
                             ("since", when(entry.created_at)), ("account", entry.account),
                             ("client", entry.client_ip), ("from", entry.mail_from),
                             ("to", entry.recipient), ("subject", entry.subject),
                             ("rule", f"{entry.rule}: {entry.reason}"),
                             ("legal basis", entry.basis)):
            console.print(f"{label:>12}  {printable(value or '')}")
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
@click.argument("entry_ids", type=int, nargs=-1, required=True)
@click.option("--reason", help="Why (recorded with the decision).")
@click.option("--operator", help="Who decides (default: the OS user).")
@click.pass_obj
def release(state: CliState, entry_ids: tuple[int, ...], reason: str | None,
            operator: str | None) -> None:
    """Send held copies after all: each is checked again (every rule but the one that held
    it), then leaves with the unsubscribe fields, the notice and DKIM like any allowed copy.
    Exit 1 if any was refused."""
    who = _operator(operator)

    async def body() -> int:
        refused = 0
        async with Database(state.settings.store.path) as db:
            review = await _review(state, db)
            try:
                for entry_id in entry_ids:
                    try:
                        done = await review.release(entry_id, who, reason)
                    except (NotFound, Refused) as exc:
                        refused += 1
                        click.echo(f"gateway: {exc}", err=True)
                        continue
                    click.echo(f"quarantine entry {entry_id} released to "
                               f"{done.entry.recipient} (queue entry {done.delivery_id}, "
                               f"rule {done.rule})")
            finally:
                review.lookup.close()
        return refused

    if run(body):
        sys.exit(EXIT_REFUSED)


@quarantine.command()
@click.argument("entry_ids", type=int, nargs=-1, required=True)
@click.option("--reason", help="Why (recorded with the decision).")
@click.option("--operator", help="Who decides (default: the OS user).")
@click.pass_obj
def reject(state: CliState, entry_ids: tuple[int, ...], reason: str | None,
           operator: str | None) -> None:
    """Never send held copies: the decision is recorded and the raw message deleted once no
    other copy needs it."""
    who = _operator(operator)

    async def body() -> int:
        refused = 0
        async with Database(state.settings.store.path) as db:
            review = await _review(state, db)
            try:
                for entry_id in entry_ids:
                    try:
                        await review.reject(entry_id, who, reason)
                    except (NotFound, Refused) as exc:
                        refused += 1
                        click.echo(f"gateway: {exc}", err=True)
                        continue
                    click.echo(f"quarantine entry {entry_id} rejected")
            finally:
                review.lookup.close()
        return refused

    if run(body):
        sys.exit(EXIT_REFUSED)


@quarantine.command()
@click.option("--older-than", "days", type=click.FloatRange(min=0), required=True,
              help="Reject and delete entries held longer than this many days.")
@click.pass_obj
def purge(state: CliState, days: float) -> None:
    """Reject every entry held longer than DAYS, so held personal data does not pile up."""

    async def body() -> int:
        async with Database(state.settings.store.path) as db:
            store = QuarantineStore(db)
            entries = await store.held_before(time.time() - days * 86400)
            for entry in entries:
                await store.reject(entry, "purge", f"held longer than {days:g} days")
        return len(entries)

    click.echo(f"{run(body)} quarantine entries purged")


COMMANDS = [quarantine]
