"""`gateway audit`: the tamper-evident log of every recipient decision."""

from __future__ import annotations

import sys

import click

from gateway.cli import EXIT_REFUSED, EXIT_USAGE, CliState, fail, print_json, run
from gateway.store.audit import AuditCheck, AuditLog
from gateway.store.db import Database


@click.group()
def audit() -> None:
    """The audit log: one row per recipient decision, each chained to the one before."""


@audit.command()
@click.option("--anchor", metavar="ID:HEX",
              help="An anchor printed by an earlier verify and kept outside the store: the "
              "log must still hold that row with that chain value.")
@click.option("--json", "as_json", is_flag=True,
              help='{"rows": N, "first_broken": ID|null, "broken_at_upgrade": true|false, '
              '"anchor": "ID:HEX"|null, "anchor_holds": true|false|null, '
              '"anchor_predates_upgrade": true|false, '
              '"unlinked": N (rows an erasure unlinked from their recipient)}')
@click.pass_obj
def verify(state: CliState, anchor: str | None, as_json: bool) -> None:
    """Recompute the hash chain of the audit log; exit 1 and name the first row that does not
    match (edited, or rows deleted or inserted just before it).

    The chain alone cannot show rows cut from its end, nor a chain recomputed by someone who
    can write the store. So verify prints an anchor (the last row's id and chain value): keep
    it outside the store (a ticket, the monitoring) and pass it back with --anchor; a log cut
    after it or recomputed before it no longer holds it (exit 1).

    The upgrade to schema 026 re-chained the log (over salted commitments to the recipients,
    which an erasure can unlink) after checking the old chain: a break it found is reported
    for good, and anchors from before it no longer hold (keep the one printed after it)."""
    wanted: tuple[int, bytes] | None = None
    if anchor is not None:
        row_id, _, value = anchor.partition(":")
        try:
            wanted = (int(row_id), bytes.fromhex(value))
        except ValueError:
            fail(f"--anchor: expected ID:HEX as verify prints it, got {anchor!r}", EXIT_USAGE)

    async def body() -> AuditCheck:
        async with Database(state.settings.store.path) as db:
            return await AuditLog(db).verify(wanted[0] if wanted else None)

    check = run(body)
    holds = None if wanted is None else check.at_anchor == wanted[1]
    printed = f"{check.last[0]}:{check.last[1].hex()}" if check.last else None
    if as_json:
        print_json({"rows": check.rows, "first_broken": check.first_broken,
                    "broken_at_upgrade": check.broken_at_upgrade,
                    "anchor": printed, "anchor_holds": holds,
                    "anchor_predates_upgrade": check.anchor_predates,
                    "unlinked": check.unlinked})
    elif check.broken_at_upgrade:
        click.echo(f"audit log BROKEN at row {check.first_broken}: the upgrade to schema 026 "
                   "found it so when it re-chained the log (it was edited, or rows before it "
                   "were deleted or inserted, before the upgrade)", err=True)
    elif check.first_broken is not None:
        click.echo(f"audit log BROKEN at row {check.first_broken}: it was edited, or rows "
                   f"before it were deleted or inserted ({check.rows} rows verified before "
                   "it)", err=True)
    elif holds is False and check.anchor_predates:
        click.echo(f"the anchor {anchor} is from before the upgrade to schema 026, which "
                   "re-chained the log after checking it: it cannot hold now; keep the anchor "
                   f"printed here instead ({check.rows} rows, hash chain verified)"
                   + (f"\nanchor (keep it outside the store): {printed}" if printed else ""),
                   err=True)
    elif holds is False:
        click.echo(f"audit log does NOT hold the anchor {anchor}: rows were cut from it, or "
                   f"its chain was recomputed ({check.rows} rows now)", err=True)
    else:
        click.echo(f"audit log intact: {check.rows} rows, hash chain verified"
                   + (f" ({check.unlinked} of them unlinked from their recipient by an "
                      "erasure)" if check.unlinked else "")
                   + (", anchor held" if holds else "")
                   + (f"\nanchor (keep it outside the store): {printed}" if printed else ""))
    if check.first_broken is not None or holds is False:
        sys.exit(EXIT_REFUSED)


COMMANDS = [audit]
