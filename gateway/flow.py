"""The one place the path is spelled out: decide -> (transform) -> enqueue | quarantine -> audit.

The SMTP handler calls `decide_recipient` at RCPT, `check_message` and `accept` at DATA, and
`record_abandoned` when a transaction ends without a message. The decisions themselves are the
pure policy chain (gateway.policy); this module feeds it facts and carries out its outcome.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import lru_cache
from typing import Any, NamedTuple

import gateway.smtp.replies as replies
from gateway.batch import GroupCommitter
from gateway.delivery.dsn import build_dsn, needs_smtputf8, should_send_dsn
from gateway.delivery.worker import DeliveryService, new_queue_id
from gateway.errors import StoreError
from gateway.model import (
    Campaign,
    Decision,
    MessageFacts,
    PolicyKnobs,
    RecipientFacts,
    Verdict,
    tag_key,
)
from gateway.policy import chain
from gateway.policy.message import decide_message, m1_from_domain
from gateway.security.keys import AddressHasher
from gateway.settings import TrustedClient
from gateway.store.accounts import Account, AccountStore
from gateway.store.audit import AuditLog, AuditRecord, Unwritten
from gateway.store.ledger import FactsRow, Ledger, LedgerLookup, ledger_form
from gateway.store.queue import Copy, Held, IncomingMessage, QueueStore, Refusal
from gateway.transform.footer import structure_facts
from gateway.transform.headers import (
    CAMPAIGN_TOPICS,
    PRODUCT_CATEGORY,
    STEERING_PREFIX,
    display_subject,
    drop_blind_copies,
    header_end,
    tag_list,
    take_fields,
    trace_name,
)
from gateway.transform.lines import normalize_crlf

log = logging.getLogger("gateway.flow")

ACCOUNT_CACHE_SECONDS = 5.0
# audit rows of transactions without a message, while the store refuses writes: retried
# from 1 s to every 30 s, at most this many kept waiting (a few hundred bytes each)
AUDIT_RETRY_FIRST_SECONDS = 1.0
AUDIT_RETRY_MAX_SECONDS = 30.0
MAX_AUDIT_WAITING = 100_000
UNSUBSCRIBE_PREFIX = "unsubscribe+"
# Background writes gather this long before they start (GroupCommitter linger): the audit of
# transactions that ended without a message (no client waits for it; `drain` writes what is
# left at stop; a crash loses at most this span of it, as it would lose the rows in flight),
# and R4's purge marks (a hint for `gateway retention run`, which needs no hurry).
AUDIT_LINGER_SECONDS = 0.1
MARK_LINGER_SECONDS = 1.0


class RecipientVerdict(NamedTuple):
    """What RCPT answers, and what DATA needs to finish the job without reading again.

    Kept until the transaction ends, for each of its recipients: thousands alive at once
    under load. So it holds the shared Decision and the facts as read (`FactsRow`'s fields:
    strings, numbers and a plain tuple, which the cyclic garbage collector stops tracking at
    its first pass), not the Contact built from them (half a dozen objects that every later
    collection walked again: the RCPT latency tail, bench/README.md)."""

    accepted: bool
    reply: str
    decision: Decision | None = None  # None: nothing was decided (a 451)
    at: float = 0.0
    address: str = ""  # the ledger key read
    digest: bytes = b""  # its keyed hash
    row: tuple[object, ...] | None = None  # FactsRow.row; None when nothing was read

    @property
    def read(self) -> FactsRow | None:
        return None if self.row is None else FactsRow(self.address, self.digest, self.row)

    @property
    def contact_id(self) -> int | None:
        read = self.read
        return None if read is None else read.contact_id


def sender_refused(reply: str) -> RecipientVerdict:
    """The verdict of a RCPT refused for its transaction's envelope sender (M1 at RCPT:
    not the account's domain, or a null sender): audited like any other decision."""
    reason = reply.split(" M1 ", 1)[-1]
    return RecipientVerdict(False, reply, Decision(
        Verdict.REJECT, "M1", reason, "CPCE L.34-5: the sender's identity may not be disguised"),
        time.time())


