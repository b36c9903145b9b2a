"""The one place the path is spelled out: decide -> (transform) -> enqueue | quarantine.

The SMTP handler calls `decide_recipient` at RCPT, `check_message` and `accept` at DATA.
The compliance policy (R1-R10, M2-M3) and the transforms plug in here in later issues; for
now every recipient of an allowed sender is accepted and copies go out as received.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import gateway.smtp.replies as replies
from gateway.batch import GroupCommitter
from gateway.delivery.worker import DeliveryService, new_queue_id
from gateway.settings import TrustedClient
from gateway.store.accounts import Account, AccountStore
from gateway.store.queue import Copy, IncomingMessage, QueueStore
from gateway.transform.lines import normalize_crlf

ACCOUNT_CACHE_SECONDS = 5.0


@dataclass(frozen=True)
class RecipientVerdict:
    accepted: bool
    reply: str


ACCEPT = RecipientVerdict(True, replies.RECIPIENT_OK)


class Flow:
    def __init__(self, queue: QueueStore, delivery: DeliveryService, accounts: AccountStore,
                 trusted_clients: tuple[TrustedClient, ...]) -> None:
        self.queue = queue
        self.delivery = delivery
        self.accounts = accounts
        self.trusted_clients = trusted_clients
        self.committer: GroupCommitter[IncomingMessage, list[Copy]] = GroupCommitter(
            queue.commit_messages)
        self._account_cache: dict[str, tuple[float, Account | None]] = {}

    async def account(self, name: str) -> Account | None:
        """An account by name, cached a few seconds (this is on every trusted MAIL)."""
        now = time.monotonic()
        cached = self._account_cache.get(name)
        if cached and now - cached[0] < ACCOUNT_CACHE_SECONDS:
            return cached[1]
        account = await self.accounts.get(name)
        self._account_cache[name] = (now, account)
        return account

    async def trusted_account(self, client_ip: str) -> Account | None:
        """The account a trusted network sends as (Postfix mynetworks), or None."""
        for client in self.trusted_clients:
            if client.contains(client_ip):
                return await self.account(client.account)
        return None

    async def decide_recipient(self, account: Account, recipient: str) -> RecipientVerdict:
        """RCPT: the seam where the compliance policy (R1-R10) decides per recipient."""
        return ACCEPT

    def check_message(self, account: Account, content: bytes) -> str | None:
        """DATA: message rules. M1: the From header must be one of the account's domains."""
        domains = from_header_domains(content)
        if not domains or not all(account.may_send_from(d) for d in domains):
            return replies.FROM_NOT_ALLOWED
        return None

    async def accept(self, *, account: str | None, client_ip: str, mail_from: str,
                     recipients: tuple[str, ...], content: bytes, received_at: float) -> str:
        """Commit the message durably (raises StoreError if it cannot), then start delivery."""
        message = IncomingMessage(new_queue_id(), received_at, account, client_ip, mail_from,
                                  normalize_crlf(content), recipients)
        copies = await self.committer.submit(message)
        self.delivery.dispatch(copies)
        return message.id


_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
_COMMENT = re.compile(r"\([^()]*\)")
_ANGLE = re.compile(r"<([^<>]*)>")


def from_header_domains(content: bytes) -> list[str]:
    """Domains of the mailboxes in the one From header; [] when there is not exactly one.

    Hand-parsed on purpose: email.utils.getaddresses on this Python lacks the CVE-2023-27043
    fix and can be made to return a domain other than the real one.
    """
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
    if len(from_fields) != 1:
        return []
    text = _COMMENT.sub(" ", _QUOTED.sub('""', " ".join(from_fields[0])))
    addresses = _ANGLE.findall(text)
    if addresses and "@" in _ANGLE.sub("", text):
        return []  # an address outside the angle brackets too: ambiguous, refuse
    addresses = addresses or text.split(",")
    domains = []
    for address in addresses:
        local, at, domain = address.strip().rpartition("@")
        if not at or not local or not domain or any(c in domain for c in ' \t"\\,;<>@'):
            return []
        domains.append(domain.lower().rstrip("."))
    return domains
