"""`gateway requests`: data-subject requests tracked to their legal due date."""

from __future__ import annotations

import datetime
import time

import click
from rich.table import Table

from gateway.cli import (
    ADDRESS,
    EXIT_USAGE,
    ROW_ID,
    CliState,
    fail,
    hasher_for,
    print_json,
    run,
    table_console,
    when,
)
from gateway.errors import Refused
from gateway.store.db import Database
from gateway.store.ledger import Ledger
from gateway.store.requests import KINDS, RequestStore, one_month_later


@click.group()
def requests() -> None:
    """Access, erasure and objection requests: each is due one month after receipt
    (GDPR 12(3)); `serve` warns daily about those due within 7 days. An objection is applied
    as it is recorded (the address suppressed: R1), and its request closed."""


OLDEST_RECEIVED_DAYS = 2 * 365  # a request recorded late: the deadline is long gone anyway


@requests.command("open")
@click.argument("email", type=ADDRESS)
@click.option("--kind", type=click.Choice(KINDS), required=True,
              help="access (GDPR 15), erasure (GDPR 17) or objection (GDPR 21: applied at "
                   "once).")
@click.option("--received", type=click.DateTime(["%Y-%m-%d"]), metavar="YYYY-MM-DD",
              help="When the request was received (default: now); the month runs from it.")
@click.pass_obj
def open_(state: CliState, email: str, kind: str, received: datetime.datetime | None) -> None:
    """Record a request received from EMAIL. An objection to prospecting is absolute and
    honoured at once (GDPR 21(3)): EMAIL is suppressed now (R1 for every gateway process,
    the accounts' notify URLs told) and the request recorded as answered."""
    stamp = received.replace(tzinfo=datetime.UTC).timestamp() if received else None
    if stamp is not None and stamp > time.time() + 86400:
        # a typo (2062 for 2026) would put the GDPR 12(3) deadline years away
        fail(f"--received {received:%Y-%m-%d} is in the future", EXIT_USAGE)
    if stamp is not None and stamp < time.time() - OLDEST_RECEIVED_DAYS * 86400:
        # a typo the other way (0026 for 2026): a request "received" centuries ago, overdue
        # at once, its due date unprintable
        fail(f"--received {received:%Y-%m-%d} is more than {OLDEST_RECEIVED_DAYS // 365} "
             "years ago: a typo?", EXIT_USAGE)

    async def body() -> None:
        async with Database(state.settings.store.path) as db:
            answered = None
            try:
                if kind == "objection":  # before the request's row: the objection first
                    added = await Ledger(db, hasher_for(state.settings)).suppress(
                        email, "manual", reason="objection request",
                        person=True)
                    answered = ("applied when recorded: suppressed (R1)" if added else
                                "applied when recorded: the address was suppressed already")
                request = await RequestStore(db).open(email, kind, stamp, answered)
            except ValueError as exc:
                raise Refused(str(exc)) from None
        if answered is not None:
            click.echo(f"request {request.id} (objection) for {request.address}: "
                       f"{answered}; the request is closed")
            return
        click.echo(f"request {request.id} ({kind}) for {request.address} opened; due "
                   f"{when(request.due_at)}")

    run(body)


@requests.command("list")
@click.option("--due-within", "days", type=click.FloatRange(min=0),
              help="Only requests due within this many days (overdue ones included).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def list_(state: CliState, days: float | None, as_json: bool) -> None:
    """Open requests, the most urgent first."""

    async def body() -> None:
        async with Database(state.settings.store.path) as db:
            due_before = time.time() + days * 86400 if days is not None else None
            found = await RequestStore(db).open_requests(due_before)
        if as_json:
            print_json([r.as_json() for r in found])
            return
        table = Table(title=f"{len(found)} open requests")
        for column in ("id", "kind", "address", "received", "due"):
            table.add_column(column, overflow="fold")  # wrapped, never cut with "…"
        now = time.time()
        for r in found:
            due = when(r.due_at) + ("  OVERDUE" if r.due_at < now else "")
            table.add_row(str(r.id), r.kind, r.address, when(r.received_at), due)
        table_console().print(table)

    run(body)


@requests.command()
@click.argument("request_id", type=ROW_ID)
@click.option("--note", help="How it was answered (kept with the request).")
@click.pass_obj
def close(state: CliState, request_id: int, note: str | None) -> None:
    """Mark REQUEST_ID answered. An objection still open (recorded before objections were
    applied as they were recorded) is applied first: its address suppressed."""

    async def body() -> None:
        async with Database(state.settings.store.path) as db:
            store = RequestStore(db)
            request = await store.get(request_id)
            if request.kind == "objection" and request.closed_at is None:
                if await Ledger(db, hasher_for(state.settings)).suppress(
                        request.address, "manual", reason="objection request",
                        person=True):
                    click.echo(f"{request.address} suppressed (R1): the objection applied")
            await store.close(request_id, note)
        click.echo(f"request {request_id} closed")

    run(body)


@requests.command()
@click.argument("request_id", type=ROW_ID)
@click.option("--reason", required=True,
              help="Why more time is needed (the complexity or number of requests); kept.")
@click.pass_obj
def extend(state: CliState, request_id: int, reason: str) -> None:
    """Extend REQUEST_ID by two further months (GDPR 12(3)): once, within its first month;
    the person must be told, with the reason, before that month ends."""

    async def body() -> None:
        async with Database(state.settings.store.path) as db:
            request = await RequestStore(db).extend(request_id, reason)
        told_by = when(one_month_later(request.received_at))
        click.echo(f"request {request_id} ({request.kind}) extended: due {when(request.due_at)}"
                   f"; tell {request.address} why before {told_by}")

    run(body)


COMMANDS = [requests]
