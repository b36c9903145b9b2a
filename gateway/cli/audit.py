"""`gateway audit`: the tamper-evident log of every recipient decision."""

from __future__ import annotations

import sys

import click

from gateway.cli import EXIT_REFUSED, CliState, print_json, run
from gateway.store.audit import AuditLog
from gateway.store.db import Database


@click.group()
def audit() -> None:
    """The audit log: one row per recipient decision, each chained to the one before."""


@audit.command()
@click.option("--json", "as_json", is_flag=True, help='{"rows": N, "first_broken": ID|null}')
@click.pass_obj
def verify(state: CliState, as_json: bool) -> None:
    """Recompute the hash chain of the audit log; exit 1 and name the first row that does not
    match (edited, or rows deleted or inserted just before it)."""

    async def body() -> tuple[int, int | None]:
        async with Database(state.settings.store.path) as db:
            return await AuditLog(db).verify()

    rows, broken = run(body)
    if as_json:
        print_json({"rows": rows, "first_broken": broken})
    elif broken is None:
        click.echo(f"audit log intact: {rows} rows, hash chain verified")
    else:
        click.echo(f"audit log BROKEN at row {broken}: it was edited, or rows before it were "
                   f"deleted or inserted ({rows} rows verified before it)", err=True)
    if broken is not None:
        sys.exit(EXIT_REFUSED)


COMMANDS = [audit]
