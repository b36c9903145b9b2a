"""`gateway suppress`: the suppression list (objections), kept as keyed hashes only."""

from __future__ import annotations

import click
from rich.table import Table

from gateway.cli import ADDRESS, CliState, hasher_for, print_json, run, table_console, when
from gateway.errors import Refused
from gateway.store.db import Database
from gateway.store.ledger import Ledger


@click.group()
def suppress() -> None:
    """Addresses that must never be mailed again (R1). Entries never expire, survive erasure
    and hold only a keyed hash of the address."""


@suppress.command()
@click.argument("email", type=ADDRESS)
@click.option("--reason", help="Why (kept on the contact's objection event, not in the list).")
@click.pass_obj
def add(state: CliState, email: str, reason: str | None) -> None:
    """Suppress EMAIL now: the next RCPT to it is refused with R1 by every gateway process."""

    async def body() -> None:
        async with Database(state.settings.store.path) as db:
            try:
                added = await Ledger(db, hasher_for(state.settings)).suppress(
                    email, "manual", reason=reason)
            except ValueError as exc:
                raise Refused(str(exc)) from None
        click.echo(f"{email} suppressed" if added else f"{email} was already suppressed")

    run(body)


@suppress.command()
@click.argument("email", type=ADDRESS)
@click.option("--reason", help="Why the objection is lifted (recorded on the contact).")
@click.option("--force", is_flag=True,
              help="Lift even the entry an erasure left (refused without it: that entry never "
                   "expires).")
@click.pass_obj
def remove(state: CliState, email: str, reason: str | None, force: bool) -> None:
    """Lift the suppression of EMAIL. Only do this on the person's own new request: an
    objection to prospecting is absolute (GDPR 21(3)). The entry left by `subject erase` is
    refused without --force."""

    async def body() -> None:
        async with Database(state.settings.store.path) as db:
            ledger = Ledger(db, hasher_for(state.settings))
            try:
                await ledger.unsuppress(email, reason, force)
                contact = await ledger.contact(email)
            except ValueError as exc:
                raise Refused(str(exc)) from None
        click.echo(f"{email} removed from the suppression list")
        if contact is not None and contact.consent == "withdrawn":
            click.echo("note: the ledger still records its consent as withdrawn (a withdrawal, or "
                       "the person's own objection), so it is decided without consent until a "
                       "contacts file grants it again, dated after that (`gateway check` shows "
                       "the decision)")

    run(body)


@suppress.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def list_(state: CliState, as_json: bool) -> None:
    """Every suppression entry, oldest first. The address is shown while the ledger still
    holds it; after erasure only its hash remains."""

    async def body() -> None:
        async with Database(state.settings.store.path) as db:
            entries = await Ledger(db, hasher_for(state.settings)).suppression_list()
        if as_json:
            print_json([{"hash": e.hash.hex(), "created_at": e.created_at,
                         "channel": e.channel, "address": e.address} for e in entries])
            return
        table = Table(title=f"{len(entries)} suppressed address"
                            f"{'' if len(entries) == 1 else 'es'}")
        for column in ("since", "channel", "address", "hash"):
            table.add_column(column, overflow="fold")  # wrapped, never cut with "…"
        for e in entries:
            table.add_row(when(e.created_at), e.channel, e.address or "(not in the ledger)",
                          e.hash.hex()[:16])
        table_console().print(table)

    run(body)


COMMANDS = [suppress]