@lru_cache(maxsize=1024)
def campaign_of(account: Account) -> Campaign:
    """The account's campaign (cached: it is asked on every RCPT; an updated account is
    another Account value, so it is never stale)."""
    return Campaign(account.name, account.category,
                    frozenset(tag_key(t) for t in account.topics),
                    frozenset(tag_key(c) for c in account.product_categories))


class Decider:
    """Recipient decisions: one ledger read, then the pure chain. `gateway check` uses it too."""

    def __init__(self, lookup: LedgerLookup, knobs: PolicyKnobs,
                 clock: Callable[[], float] = time.time) -> None:
        self.lookup = lookup
        self.knobs = knobs
        self.clock = clock

    async def decide(self, account: Account, recipient: str,
                     campaign: Campaign | None = None) -> tuple[RecipientFacts, Decision]:
        _read, facts, decision = await self.decide_read(account, recipient, campaign)
        return facts, decision

    async def decide_read(self, account: Account, recipient: str,
                          campaign: Campaign | None = None
                          ) -> tuple[FactsRow, RecipientFacts, Decision]:
        """`decide`, with the facts as read too (what a verdict keeps)."""
        read = await self.lookup.read(recipient)
        facts = read.facts()
        decision = chain.decide(facts, campaign or campaign_of(account), self.knobs,
                                self.clock())
        return read, facts, decision


