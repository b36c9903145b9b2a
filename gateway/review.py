"""Operators' decisions on held copies: release (checked again first) or reject.

A release re-evaluates the recipient through the same chain as RCPT, with only the rule that
held the copy overridden: an objection made since (R1), a source now forbidden (R3) or an
expired retention (R4) is never released. A released copy is queued like any allowed copy,
so it leaves with its own unsubscribe fields, the notice and DKIM (gateway/compose.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from gateway.errors import Refused
from gateway.flow import campaign_of, from_header, narrowed_campaign
from gateway.model import PolicyKnobs, Verdict
from gateway.policy import chain
from gateway.policy.message import m1_from_domain
from gateway.store.accounts import AccountStore
from gateway.store.ledger import LedgerLookup, ledger_form
from gateway.store.quarantine import QuarantineEntry, QuarantineStore

# A message rule cannot be overridden: the copy could not carry the notice (M3), or adding it
# would break a signature or a structure we cannot rewrite (M2).
NOT_RELEASABLE = {"M2": "a notice would break it or it cannot be rewritten safely",
                  "M3": "it has no subject or no text part for the mandatory notice"}


@dataclass(frozen=True)
class Released:
    entry: QuarantineEntry
    delivery_id: int
    rule: str


class Review:
    def __init__(self, quarantine: QuarantineStore, accounts: AccountStore,
                 lookup: LedgerLookup, knobs: PolicyKnobs) -> None:
        self.quarantine = quarantine
        self.accounts = accounts
        self.lookup = lookup
        self.knobs = knobs

    async def release(self, entry_id: int, operator: str, reason: str | None) -> Released:
        """Refused (with the rule and why) when the copy may not go now."""
        entry = await self.quarantine.get(entry_id)
        if entry.state != "held":
            raise Refused(f"quarantine entry {entry_id} was already {entry.state}")
        if entry.rule in NOT_RELEASABLE:
            raise Refused(f"quarantine entry {entry_id} ({entry.rule}) cannot be released: "
                          f"{NOT_RELEASABLE[entry.rule]}; reject it")
        account = await self.accounts.get(entry.account or "")
        if account is None:
            raise Refused(f"quarantine entry {entry_id}: account {entry.account} no longer "
                          "exists")
        # M1 again: the account's domains may have changed since the hold (as at MAIL FROM
        # and DATA: the envelope sender, then the From header)
        content = await self.quarantine.content(entry)
        sender_domain = entry.mail_from.rpartition("@")[2].lower().rstrip(".")
        m1 = m1_from_domain(*from_header(content or b""),
                            may_send_from=account.may_send_from)
        if not account.may_send_from(sender_domain) or m1 is not None:
            raise Refused(f"quarantine entry {entry_id} cannot be released: M1 the sender "
                          f"<{entry.mail_from}> or the From header is not among account "
                          f"{account.name}'s domains now")
        facts = await self.lookup.facts(entry.recipient)
        if entry.rule == "R2" and facts.contact is None:
            # overridden, R2 let a copy go with nothing known of the person: no source to
            # name, no basis, a notice saying "professional context" to anyone
            raise Refused(f"quarantine entry {entry_id} cannot be released: R2 "
                          f"{entry.recipient} is still not in the contact ledger; import it "
                          "with its source (gateway contacts import), then release")
        # as narrowed at DATA by the message's own X-Gateway-* headers, never wider
        campaign = narrowed_campaign(account, (entry.steering_topics, entry.steering_products)
                                     ) or campaign_of(account)
        decision = chain.decide(facts, campaign, self.knobs, time.time(), override=entry.rule)
        if decision.verdict is not Verdict.ALLOW:
            raise Refused(f"quarantine entry {entry_id} cannot be released: {decision.rule} "
                          f"{decision.reason}")
        contact_id = facts.contact.id if facts.contact else None
        delivery_id = await self.quarantine.release(
            entry, contact_id, decision.rule, operator, reason,
            self.lookup.hasher(ledger_form(entry.recipient)))
        return Released(entry, delivery_id, decision.rule)

    async def reject(self, entry_id: int, operator: str, reason: str | None) -> QuarantineEntry:
        entry = await self.quarantine.get(entry_id)
        if entry.state != "held":
            raise Refused(f"quarantine entry {entry_id} was already {entry.state}")
        await self.quarantine.reject(entry, operator, reason,
                                     self.lookup.hasher(ledger_form(entry.recipient)))
        return entry
