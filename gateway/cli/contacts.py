"""`gateway contacts`: load the contact ledger from CSV, and show what it holds on an address."""

from __future__ import annotations

import asyncio
import secrets
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table

from gateway.cli import (
    ADDRESS,
    EXIT_OK,
    EXIT_REFUSED,
    CliState,
    hasher_for,
    print_json,
    run,
    table_console,
    when,
)
from gateway.contacts_csv import (
    COLUMNS,
    ContactRow,
    HeaderError,
    LateWithdrawal,
    RowError,
    read_rows,
)
from gateway.errors import ConfigError, GatewayError, NotFound
from gateway.model import Contact, PolicyKnobs
from gateway.notice_templates import load_templates
from gateway.policy.rules import retention_deadline
from gateway.security.keys import AddressHasher
from gateway.settings import ControllerSettings
from gateway.store.db import Database
from gateway.store.key_binding import holds_hashed_entries
from gateway.store.ledger import Ledger
from gateway.store.ledger_import import ImportProcess
from gateway.store.subject import erased_hashes
from gateway.text import printable
from gateway.transform.notice import choose, find_template

CHUNK_ROWS = 5000
IMPORT_HELP = f"""Upsert the ledger from FILE (CSV with a header row, UTF-8).

\b
Columns (only email is required; unknown columns are an error):
  {", ".join(COLUMNS[:8])},
  {", ".join(COLUMNS[8:15])},
  {", ".join(COLUMNS[15:])}

Each bad row is reported on stderr as FILE:LINE: reason, and the other rows import. An empty
cell keeps what the ledger had. A re-import never restarts the retention clock: collected_at
only moves earlier, last_interaction_at only later. consent=withdrawn puts the address on the
suppression list. A consent_method that names a pre-ticked box, a default, an opt-out or the
terms and conditions (T&C, CGU, CGV), a consent implied or tacit, browsing on, an automatic
opt-in, or only silence, inactivity or a privacy policy accepted is not consent (GDPR
recital 32): such contacts are decided without it. A social_network source needs its
source_visibility (public or restricted): without it, as restricted, R3 refuses the address.
An address erased by `gateway subject erase` is refused: erased data
stays erased. A row already past its retention period by its own dates (R4: collected_at,
the person's last action or consent, policy.prospect_retention_days) is named on stderr: it
will be refused and purged, and should not have been kept. Exit code 1 when any row was
refused.
"""


@click.group()
def contacts() -> None:
    """The contact ledger: what you know about each recipient, and how you know it."""


def _lines(raw: BinaryIO, progress: Progress | None, task: TaskID | None) -> Iterator[str]:
    """Decoded lines of the file, streamed; undecodable bytes become surrogates (reported per
    row by the reader)."""
    first = True
    for line in raw:
        if first:
            line = line.removeprefix(b"\xef\xbb\xbf")  # a BOM from spreadsheet exports
            first = False
        if progress is not None and task is not None:
            progress.advance(task, len(line))
        yield line.decode("utf-8", "surrogateescape")


@contacts.command("import", help=IMPORT_HELP)
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Check every row and count; write nothing.")
@click.pass_obj
def import_(state: CliState, file: Path, dry_run: bool) -> None:
    settings = state.settings
    with tempfile.TemporaryDirectory(prefix="gateway-dry-run-") as scratch:
        store = Path(settings.store.path)
        if dry_run and not store.exists():
            # no ledger yet: the rows are checked against an empty one in a scratch store, so
            # that a dry run creates nothing where the store and its key would be
            store = Path(scratch) / "gateway.db"
        if dry_run and not Path(settings.hash_key_path).exists() \
                and not holds_hashed_entries(store):
            hasher = AddressHasher(secrets.token_bytes(32))  # never written anywhere
            # (a store keyed already and its key missing: refused as the import is, exit 2)
        else:
            hasher = hasher_for(settings)
        _import(file, store, hasher, dry_run, settings.controller, settings.policy.knobs())


def _untranslated(languages: Counter[str], controller: ControllerSettings) -> str | None:
    """A note naming the rows' languages that have no notice template (their copies get the
    default language's: information "in a language the person understands", KASPR), or
    None. A bad notices_dir is for `serve` to report."""
    try:
        templates = load_templates(controller.notices_dir)
    except (ConfigError, OSError):
        return None
    missing = Counter({lang: n for lang, n in languages.items()
                       if find_template(templates, lang) is None})
    if not missing:
        return None
    shown = ", ".join(f"{lang}: {n}" for lang, n in missing.most_common(8))
    return (f"note: {missing.total()} contacts have a language with no notice template "
            f"({shown}{', ...' if len(missing) > 8 else ''}): their notices will be in "
            f"{choose(templates, None, controller.default_language).language} (the default "
            "language's, else English); add templates under controller.notices_dir")