class Flow:
    def __init__(self, queue: QueueStore, delivery: DeliveryService, accounts: AccountStore,
                 trusted_clients: tuple[TrustedClient, ...], decider: Decider,
                 audit: AuditLog, ledger: Ledger, hasher: AddressHasher,
                 reporting_mta: str) -> None:
        self.queue = queue
        self.delivery = delivery
        self.accounts = accounts
        self.trusted_clients = trusted_clients
        self.decider = decider
        self.hasher = hasher
        self.reporting_mta = reporting_mta
        self.objections: Any = None  # gateway.objections.Objections, set by the runtime
        self.committer: GroupCommitter[IncomingMessage, list[Copy]] = GroupCommitter(
            queue.commit_messages)
        self._audit: GroupCommitter[Sequence[tuple[object, ...]], Unwritten | None] = \
            GroupCommitter(audit.append, linger=AUDIT_LINGER_SECONDS)
        self._mark_expired: GroupCommitter[int, None] = GroupCommitter(
            ledger.mark_expired, linger=MARK_LINGER_SECONDS)
        self._audit_tasks: set[asyncio.Task[None]] = set()  # background store writes
        # audit rows the store refused, kept for the retrier (one task)
        self._audit_backlog: list[tuple[object, ...]] = []
        self._audit_retrier: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._account_cache: dict[str, tuple[float, Account | None]] = {}
        self._all_accounts: tuple[float, list[Account]] | None = None
        self._missing_trusted: set[str] = set()  # trusted_clients accounts warned about

    # --- objections by mail (RFC 2369 mailto:unsubscribe+TOKEN@hostname) -----------------

    def unsubscribe_token(self, address: str) -> str | None:
        """The token of an unsubscribe+TOKEN@<smtp.hostname> address, else None."""
        local, _, domain = address.rpartition("@")
        if domain.lower().rstrip(".") != self.reporting_mta.lower() or \
                not local.lower().startswith(UNSUBSCRIBE_PREFIX):
            return None
        return local[len(UNSUBSCRIBE_PREFIX):]

    async def unsubscribe_names_a_copy(self, token: str) -> bool:
        """At RCPT: whether the token is one we issued for a copy the store still holds (a
        read; nothing is stored until the message itself has come, at DATA)."""
        if self.objections is None:
            return False
        verified = self.objections.verify(token)
        return verified is not None and await self.objections.recipient(verified) is not None

    async def object_by_mail(self, token: str, client_ip: str) -> bool:
        """At DATA: record the objection a token names (committed before the 250); False
        when there is nothing to record (not a token we issued, or its copy is gone)."""
        if self.objections is None:
            return False
        verified = self.objections.verify(token)
        if verified is None:
            return False
        if await self.objections.record(verified, "mailto", client_ip) is None:
            return False
        log.info("%s objection by mail recorded", client_ip)
        return True

    async def account(self, name: str, fresh: bool = False) -> Account | None:
        """An account by name, cached a few seconds (this is on every trusted MAIL);
        `fresh`: read now."""
        now = time.monotonic()
        cached = self._account_cache.get(name)
        if cached and now - cached[0] < ACCOUNT_CACHE_SECONDS and not fresh:
            return cached[1]
        account = await self.accounts.get(name)
        self._account_cache[name] = (now, account)
        return account

    async def is_account_domain(self, domain: str) -> bool:
        """Whether some account may send as `domain` (M1's list over every account, cached a
        few seconds): an unauthenticated MAIL from such a domain is a marketing tool that
        forgot AUTH, answered 530 at once."""
        now = time.monotonic()
        if self._all_accounts is None or now - self._all_accounts[0] >= ACCOUNT_CACHE_SECONDS:
            self._all_accounts = (now, await self.accounts.list())
        return any(account.may_send_from(domain) for account in self._all_accounts[1])

    async def trusted_account(self, client_ip: str) -> Account | None:
        """The account a trusted network sends as (Postfix mynetworks), or None."""
        for client in self.trusted_clients:
            if client.contains(client_ip):
                account = await self.account(client.account)
                if account is None and client.account not in self._missing_trusted:
                    self._missing_trusted.add(client.account)  # once per name and process
                    log.warning("%s is in the trusted network %s, whose account %r does not "
                                "exist: its mail needs AUTH (gateway accounts add %s, or fix "
                                "smtp.trusted_clients)", client_ip, client.network,
                                client.account, client.account)
                return account
        return None

    async def missing_trusted_accounts(self) -> list[str]:
        """The smtp.trusted_clients accounts the store does not have (said at start)."""
        names = dict.fromkeys(client.account for client in self.trusted_clients)
        return [name for name in names if await self.account(name, fresh=True) is None]

    # --- RCPT ---------------------------------------------------------------------------

    async def decide_recipient(self, account: Account, recipient: str) -> RecipientVerdict:
        """RCPT: the compliance policy (R1-R10) decides; a store failure is a 451 for this
        recipient only (the client retries it), never an accept without a decision."""
        try:
            read, facts, decision = await self.decider.decide_read(account, recipient)
        except StoreError as exc:
            log.error("ledger unavailable, RCPT <%s> answered 451: %s", recipient, exc)
            return RecipientVerdict(False, replies.LEDGER_UNAVAILABLE)
        at = time.time()
        if decision.rule == "R4" and facts.contact is not None and facts.contact.id is not None \
                and facts.contact.retention_expired_at is None:  # marked once
            self._background(self._mark_expired.submit(facts.contact.id), "R4 purge mark")
        if decision.verdict is Verdict.REJECT:  # (logged by the SMTP side, with the client)
            return RecipientVerdict(False, replies.policy_reject(decision.rule, decision.reason),
                                    decision, at, *read)
        return RecipientVerdict(True, replies.RECIPIENT_OK, decision, at, *read)

    def record_abandoned(self, account: Account | None, client_ip: str,
                         verdicts: Sequence[tuple[str, RecipientVerdict]],
                         message_rule: Decision | None = None) -> None:
        """Audit the decisions of a transaction that ended without a message (every recipient
        refused, RSET, QUIT, lost connection, or the message refused by `message_rule`), in
        the background, batched."""
        final = {recipient: message_rule for recipient, verdict in verdicts
                 if message_rule is not None and verdict.accepted}
        # as plain tuples (AuditRecord.row()): they wait for the linger, and the cyclic
        # collector stops tracking a plain tuple of strings and numbers at its first pass
        rows = [tuple(record) for record in self._audit_records(account, client_ip, verdicts,
                                                                 final)]
        if rows:
            self._background(self._audited(rows), f"{len(rows)} audit records")

    async def _audited(self, rows: Sequence[tuple[object, ...]]) -> None:
        """Append audit rows; those the store refuses (a full disk) are kept and retried:
        every decision is recorded (GDPR 5-2). They were dropped at the first refusal, the
        550 said but not recorded."""
        unwritten = await self._audit.submit(rows)
        if unwritten is not None:
            self._keep_audit(unwritten.rows, unwritten.error)

    def _keep_audit(self, rows: list[tuple[object, ...]], error: StoreError) -> None:
        if len(self._audit_backlog) + len(rows) > MAX_AUDIT_WAITING:
            # refused for long: what waits is bounded (memory), what is dropped is said
            log.error("store: %d audit records not written (%d wait already): %s",
                      len(rows), len(self._audit_backlog), error)
            return
        self._audit_backlog += rows
        if self._audit_retrier is None:
            log.error("store: audit records not written, kept and retried: %s", error)
            task = asyncio.get_running_loop().create_task(self._retry_audit())
            self._audit_retrier = task
            self._audit_tasks.add(task)
            task.add_done_callback(self._audit_tasks.discard)

    async def _retry_audit(self) -> None:
        """One task retries every kept row, 1 s, then twice as late up to 30 s, one line
        logged per try; at the drain, one last try."""
        delay = AUDIT_RETRY_FIRST_SECONDS
        try:
            while self._audit_backlog:
                try:
                    await asyncio.wait_for(self._stopping.wait(), delay)
                except TimeoutError:
                    pass
                rows, self._audit_backlog = self._audit_backlog, []
                unwritten = await self._audit.submit(rows)
                if unwritten is None:
                    log.info("store: %d kept audit records written", len(rows))
                    delay = AUDIT_RETRY_FIRST_SECONDS
                    continue
                self._audit_backlog[:0] = unwritten.rows  # the oldest first
                if self._stopping.is_set():
                    log.error("store: %d audit records not written at the stop: %s",
                              len(self._audit_backlog), unwritten.error)
                    self._audit_backlog.clear()
                    return
                delay = min(delay * 2, AUDIT_RETRY_MAX_SECONDS)
                log.error("store: %d audit records still not written (next try in %.0f s): "
                          "%s", len(self._audit_backlog), delay, unwritten.error)
        finally:
            self._audit_retrier = None

    def _background(self, write: Awaitable[None], what: str) -> None:
        """A store write nobody waits for (the SMTP answer does not depend on it); `drain`
        waits for them at shutdown."""
        task = asyncio.get_running_loop().create_task(self._logged(write, what))
        self._audit_tasks.add(task)
        task.add_done_callback(self._audit_tasks.discard)

    @staticmethod
    async def _logged(write: Awaitable[None], what: str) -> None:
        try:
            await write
        except StoreError as exc:
            log.error("store: %s not written: %s", what, exc)

    async def drain(self) -> None:
        """Wait for the audit records still being written (at shutdown): those waiting for
        the store get one last try."""
        self._stopping.set()
        while self._audit_tasks:  # (a write ending now may start the retrier)
            await asyncio.gather(*self._audit_tasks, return_exceptions=True)

    def _audit_records(self, account: Account | None, client_ip: str,
                       verdicts: Sequence[tuple[str, RecipientVerdict]],
                       final: dict[str, Decision]) -> list[AuditRecord]:
        records = []
        name = account.name if account else None
        for recipient, verdict in verdicts:
            decision = final.get(recipient, verdict.decision)
            if decision is None:
                continue  # a 451: nothing was decided
            digest = verdict.digest or self.hasher(ledger_form(recipient))
            records.append(AuditRecord(verdict.at, name, client_ip, digest, decision.rule,
                                       decision.decision))
        return records

    # --- DATA ---------------------------------------------------------------------------

    def check_message(self, account: Account, content: bytes) -> Decision | None:
        """DATA: M1, the From header must be one of the account's domains."""
        return m1_from_domain(*from_header(content), may_send_from=account.may_send_from)

    async def accept(self, *, account: Account, client_ip: str, mail_from: str,
                     verdicts: Sequence[tuple[str, RecipientVerdict]], content: bytes,
                     received_at: float, smtputf8: bool = False, helo: str = "",
                     protocol: str = "ESMTP") -> str:
        """Decide what becomes of each accepted recipient's copy (queue, quarantine, or a
        refusal when X-Gateway-* headers narrowed the campaign), then commit all of it
        durably with the audit records (raises StoreError if it cannot), then deliver."""
        content, fields = take_fields(normalize_crlf(content), STEERING_PREFIX)
        content = drop_blind_copies(content)
        steering = steering_of(fields)
        campaign = narrowed_campaign(account, steering)
        try:
            facts = structure_facts(content)
        except Exception as exc:  # a message this code cannot read (a bug) is held for
            # review under M2, not answered 451 at every try of the client's
            log.exception("message from <%s> could not be read; held under M2", mail_from)
            facts = MessageFacts(True, True, malformed="the gateway could not read its "
                                 f"structure ({exc.__class__.__name__})")
        message_rule = decide_message(facts)
        queue_id = new_queue_id()
        final: dict[str, Decision] = {}
        deliver: list[str] = []
        held: list[Held] = []
        refused: list[Refusal] = []
        seen: set[str] = set()  # a recipient given twice: its first decision, one copy
        for recipient, verdict in verdicts:
            read = verdict.read
            key = recipient.lower()
            if not verdict.accepted or verdict.decision is None or read is None or key in seen:
                continue
            seen.add(key)
            decision = verdict.decision
            if campaign is not None:  # the headers narrowed it: decide again, same facts
                decision = chain.decide(read.facts(), campaign, self.decider.knobs,
                                        received_at)
            if message_rule is not None and decision.verdict is not Verdict.REJECT:
                decision = message_rule
            final[recipient] = decision
            if decision.verdict is Verdict.ALLOW:
                deliver.append(recipient)
            elif decision.verdict is Verdict.QUARANTINE:
                held.append(Held(recipient, decision))
            else:
                refused.append(Refusal(recipient, replies.policy_reject(decision.rule,
                                                                        decision.reason)))
        bounces = {r.recipient: self._bounce(queue_id, mail_from, r, content, received_at)
                   for r in refused if should_send_dsn(mail_from)}
        message = IncomingMessage(
            queue_id, received_at, account.name, client_ip, mail_from, content,
            tuple(deliver), display_subject(content), tuple(held), tuple(refused),
            tuple(bounces.values()),
            tuple(self._audit_records(account, client_ip, verdicts, final)),
            tuple((r, v.contact_id, final[r].rule) for r, v in verdicts if r in deliver),
            steering, smtputf8, trace_name(helo), protocol)
        copies = await self.committer.submit(message)
        self.delivery.dispatch(copies)
        for h in held:
            log.info("%s quarantined to=<%s> %s: %s", queue_id, h.recipient, h.decision.rule,
                     h.decision.reason)
        for r in refused:
            dsn = bounces.get(r.recipient)
            log.info("%s refused after DATA to=<%s>%s: %s", queue_id, r.recipient,
                     f", DSN {dsn.id} queued" if dsn else "", r.error)
        return queue_id

    def _bounce(self, queue_id: str, mail_from: str, refusal: Refusal, content: bytes,
                received_at: float) -> IncomingMessage:
        dsn = build_dsn(reporting_mta=self.reporting_mta, queue_id=queue_id,
                        mail_from=mail_from, recipient=refusal.recipient, status="",
                        diagnostic=refusal.error, arrival_date=received_at,
                        original_headers=content[:max(0, header_end(content) - 2)])
        return IncomingMessage(new_queue_id(), time.time(), None, "127.0.0.1", "", dsn,
                               (mail_from,), smtputf8=needs_smtputf8(dsn))


