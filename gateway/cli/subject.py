"""`gateway subject`: answer an access request (GDPR 15) and erase an address (GDPR 17)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import click

from gateway.addresses import normalize_address
from gateway.cli import (
    ADDRESS,
    EXIT_REFUSED,
    CliState,
    fail,
    hasher_for,
    operator_name,
    run,
    when,
    write_private,
)
from gateway.errors import NotFound, Refused, StoreError
from gateway.model import PolicyKnobs
from gateway.notify import erasure_body, tell_erasure
from gateway.policy.rules import retention_deadline
from gateway.settings import ControllerSettings
from gateway.store.accounts import AccountStore
from gateway.store.db import Database
from gateway.store.subject import Erasure, SubjectRecord, SubjectStore
from gateway.subject_letter import LANGUAGES, render_text
from gateway.urls import shown_url


@click.group()
def subject() -> None:
    """Data-subject rights: what is held on an address, and its erasure."""


def export_document(record: SubjectRecord, controller: ControllerSettings,
                    knobs: PolicyKnobs) -> dict[str, object]:
    """The JSON form: one object holding every fact, event, source and message record."""
    ledger = []
    for contact, events in record.contacts:
        facts = {k: v for k, v in vars(contact).items() if k not in ("sources", "id")}
        facts["topics"] = sorted(contact.topics)
        facts["customer_categories"] = sorted(contact.customer_categories)
        facts["retention_deadline"] = retention_deadline(contact, knobs)
        facts["sources"] = [vars(s) for s in contact.sources]
        facts["events"] = [e.as_json() for e in events]
        ledger.append(facts)
    unsubscribes = [{"at": e["occurred_at"], "kind": e["kind"], "channel": e["channel"]}
                    for entry in ledger for e in entry["events"]
                    if e["kind"] in ("objection", "withdrawal", "objection_lifted")]
    decisions = [d.as_json() for d in record.decisions]
    return {
        # INTERFACE's words for the same records, flat: the first ledger entry's facts (an
        # address held under two spellings has two; `ledger` has each with its own), and
        # every source, event and message record of all of them
        "facts": ({k: v for k, v in ledger[0].items() if k not in ("sources", "events")}
                  if ledger else None),
        "sources": [source for entry in ledger for source in entry["sources"]],
        "events": [event for entry in ledger for event in entry["events"]],
        "messages": decisions,
        "address": record.address,
        "generated_at": time.time(),
        "controller": {"name": controller.name, "address": controller.address,
                       "privacy_url": controller.privacy_url, "dpo_email": controller.dpo_email},
        "ledger": ledger,
        "suppression": None if record.suppressed_at is None else {
            "since": record.suppressed_at, "channel": record.suppression_channel},
        "unsubscribes": unsubscribes,
        "decisions": decisions,
        "quarantine": [h.as_json() for h in record.quarantine],
        "requests": [r.as_json() for r in record.requests],
        "erasures": record.erased_at,
        "notifications": [n.as_json() for n in record.notifications],
        "retention_purges": [{"clock_start": start, "purged_at": at}
                             for start, at in record.retention_purges],
    }


EXPORT_HELP = """Everything held on EMAIL (GDPR 15): ledger facts, every source with its date and
visibility, consent / objection / interaction / information events with their proofs, every
decision about mail to it (date, account, subject, rule, outcome, notice version), held
copies with the reviewer's reason, unsubscribes, the accounts told of an objection, requests
with the operator's note and an extension's reason (GDPR 12(3); those left under the
address's hash too) and what R4's purge kept.

\b
--format json  one object (keys: address, generated_at, controller, ledger[] with sources[]
               and events[], suppression, unsubscribes[], decisions[], quarantine[],
               requests[], erasures[], notifications[], retention_purges[]; and, flat,
               facts (the first ledger entry's), sources[], events[], messages[] (the
               decisions))
--format text  a letter in the contact's language (de, en, es, fr, it; --language to choose),
               ready to send as the answer

With --out the file is written readable by the owner only. Exit 2 when EMAIL is not an
address. An address the store knows nothing about still gets its answer saying so
(GDPR 15), and the exit code is 1 (not found), as INTERFACE's exit codes have it.
"""


@subject.command(help=EXPORT_HELP)
@click.argument("email", type=ADDRESS)
@click.option("--format", "fmt", type=click.Choice(["json", "text"]), default="json",
              show_default=True,
              help="json: every record, for a program; text: the letter to the person.")
@click.option("--language", type=click.Choice(LANGUAGES),
              help="Language of the text form (default: the contact's, else "
                   "controller.default_language).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write to this file (mode 0600) instead of standard output.")
@click.pass_obj
def export(state: CliState, email: str, fmt: str, language: str | None,
           out: Path | None) -> None:
    settings = state.settings

    async def body() -> SubjectRecord:
        async with Database(settings.store.path) as db:
            try:
                return await SubjectStore(db, hasher_for(settings)).gather(email)
            except ValueError as exc:
                raise NotFound(f"not a valid address: {exc}") from None

    record = run(body)
    knobs = settings.policy.knobs()
    if fmt == "json":
        text = json.dumps(export_document(record, settings.controller, knobs), indent=2,
                          ensure_ascii=False) + "\n"
    else:
        text = render_text(record, settings.controller, knobs, language)
    if out is None:
        click.echo(text, nl=False)
    else:
        try:
            write_private(out, text)
        except OSError as exc:
            fail(f"cannot write {out}: {exc.strerror or exc}", EXIT_REFUSED)
        click.echo(f"export of {record.address} written to {out}", err=True)
    if not record.holds_anything:  # answered all the same (GDPR 15: whether data is held)
        fail(f"nothing is held on {record.address} (the answer saying so is written)",
             EXIT_REFUSED)


ERASE_HELP = """Erase each EMAIL (GDPR 17): its ledger entry with sources and events, its
queued, failed and sent copies, held copies, raw messages only for it, its objection
notifications, the opt-out webhook's event ids for it, and the address and notes of the
requests it made (kept with their dates, named by hash). The notify URL of each account that
may hold the address (it mailed or decided on it, or was told of its objection) is then told
at once (event "erasure", GDPR 19), after the objections of the address it had not been sent
yet; nothing naming the address is kept for a retry: an endpoint that fails is named, for
the operator to tell that tool. Other messages that name it (a DSN, another recipient's
queued copy) have it replaced by erased@erased.invalid where their bytes show it (a display
name before it in an address field goes too), as do other people's rows quoting it (a
reviewer's reason, a request's note, an upstream's error, a consent proof); one still naming
EMAIL inside an encoded part (base64, quoted-printable, an encoded word) is named in a
warning, with the held copies that keep it.

Kept: the suppression entry (a keyed hash; added if missing), so the next message to EMAIL
is refused by R1. The audit log keeps its rows about EMAIL (when, which account, which rule,
what outcome) with the recipient's hash blanked: they name no one, `subject export` no longer
finds them, and `audit verify` still checks the chain. Each erasure is recorded (hash, time,
operator, what was removed), and open requests from EMAIL are closed. An
address whose access request is still open is refused (answer it first) unless --unanswered.

The store is then compacted (VACUUM) once, so the addresses are absent from the database
file: writers wait meanwhile, about 3 s per million contacts; give several addresses to one
command to pay that once (when a running serve holds the WAL meanwhile, its housekeeping
empties it within minutes). Nothing is erased when any EMAIL is not an address. Log files
outside the store are not touched, nor mail already handed on: to the upstream, or to the
Maildir of delivery.mode = "maildir". Asks for confirmation on a terminal; --yes skips it.
"""


@subject.command(help=ERASE_HELP)
@click.argument("emails", metavar="EMAIL...", nargs=-1, required=True,
                type=ADDRESS)
@click.option("--operator", help="Who erases (default: the OS user).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--unanswered", is_flag=True,
              help="Erase even an address whose access request is still open (it is closed "
                   "unanswered; without this, refused: export first).")
@click.pass_obj
def erase(state: CliState, emails: tuple[str, ...], operator: str | None, yes: bool,
          unanswered: bool) -> None:
    settings = state.settings
    for email in emails:
        try:
            normalize_address(email)
        except ValueError as exc:
            fail(f"not a valid address, nothing erased: {exc}")
    if not yes and sys.stdin.isatty():
        click.confirm(f"Erase everything held on {', '.join(emails)}? This cannot be undone",
                      abort=True)
    who = operator_name(operator)

    async def body() -> None:
        async with Database(settings.store.path) as db:
            store = SubjectStore(db, hasher_for(settings))
            # GDPR 15: the person asked what is held first; erased, it can never be answered
            waiting = [(email, request_id, due) for email in emails
                       for request_id, due in await store.open_access_requests(email)]
            if waiting and not unanswered:
                raise Refused("nothing erased: " + "; ".join(
                    f"{email} has access request {request_id} open (due {when(due)})"
                    for email, request_id, due in waiting)
                    + ". Answer it first (gateway subject export EMAIL --format text --out "
                    "FILE, then gateway requests close ID), or erase with --unanswered")
            erasures = []
            for email in emails:
                erasures.append(await store.erase(email, who))
                report(erasures[-1])
            hooks = [(a.name, a.notify_url) for a in await AccountStore(db).list()
                     if a.notify_url]
            failed: StoreError | None = None
            try:
                emptied = await db.compact()  # first: a Ctrl-C in what follows skips nothing
                if not emptied:
                    await db.empty_wal_later()
                for email in emails:
                    warn_encoded(email, await store.encoded_mentions(email))
            except StoreError as exc:
                failed = exc
        if failed is None:
            click.echo(f"store compacted at {when(time.time())}" if emptied else
                       "store compacted, but a reader kept old pages in the WAL (the "
                       "erased rows among them): a running `gateway serve` empties it within "
                       "minutes; else it goes when the last process using the store ends")
        # the erasures are committed, and the objections they took from the outbox exist
        # only here now: told whatever the compaction did
        for erasure in erasures:
            await tell(erasure, hooks, settings.webhooks.notify_signing_secret)
        if failed is not None:
            raise failed

    run(body)


def warn_encoded(email: str, kept: list[tuple[str, list[int]]]) -> None:
    """The messages still naming `email` inside an encoded part: said, not hidden."""
    if not kept:
        return
    held = sorted({entry for _, entries in kept for entry in entries})
    click.echo(f"warning: {len(kept)} kept message(s) still name {email} inside an encoded "
               f"part (base64, quoted-printable, an encoded word), which the erasure cannot "
               f"rewrite: {', '.join(m for m, _ in kept)}"
               + (f"; held copies keeping them: {', '.join(map(str, held))} (see `gateway "
                  "quarantine show ID`; rejecting them deletes the content)" if held else
                  "; they go once their other copies are sent or fail"), err=True)


async def tell(erasure: Erasure, hooks: list[tuple[str, str]], secret: str) -> None:
    """GDPR 19: the notify URL of each account that may hold the address hears of the
    erasure now, after the objections of the address it had not heard of yet (nothing naming
    the address is kept to retry): all at once, TELL_SECONDS at most in all."""
    now = time.time()
    hooks = [(account, url) for account, url in hooks if account in erasure.holders]
    if hooks and not secret:
        click.echo("warning: webhooks.notify_secret and opt_out_secret are not set: the "
                   "erasure notices go out unsigned", err=True)
    plans = [(account, url, [body for name, body in erasure.unsent if name == account])
             for account, url in hooks]
    outcomes = await asyncio.gather(*(_told(url, [*bodies, erasure_body(erasure.address, now)],
                                            secret) for _, url, bodies in plans))
    for (account, url, bodies), error in zip(plans, outcomes, strict=True):
        if error is None:
            click.echo(f"{account} told at {shown_url(url)}: erasure"
                       + (f", after {len(bodies)} objection(s) it had not been sent"
                          if bodies else ""))
        else:
            click.echo(f"warning: {account} could not be told at {shown_url(url)} ({error}): "
                       f"tell that tool yourself that {erasure.address} was erased"
                       + (" and had objected" if bodies else ""), err=True)
    told = {account for account, _ in hooks}
    for account in sorted({name for name, _ in erasure.unsent} - told):
        click.echo(f"warning: {account} had an objection of {erasure.address} still to hear "
                   "of and has no notify URL now: tell that tool yourself", err=True)


TELL_SECONDS = 20.0


async def _told(url: str, bodies: list[str], secret: str) -> str | None:
    try:
        return await asyncio.wait_for(tell_erasure(url, bodies, secret), TELL_SECONDS)
    except TimeoutError:
        return f"no answer within {TELL_SECONDS:.0f} s"


def report(erasure: Erasure) -> None:
    removed = ", ".join(f"{table} {n}" for table, n in erasure.removed.items())
    click.echo(f"erased {erasure.address}: {removed}")
    click.echo("suppression entry " + ("added (channel erasure)" if erasure.newly_suppressed
                                       else "kept") + ": the next message to it is refused (R1)")
    for request_id in erasure.closed_requests:
        click.echo(f"request {request_id} closed by the erasure (see `gateway requests list`)")
    if erasure.being_delivered:
        click.echo(f"warning: {erasure.being_delivered} of the deleted copies were held by a "
                   "running gateway for delivery: one being sent right now may still reach "
                   f"{erasure.address} (the next ones are refused, R1)", err=True)


COMMANDS = [subject]