MAX_PAST_SHOWN = 20  # rows past their retention named one by one; the rest counted


def _expired_by_its_own_dates(row: ContactRow, knobs: PolicyKnobs, now: float) -> str | None:
    """What to tell of a row already past R4's deadline by its own dates (collected, the
    person's last action, a consent they gave): its data would be kept only to be refused
    and purged (GDPR 5-1-e; KASPR kept such data). None otherwise, and for a withdrawal
    (its objection holds whatever the dates)."""
    if row.collected_at is None or row.consent == "withdrawn":
        return None
    deadline = retention_deadline(Contact(
        row.address, consent=row.consent, consent_at=row.consent_at,
        consent_method=row.consent_method, collected_at=row.collected_at,
        last_interaction_at=row.last_interaction_at), knobs)
    if deadline is None or deadline >= now:
        return None
    return (f"{row.address}: its retention period ended on {when(deadline)} by the row's own "
            f"dates (collected {when(row.collected_at)}, the person's last action "
            f"{when(row.last_interaction_at) if row.last_interaction_at else 'none'}): "
            "refused at RCPT (R4) and purged by the next `gateway retention run`")


def _import(file: Path, store: Path, hasher: AddressHasher, dry_run: bool,
            controller: ControllerSettings, knobs: PolicyKnobs) -> None:
    try:
        erased = asyncio.run(_prepare(store))
        importer = ImportProcess(store, hasher, dry_run=dry_run)
    except GatewayError as exc:
        click.echo(f"gateway: {exc}", err=True)
        sys.exit(EXIT_REFUSED)
    refused = past = restricted = 0
    started = time.monotonic()
    started_at = time.time()
    tty = sys.stderr.isatty()
    progress = Progress(TextColumn("importing"), BarColumn(),
                        TextColumn("{task.percentage:>3.0f}%"), TimeRemainingColumn(),
                        console=Console(stderr=True), transient=True, disable=not tty)
    try:
        with progress, file.open("rb") as raw:
            task = progress.add_task("import", total=file.stat().st_size)
            chunk: list[ContactRow] = []
            languages: Counter[str] = Counter()
            late = False
            for item in read_rows(_lines(raw, progress if tty else None, task), time.time()):
                if isinstance(item, LateWithdrawal):
                    if not late and chunk:  # their addresses are in the chunks before
                        importer.submit(chunk)
                        chunk = []
                    late, item = True, item.row
                    if erased and hasher(item.address) in erased:
                        continue  # said at its first row; the erasure keeps it suppressed
                elif isinstance(item, RowError):
                    refused += 1
                    progress.console.print(f"{file}:{item.line}: {item.reason}",
                                           markup=False, highlight=False, soft_wrap=True)
                    continue
                if erased and (when_erased := erased.get(hasher(item.address))):
                    refused += 1
                    progress.console.print(
                        f"{file}:{item.line}: {item.address} was erased on "
                        f"{when(when_erased)} at the person's request (GDPR 17); not imported",
                        markup=False, highlight=False, soft_wrap=True)
                    continue
                if (expired := _expired_by_its_own_dates(item, knobs, started_at)) is not None:
                    past += 1
                    if past <= MAX_PAST_SHOWN:
                        progress.console.print(f"{file}:{item.line}: note: {expired}",
                                               markup=False, highlight=False, soft_wrap=True)
                if item.source_type == "social_network" and item.source_visibility != "public":
                    restricted += 1
                chunk.append(item)
                if item.language:
                    languages[item.language] += 1
                if len(chunk) >= CHUNK_ROWS:
                    importer.submit(chunk, late)
                    chunk = []
            if chunk:
                importer.submit(chunk, late)
            c = importer.finish()
    except HeaderError as exc:
        importer.finish()
        click.echo(f"{file}:1: {exc}; nothing imported", err=True)
        sys.exit(EXIT_REFUSED)
    except GatewayError as exc:
        click.echo(f"gateway: {exc}", err=True)
        sys.exit(EXIT_REFUSED)
    seconds = time.monotonic() - started
    verb = "would import" if dry_run else "imported"
    rows = c.new + c.updated
    click.echo(f"{file}: {verb} {rows} row{'' if rows == 1 else 's'} ({c.new} new, "
               f"{c.updated} updated), "
               f"{refused} refused, "
               + (f"{c.late} withdrawal{'s' if c.late > 1 else ''} of consent from refused "
                  f"rows {'would be ' if dry_run else ''}applied, " if c.late else "")
               + f"{c.suppressed} newly suppressed, in {seconds:.1f} s"
               + (f"; {c.clock_kept} new contacts were purged by the retention rule before: "
                  "their retention clock goes on from the purged entry's, not from this file"
                  if c.clock_kept else "")
               + (" - dry run, nothing written" if dry_run else ""))
    if past:
        click.echo(f"note: {past} row{'s are' if past > 1 else ' is'} past the retention "
                   f"period by {'their' if past > 1 else 'its'} own dates"
                   + (f" (the first {MAX_PAST_SHOWN} named above)" if past > MAX_PAST_SHOWN
                      else "")
                   + ": such data may not be kept (GDPR 5-1-e); `gateway retention run` "
                   "purges it", err=True)
    if restricted:
        # KASPR was fined for collecting what owners had restricted to their contacts: R3
        # refuses the mail, but the data is held all the same
        click.echo(f"note: {restricted} row{'s come' if restricted > 1 else ' comes'} from a "
                   "social network whose owner restricted who may see the address, or with "
                   "no visibility recorded: R3 refuses mail to them, and such data may not be "
                   "collected at all (KASPR); remove it (`gateway subject erase`)", err=True)
    note = _untranslated(languages, controller)
    if note:
        click.echo(note, err=True)
    sys.exit(EXIT_REFUSED if refused else EXIT_OK)


