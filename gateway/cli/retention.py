"""`gateway retention`: purge what R4 says has expired (serve also does it daily)."""

from __future__ import annotations

import click

from gateway.cli import CliState, print_json, run
from gateway.store.db import Database
from gateway.store.retention import Purge, Retention


@click.group()
def retention() -> None:
    """Retention of the contact ledger (R4: 3 years from the person's last own action)."""


@retention.command("run")
@click.option("--dry-run", is_flag=True, help="Print what would be purged; purge nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def run_(state: CliState, dry_run: bool, as_json: bool) -> None:
    """Delete every ledger entry past its retention deadline, with its sources and events,
    and print each address. The records naming those addresses that are done with go too:
    their sent or failed copies, decided quarantine rows, delivered objection notifications
    and the raw messages left without a copy. Suppression hashes and the audit log (keyed
    hashes only) are kept. Their copies still queued or deferred are withdrawn (no DSN,
    which would name the address again); copies held for review stay, and a release decides
    again."""

    if dry_run and not state.settings.store.path.exists():  # a dry run makes no store
        click.echo(f"no store at {state.settings.store.path.absolute()}: nothing to purge",
                   err=True)
        if as_json:
            print_json({"dry_run": True, "purged": []})
        return

    async def body() -> Purge:
        async with Database(state.settings.store.path) as db:
            purger = Retention(db, state.settings.policy.knobs())
            if dry_run:
                return Purge([address for _, address in await purger.expired()])
            return await purger.purge()

    purged = run(body)
    if as_json:
        document: dict[str, object] = {"dry_run": dry_run, "purged": purged.addresses}
        if not dry_run:
            document["removed"] = {"copies": 0, "waiting": 0, "quarantine": 0, "notifications": 0,
                                   "messages": 0, "requests": 0, **purged.removed}
        print_json(document)
        return
    for address in purged.addresses:
        click.echo(("would purge " if dry_run else "purged ") + address)
    click.echo(f"{len(purged.addresses)} expired ledger entries "
               + ("would be purged (dry run)" if dry_run
                  else f"purged, with {purged.summary()}"))


COMMANDS = [retention]
