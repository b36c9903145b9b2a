"""Each copy as it leaves: checked against objections again, personalised, signed last.

Runs in the delivery worker right before a copy is sent (the queue keeps one raw message for
all its copies): unsubscribe fields with the copy's own token, the notice in the recipient's
language, then DKIM. Mailman's order: personalise, decorate, sign last.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import gateway.smtp.replies as replies
from gateway.batch import GroupCommitter
from gateway.errors import PermanentFailure, StoreError, TemporaryFailure
from gateway.flow import from_header_domains
from gateway.model import Contact, PolicyKnobs, RecipientFacts
from gateway.policy.rules import retention_deadline
from gateway.security.tokens import Token, TokenKeys
from gateway.settings import ControllerSettings
from gateway.store.accounts import Account
from gateway.store.audit import AuditRecord
from gateway.store.ledger import Ledger, LedgerLookup
from gateway.store.queue import Copy, Prepared, SentMark
from gateway.transform.dkim import Signer, SigningError
from gateway.transform.footer import NoticeError, add_notice
from gateway.transform.headers import UnsafeHeader, trace_field, utc_date
from gateway.transform.notice import NoticeCache, NoticeFacts, NoticeTemplate, choose
from gateway.transform.pipeline import Personalisation, personalise

log = logging.getLogger("gateway.compose")
AT_DELIVERY = "delivery"  # the audit's client of a decision taken when a copy was sent


@dataclass(frozen=True)
class CopySettings:
    """What personalising a copy needs besides the copy."""

    tokens: TokenKeys
    public_url: str  # the unsubscribe links point here
    hostname: str  # unsubscribe+TOKEN@hostname, Message-IDs
    signer: Signer | None  # None: copies go out unsigned (no [[dkim]] configured)
    templates: dict[str, NoticeTemplate]
    controller: ControllerSettings
    retention_years: int


class Composer:
    def __init__(self, settings: CopySettings, lookup: LedgerLookup, ledger: Ledger,
                 account_of: Callable[[str], Awaitable[Account | None]],
                 knobs: PolicyKnobs | None = None) -> None:
        self.settings = settings
        self.knobs = knobs or PolicyKnobs()
        self.lookup = lookup
        self.account_of = account_of
        self._mark_informed: GroupCommitter[tuple[int, str], None] = GroupCommitter(
            ledger.mark_informed)
        self._writes: set[asyncio.Task[None]] = set()
        self._notices = NoticeCache()

    async def prepare(self, copy: Copy) -> Prepared:
        """The bytes to send for `copy`, with its sent mark: the notice version it carries
        and the audit row of its sending (COMPLIANCE 4.5: who sent, to whom, which rule,
        which notice version, when). PermanentFailure: fail it with a DSN (an objection
        arrived meanwhile, or it cannot be made compliant); TemporaryFailure: defer it (it
        cannot be signed now); a copy never leaves unsigned or without its notice."""
        if copy.account is None or copy.rule is None:
            # DSNs: not prospecting, nothing to add
            return Prepared(copy.content, SentMark(copy.delivery_id))
        facts = await self.lookup.facts(copy.recipient)
        refusal = self._refusal_now(copy, facts)
        if refusal is not None:
            # audited with the failure: the audit said only "R8 allow" for a copy refused
            # R1, and the access letter gave the wrong reason
            rule, reason = refusal
            raise PermanentFailure(replies.policy_reject(rule, reason), audit=AuditRecord(
                time.time(), copy.account, AT_DELIVERY, facts.address_hash, rule, "reject",
                copy.message_id).row())
        account = await self.account_of(copy.account)
        if account is None:
            # removed with `gateway accounts remove --force` (refused otherwise while mail of
            # its waits): retrying for days would change nothing
            raise PermanentFailure(f"account {copy.account} was removed: not sent")
        s = self.settings
        token = s.tokens.issue(Token(copy.contact_id or 0, account.id, copy.delivery_id))
        unsubscribe_url = f"{s.public_url}/u/{token}"
        contact = facts.contact
        # a service message (T1) is no prospecting: the prospecting information (its
        # purpose and legal basis) would contradict it, and mark the person informed
        full = first_notice_due(contact) and copy.rule != "T1"
        template = choose(s.templates, contact.language if contact else None,
                          s.controller.default_language)
        notice = self._notices.render(template, NoticeFacts(
            s.controller.name, s.controller.address, s.controller.privacy_url,
            s.controller.dpo_email, s.retention_years, unsubscribe_url, copy.rule,
            _date(contact.consent_at) if contact else None,
            tuple(src.name for src in contact.sources if src.type != "direct")
            if contact else (), full))
        try:
            content = personalise(copy.content, Personalisation(
                unsubscribe_url, f"unsubscribe+{token}@{s.hostname}",
                f"<{copy.message_id}.{copy.delivery_id}@{s.hostname}>",
                utc_date(copy.received_at)))
            content = add_notice(content, notice)
            content = trace_field(copy.client_ip, s.hostname, copy.message_id,
                                  copy.recipient, utc_date(copy.received_at), copy.helo,
                                  copy.protocol) + content
        except (UnsafeHeader, NoticeError) as exc:
            raise PermanentFailure(f"554 5.6.0 cannot make the copy compliant: {exc}") from exc
        if s.signer is not None:
            domains = from_header_domains(content)
            try:
                content = s.signer.sign(content, domains or [""])
            except SigningError as exc:
                raise TemporaryFailure(str(exc)) from exc
        # dated when the upstream takes the copy (SentMark.sent_at)
        mark = SentMark(copy.delivery_id, notice.version, AuditRecord(
            0.0, copy.account, AT_DELIVERY, facts.address_hash, copy.rule, "sent",
            copy.message_id, notice.version).row())
        informed = ((contact.id, notice.version) if full and contact is not None
                    and contact.id is not None else None)
        return Prepared(content, mark, informed)

    def _refusal_now(self, copy: Copy, facts: RecipientFacts) -> tuple[str, str] | None:
        """What the rule book says against sending the copy now, after its wait in the
        queue: (rule, reason), or None. R1 always (an objection made meanwhile holds). For
        prospecting (not T1, which does not read the ledger), R2 when the ledger entry is
        gone (`retention run` purged it: the copy would go out without its source, in no
        language of the person's) and R4 when its retention period ran out meanwhile (a
        deferred copy went out days after it: compliance audit)."""
        if facts.suppressed:
            return "R1", "recipient objected before delivery (suppression list)"
        if copy.rule == "T1":
            return None
        if facts.contact is None:
            return "R2", "recipient no longer in the contact ledger before delivery (purged)"
        deadline = retention_deadline(facts.contact, self.knobs)
        if deadline is not None and time.time() > deadline:
            return "R4", "retention period expired before delivery; marked for purge"
        return None

    def sent(self, prepared: Prepared) -> None:
        """After the upstream took the copy: record that the person got the full notice."""
        if prepared.informed is not None:
            task = asyncio.get_running_loop().create_task(self._record(prepared.informed))
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)

    async def _record(self, informed: tuple[int, str]) -> None:
        try:
            await self._mark_informed.submit(informed)
        except StoreError as exc:
            log.error("could not record informed_at for contact %d: %s", informed[0], exc)

    async def drain(self) -> None:
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)


def first_notice_due(contact: Contact | None) -> bool:
    """GDPR 14(3)(b): a person whose data was not collected from them gets the full
    information with the first message (then informed_at is set)."""
    return (contact is not None and contact.informed_at is None and bool(contact.sources)
            and not any(source.type == "direct" for source in contact.sources))


def _date(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    return datetime.datetime.fromtimestamp(stamp, datetime.UTC).date().isoformat()
