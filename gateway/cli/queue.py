"""`gateway queue`: inspect and steer the durable delivery queue."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import click
from rich.table import Table

from gateway.cli import (
    ROW_ID,
    CliState,
    hasher_for,
    operator_name,
    print_json,
    run,
    table_console,
    when,
)
from gateway.store.db import Database
from gateway.store.ledger import ledger_form
from gateway.store.queue import QueueStore


@asynccontextmanager
async def open_queue(state: CliState) -> AsyncIterator[QueueStore]:
    async with Database(state.settings.store.path) as db:
        yield QueueStore(db, instance_id="cli")


def _when(ts: float) -> str:
    return when(ts, seconds=True)


@click.group()
def queue() -> None:
    """The durable delivery queue: one entry per recipient copy."""


@queue.command("list")
@click.option("--failed", is_flag=True, help="Only copies that failed permanently.")
@click.option("--all", "show_all", is_flag=True, help="Include copies already sent.")
@click.option("--limit", type=ROW_ID, default=1000, show_default=True,
              help="Show at most this many entries (those to send first).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def list_(state: CliState, failed: bool, show_all: bool, limit: int, as_json: bool) -> None:
    """Copies waiting (queued, deferred), oldest first, then those failed (or sent, with
    --all), newest first."""
    states: tuple[str, ...] = ("failed",) if failed else (
        ("queued", "deferred", "failed", "sent") if show_all else ("queued", "deferred", "failed"))

    async def body() -> None:
        async with open_queue(state) as q:
            entries = await q.list(states, limit=limit + 1)
        more = len(entries) > limit
        entries = entries[:limit]
        if more:  # said on stderr: the JSON on stdout stays a plain list
            click.echo(f"only {limit} queue entries are shown (those to send first, then "
                       "the newest finished): there are more (--limit)", err=True)
        if as_json:
            print_json([e.as_json() for e in entries])
            return
        table = Table(title=f"{'first ' if more else ''}{len(entries)} queue entries")
        for column in ("id", "queue id", "from", "recipient", "state", "attempts", "next try",
                       "last error"):
            table.add_column(column)
        for e in entries:
            table.add_row(str(e.id), e.message_id, e.mail_from or "<>", e.recipient, e.state,
                          str(e.attempts),
                          _when(e.next_attempt_at) if e.state == "deferred" else "",
                          (e.last_error or "")[:80])
        table_console().print(table)

    run(body)


@queue.command()
@click.argument("entry_id", type=ROW_ID)
@click.pass_obj
def retry(state: CliState, entry_id: int) -> None:
    """Try ENTRY_ID again now (deferred, or failed while its content is still kept)."""

    async def body() -> None:
        async with open_queue(state) as q:
            await q.release_dead(by_pid_only=True)  # a crashed gateway's claims
            await q.retry(entry_id)
        click.echo(f"queue entry {entry_id} will be retried now")

    run(body)


@queue.command()
@click.pass_obj
def flush(state: CliState) -> None:
    """Retry every deferred copy now (a running `serve` picks them up within a second)."""

    async def body() -> None:
        async with open_queue(state) as q:
            count = await q.flush()
        click.echo(f"{count} deferred copies made due now")

    run(body)


@queue.command()
@click.argument("entry_id", type=ROW_ID)
@click.option("--operator", help="Who deletes it, for the audit log (default: the OS user).")
@click.pass_obj
def delete(state: CliState, entry_id: int, operator: str | None) -> None:
    """Remove ENTRY_ID from the queue for good: it is neither delivered nor bounced. The
    deletion is recorded in the audit log (who, when, which recipient's copy), as an
    operator's rejection of a held copy is.

    Refused (exit 1) while a gateway process is delivering it: try again once it is sent,
    deferred or failed.
    """
    who = operator_name(operator)
    hasher = hasher_for(state.settings)

    async def body() -> None:
        async with open_queue(state) as q:
            await q.release_dead(by_pid_only=True)  # a crashed gateway's claims
            entry = await q.get(entry_id)
            await q.delete(entry_id, operator=who,
                           recipient_hash=hasher(ledger_form(entry.recipient)))
        click.echo(f"queue entry {entry_id} deleted (recorded in the audit log as {who}'s)")

    run(body)


COMMANDS = [queue]
