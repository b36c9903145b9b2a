"""`gateway queue`: inspect and steer the durable delivery queue."""

from __future__ import annotations

import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import click
from rich.table import Table

from gateway.cli import (
    EXIT_REFUSED,
    ROW_ID,
    CliState,
    hasher_for,
    operator_name,
    print_json,
    run,
    table_console,
    when,
)
from gateway.errors import NotFound, Refused
from gateway.store.db import Database
from gateway.store.ledger import ledger_form
from gateway.store.queue import QueueStore


@asynccontextmanager
async def open_queue(state: CliState) -> AsyncIterator[QueueStore]:
    async with Database(state.settings.store.path) as db:
        yield QueueStore(db, instance_id="cli")


def _when(ts: float) -> str:
    return when(ts, seconds=True)


TABLE_ROWS = 1000  # entries in the table unless --limit says otherwise


@click.group()
def queue() -> None:
    """The durable delivery queue: one entry per recipient copy."""


@queue.command("list")
@click.option("--failed", is_flag=True, help="Only copies that failed permanently.")
@click.option("--all", "show_all", is_flag=True, help="Include copies already sent.")
@click.option("--limit", type=ROW_ID,
              help=f"At most this many entries, those to send first (default: {TABLE_ROWS} "
                   "in the table, all with --json).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def list_(state: CliState, failed: bool, show_all: bool, limit: int | None,
          as_json: bool) -> None:
    """Copies waiting (queued, deferred), oldest first, then those failed (or sent, with
    --all), newest first."""
    states: tuple[str, ...] = ("failed",) if failed else (
        ("queued", "deferred", "failed", "sent") if show_all else ("queued", "deferred", "failed"))

    async def body() -> None:
        # a script counting the backlog or retrying every failure got 1,000 silently
        shown = limit or (None if as_json else TABLE_ROWS)
        async with open_queue(state) as q:
            entries = await q.list(states, limit=-1 if shown is None else shown + 1)
        more = shown is not None and len(entries) > shown
        entries = entries[:shown]
        if more:  # said on stderr: the JSON on stdout stays a plain list
            click.echo(f"only {shown} queue entries are shown (those to send first, then "
                       "the newest finished): there are more (--limit)", err=True)
        if as_json:
            print_json([e.as_json() for e in entries])
            return
        table = Table(title=f"{'first ' if more else ''}{len(entries)} queue entries")
        for column in ("id", "queue id", "from", "recipient", "state", "attempts", "next try",
                       "last error"):
            table.add_column(column, overflow="fold")  # wrapped, never cut with "…"
        for e in entries:
            table.add_row(str(e.id), e.message_id, e.mail_from or "<>", e.recipient, e.state,
                          str(e.attempts),
                          _when(e.next_attempt_at) if e.state == "deferred" else "",
                          (e.last_error or "")[:80])
        table_console().print(table)

    run(body)


class QueueRef(click.ParamType):  # type: ignore[type-arg]
    """A queue entry's id (`queue list`'s id column), or a message's queue id (what the
    250 after DATA named, `queue list`'s "queue id"): every copy of that message."""

    name = "ID"

    def convert(self, value: object, param: click.Parameter | None,
                ctx: click.Context | None) -> int | str:
        text = str(value).strip()
        if QUEUE_ID.fullmatch(text):
            return text.upper()
        if not text.isdigit():  # ROW_ID said "'ZZZ' is not a valid integer range"
            self.fail(f"{text!r} is neither a queue entry's id (a number, `queue list`'s id "
                      "column) nor a queue id (16 hex digits, as the 250 after DATA named it)",
                      param, ctx)
        return ROW_ID.convert(text, param, ctx)  # type: ignore[no-any-return]


QUEUE_ID = re.compile(r"[0-9A-Fa-f]{16}")
QUEUE_REF = QueueRef()
REF_HELP = ("ID is a queue entry's id (the id column of `queue list`), or a queue id as the "
            "250 after DATA named it: then every copy of that message not sent yet.")


async def _entries(q: QueueStore, ref: int | str) -> tuple[int, ...]:
    return (ref,) if isinstance(ref, int) else await q.copies_of(ref)


def _each(state: CliState, ref: int | str, what: str,
          act: Callable[[QueueStore, int], Awaitable[None]]) -> None:
    """`act` on each entry `ref` names; a refusal of one is said and the others still done
    (exit 1 if any was refused)."""

    async def body() -> bool:
        refused = False
        async with open_queue(state) as q:
            await q.release_dead(by_pid_only=True)  # a crashed gateway's claims
            for entry_id in await _entries(q, ref):
                try:
                    await act(q, entry_id)
                except (NotFound, Refused) as exc:
                    click.echo(f"gateway: {exc}", err=True)
                    refused = True
                    continue
                click.echo(f"queue entry {entry_id} {what}")
        return refused

    if run(body):
        sys.exit(EXIT_REFUSED)


@queue.command(epilog=REF_HELP)
@click.argument("ref", metavar="ID", type=QUEUE_REF)
@click.pass_obj
def retry(state: CliState, ref: int | str) -> None:
    """Try ID again now (deferred, or failed while its content is still kept)."""
    _each(state, ref, "will be retried now", lambda q, entry_id: q.retry(entry_id))


@queue.command()
@click.pass_obj
def flush(state: CliState) -> None:
    """Retry every deferred copy now (a running `serve` picks them up within a second)."""

    async def body() -> None:
        async with open_queue(state) as q:
            count = await q.flush()
        click.echo(f"{count} deferred copies made due now")

    run(body)


@queue.command(epilog=REF_HELP)
@click.argument("ref", metavar="ID", type=QUEUE_REF)
@click.option("--operator", help="Who deletes it, for the audit log (default: the OS user).")
@click.pass_obj
def delete(state: CliState, ref: int | str, operator: str | None) -> None:
    """Remove ID from the queue for good: it is neither delivered nor bounced. The deletion
    is recorded in the audit log (who, when, which recipient's copy), as an operator's
    rejection of a held copy is.

    Refused (exit 1) while a gateway process is delivering it: try again once it is sent,
    deferred or failed.
    """
    who = operator_name(operator)
    hasher = hasher_for(state.settings)

    async def act(q: QueueStore, entry_id: int) -> None:
        entry = await q.get(entry_id)
        await q.delete(entry_id, operator=who,
                       recipient_hash=hasher(ledger_form(entry.recipient)))

    _each(state, ref, f"deleted (recorded in the audit log as {who}'s)", act)


COMMANDS = [queue]
