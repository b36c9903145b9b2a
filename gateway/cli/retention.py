"""`gateway retention`: purge what R4 says has expired (serve also does it daily)."""

from __future__ import annotations

import click

from gateway.cli import CliState, print_json, run
from gateway.store.db import Database
from gateway.store.retention import Retention


@click.group()
def retention() -> None:
    """Retention of the contact ledger (R4: 3 years from the person's last own action)."""


@retention.command("run")
@click.option("--dry-run", is_flag=True, help="Print what would be purged; purge nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def run_(state: CliState, dry_run: bool, as_json: bool) -> None:
    """Delete every ledger entry past its retention deadline, with its sources and events,
    and print each address. Suppression hashes and the audit log are kept."""

    async def body() -> list[str]:
        async with Database(state.settings.store.path) as db:
            purger = Retention(db, state.settings.policy.knobs())
            if dry_run:
                return [address for _, address in await purger.expired()]
            return await purger.purge()

    addresses = run(body)
    if as_json:
        print_json({"dry_run": dry_run, "purged": addresses})
        return
    for address in addresses:
        click.echo(("would purge " if dry_run else "purged ") + address)
    click.echo(f"{len(addresses)} expired ledger entries "
               + ("would be purged (dry run)" if dry_run else "purged"))


COMMANDS = [retention]