_ANGLE = re.compile(r"<([^<>]*)>")
# RFC 5322 dot-atoms, with the UTF-8 of RFC 6532 (no surrogates: undecodable bytes)
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\x80-\ud7ff\ue000-\U0010ffff-]+"
_LOCAL_PART = re.compile(rf'(?:""|{_ATOM}(?:\.{_ATOM})*)')  # "" is a quoted string, blanked
_LABEL = r"[A-Za-z0-9\x80-\ud7ff\ue000-\U0010ffff](?:[A-Za-z0-9\x80-\ud7ff\ue000-\U0010ffff-]*)?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")


def _without_comments(text: str) -> str | None:
    """The field with each quoted string as "" and each comment as a space, read left to
    right as RFC 5322 3.2 does (comments nest; a backslash escapes the next character in
    both; a quote inside a comment, or a parenthesis inside quotes, means nothing).

    None when the text is not well formed (unterminated, unbalanced, a stray backslash):
    readers then disagree on what it says, and an address they disagree on is refused.
    """
    out: list[str] = []
    depth = 0  # comment nesting
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            if not depth:
                return None
            i += 2
            continue
        if depth:
            depth += (c == "(") - (c == ")")
            if not depth:
                out.append(" ")
        elif c == "(":
            depth = 1
        elif c == ")":
            return None
        elif c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            if i >= n:
                return None
            out.append('""')
        else:
            out.append(c)
        i += 1
    return None if depth else "".join(out)


