"""`gateway check`: what the gateway would decide now for one recipient, by the same code."""

from __future__ import annotations

import click

from gateway.addresses import normalize_address
from gateway.cli import EXIT_USAGE, CliState, fail, hasher_for, print_json, run
from gateway.flow import Decider
from gateway.model import Decision
from gateway.policy.message import m1_from_domain
from gateway.store.accounts import AccountStore
from gateway.store.db import Database
from gateway.store.ledger import LedgerLookup


@click.command()
@click.option("--account", "account_name", required=True, help="The sending account.")
@click.option("--to", "recipient", required=True, help="The recipient address.")
@click.option("--from", "sender", help="Envelope sender, checked against the account (M1).")
@click.option("--json", "as_json", is_flag=True,
              help='{"decision": ..., "rule": ..., "reason": ..., "basis": ...}')
@click.pass_obj
def check(state: CliState, account_name: str, recipient: str, sender: str | None,
          as_json: bool) -> None:
    """The decision (allow, reject, quarantine), rule id and reason the gateway would give
    for mail from ACCOUNT to the recipient right now, through the same lookup and rule chain
    as RCPT TO. Exit code 0 whatever the decision; 1 for an unknown account."""
    settings = state.settings
    try:  # what RCPT TO refuses with 501 gets no decision here either
        normalize_address(recipient)
    except ValueError as exc:
        fail(f"--to: {exc}", EXIT_USAGE)

    async def body() -> Decision:
        async with Database(settings.store.path) as db:
            account = await AccountStore(db).require(account_name)
        if sender is not None:
            # the envelope sender, as MAIL FROM is checked (replies.SENDER_NOT_ALLOWED):
            # "From header" named what --from is not (ops review)
            refusal = m1_from_domain(
                [sender.rpartition("@")[2]],
                None if account.may_send_from(sender.rpartition("@")[2]) else
                "Sender address not allowed for this account",
                may_send_from=account.may_send_from)
            if refusal is not None:
                return refusal
        lookup = LedgerLookup(settings.store.path, hasher_for(settings))
        try:
            _facts, decision = await Decider(lookup, settings.policy.knobs()).decide(
                account, recipient)
        finally:
            await lookup.close()
        return decision

    decision = run(body)
    if as_json:
        print_json({**decision.as_json(), "account": account_name, "recipient": recipient})
    else:
        click.echo(f"{decision.decision} {decision.rule}: {decision.reason}\n"
                   f"  basis: {decision.basis}")


COMMANDS = [check]