async def _prepare(path: Path) -> dict[bytes, float]:
    """Migrate the store before the writer process opens it; the erased addresses' hashes."""
    async with Database(path) as db:
        return await erased_hashes(db)


@contacts.command()
@click.argument("email", type=ADDRESS)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def show(state: CliState, email: str, as_json: bool) -> None:
    """Every fact, source and event the ledger holds on EMAIL, and its suppression state."""

    async def body() -> None:
        async with Database(state.settings.store.path) as db:
            ledger = Ledger(db, hasher_for(state.settings))
            try:
                contact = await ledger.contact(email)
                suppressed = await ledger.is_suppressed(email)
            except ValueError as exc:
                raise NotFound(f"not a valid address: {exc}") from None
            if contact is None and suppressed is None:
                raise NotFound(f"{email}: not in the ledger and not suppressed")
            events = await ledger.events(contact.id) if contact and contact.id else []
        facts: dict[str, object] = {}
        if contact is not None:
            facts = {k: v for k, v in vars(contact).items() if k not in ("sources", "id")}
            facts["topics"] = sorted(contact.topics)
            facts["customer_categories"] = sorted(contact.customer_categories)
        document = {
            "address": contact.address if contact else email,
            "in_ledger": contact is not None,
            "suppressed": None if suppressed is None else {
                "since": suppressed.created_at, "channel": suppressed.channel},
            "facts": facts,
            "sources": [vars(s) for s in contact.sources] if contact else [],
            "events": [e.as_json() for e in events],
        }
        if as_json:
            print_json(document)
            return
        console = table_console()
        console.print(f"{document['address']}")
        if suppressed is not None:
            console.print(f"  SUPPRESSED since {when(suppressed.created_at)} "
                          f"(channel: {suppressed.channel}) - every message is refused (R1)")
        if contact is None:
            console.print("  not in the ledger (R2: unknown recipients are refused)")
            return
        table = Table(show_header=False, box=None)
        for key, value in facts.items():
            if key.endswith("_at") and isinstance(value, float):
                value = when(value)
            elif isinstance(value, list):
                value = "; ".join(value)
            table.add_row(f"  {key}", "" if value is None else printable(str(value)))
        console.print(table)
        sources = Table(title="sources", title_justify="left")
        for column in ("name", "type", "visibility", "first recorded"):
            sources.add_column(column, overflow="fold")  # wrapped, never cut with "…"
        for s in contact.sources:
            sources.add_row(printable(s.name), s.type, s.visibility or "", when(s.recorded_at))
        console.print(sources)
        history = Table(title="events", title_justify="left")
        for column in ("when", "kind", "channel", "method", "proof / wording", "ip"):
            history.add_column(column, overflow="fold")  # wrapped, never cut with "…"
        for e in events:
            # a webhook's reason or a forwarded address came from outside: no escape
            # sequence of theirs reaches the operator's terminal
            history.add_row(when(e.occurred_at), e.kind, e.channel, printable(e.method or ""),
                            printable(e.proof or e.wording or ""), printable(e.ip or ""))
        console.print(history)

    run(body)


COMMANDS = [contacts]