def from_header_domains(content: bytes) -> list[str]:
    """Domains of the mailboxes in the one From header; [] when there is not exactly one,
    or it cannot be read (from_header)."""
    fields = _from_fields(content)
    if len(fields) != 1:
        return []
    return _mailbox_domains(fields[0]) or []


def from_header(content: bytes) -> tuple[list[str], str | None]:
    """For M1: the domains of the mailboxes of the From field, and what makes the header
    unusable, if anything: none, several (RFC 5322 3.6 allows one; readers show either),
    or one that cannot be read safely. The reply says which ("domain not allowed" misled)."""
    fields = _from_fields(content)
    if not fields:
        return [], "no From header field"
    if len(fields) > 1:
        return [], f"From header field given {len(fields)} times (RFC 5322 3.6: once)"
    domains = _mailbox_domains(fields[0])
    if not domains:
        return [], "From header field unreadable: not a list of plain mailboxes with a domain"
    return domains, None


def _from_fields(content: bytes) -> list[list[str]]:
    """The From fields of the header section, each as its lines (unfolded in parts)."""
    end = content.find(b"\r\n\r\n")
    head = content if end < 0 else content[:end]
    from_fields: list[list[str]] = []
    current: list[str] | None = None
    for line in head.decode("utf-8", "surrogateescape").split("\r\n"):
        if line[:1] in (" ", "\t"):  # folded continuation of the previous field
            if current is not None:
                current.append(line)
            continue
        name, colon, value = line.partition(":")
        current = [value] if colon and name.strip().lower() == "from" else None
        if current is not None:
            from_fields.append(current)
    return from_fields


