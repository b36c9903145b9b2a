"""`gateway retention`: purge what R4 says has expired (serve also does it daily)."""

from __future__ import annotations

import click

from gateway.cli import CliState, hasher_for, print_json, run
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
    again.

    \b
    Then what names an address the ledger does not hold (never did: R2 quarantined, a
    transactional account's mail, a DSN; or no longer: purged while its copy was held or
    on its way) ends quarantine.retention_days after it was done with: decided quarantine
    rows (counted from when the copy was held), sent or failed copies and delivered or
    given-up notifications (from their last attempt), and the raw messages left without a
    copy; answered requests keep their dates under the keyed hash, without their note.
    --json's "removed" counts them as outside_quarantine, outside_copies,
    outside_notifications and outside_requests ("messages" counts both kinds)."""

    if dry_run and not state.settings.store.path.exists():  # a dry run makes no store
        click.echo(f"no store at {state.settings.store.path.absolute()}: nothing to purge",
                   err=True)
        if as_json:
            print_json({"dry_run": True, "purged": []})
        return

    async def body() -> Purge:
        async with Database(state.settings.store.path) as db:
            purger = Retention(db, state.settings.policy.knobs(), hasher_for(state.settings),
                               state.settings.quarantine.retention_days)
            if dry_run:
                return Purge([address for _, address in await purger.expired()])
            return await purger.purge()

    purged = run(body)
    if as_json:
        document: dict[str, object] = {"dry_run": dry_run, "purged": purged.addresses}
        if not dry_run:
            document["removed"] = purged.counts()
        print_json(document)
        return
    for address in purged.addresses:
        click.echo(("would purge " if dry_run else "purged ") + address)
    click.echo(f"{len(purged.addresses)} expired ledger entries "
               + ("would be purged (dry run)" if dry_run
                  else f"purged, with {purged.summary()}"))


COMMANDS = [retention]
