"""`gateway quarantine`: copies held for a human decision (R9, R2 when configured, M2, M3)."""

from __future__ import annotations

from collections import Counter

import click
from rich.console import Console
from rich.table import Table

from gateway.cli import CliState, print_json, run, when
from gateway.store.db import Database
from gateway.store.quarantine import QuarantineStore


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


COMMANDS = [quarantine]