def _mailbox_domains(field: list[str]) -> list[str] | None:
    """The domains of a From field's mailboxes; None when it cannot be read safely.

    Hand-parsed on purpose: email.utils.getaddresses on this Python lacks the CVE-2023-27043
    fix and can be made to return a domain other than the real one.
    """
    text = _without_comments(" ".join(field))
    if text is None:
        return None
    addresses = _ANGLE.findall(text)
    if addresses and "@" in _ANGLE.sub("", text):
        return None  # an address outside the angle brackets too: ambiguous, refuse
    addresses = addresses or text.split(",")
    domains = []
    for address in addresses:
        local, at, domain = address.strip().rpartition("@")
        # the whole local part must be one: "ceo@bank.example;@good.example", a route
        # "<@a:b@c>" or an encoded word "=?utf-8?b?...?=@good.example" shows another mailbox
        # to a reader than the domain after the last "@"
        if (not at or _LOCAL_PART.fullmatch(local) is None or "=?" in local
                or _DOMAIN.fullmatch(domain) is None):
            return None
        domains.append(domain.lower().rstrip("."))
    return domains


def steering_of(fields: list[tuple[str, str]]) -> tuple[str | None, str | None]:
    """What the X-Gateway-* header fields say: (topics, product categories), each ";"-joined
    and sorted, None when its header is absent."""
    topics = categories = None
    for name, value in fields:
        if name == CAMPAIGN_TOPICS:
            topics = tag_list(value) | (topics or frozenset())
        elif name == PRODUCT_CATEGORY:
            categories = tag_list(value) | (categories or frozenset())
    return (None if topics is None else ";".join(sorted(topics)),
            None if categories is None else ";".join(sorted(categories)))


def narrowed_campaign(account: Account, steering: tuple[str | None, str | None]
                      ) -> Campaign | None:
    """The account's campaign narrowed by what the headers said (steering_of), or None when
    they said nothing. The same at DATA and at a quarantine release."""
    topics, categories = steering
    if topics is None and categories is None:
        return None
    return campaign_of(account).narrowed(
        None if topics is None else tag_list(topics),
        None if categories is None else tag_list(categories))
