"""Objections from every channel: the one-click POST and the confirmation page (a token from
the copy's own List-Unsubscribe), and the opt-out webhook (an HMAC-signed JSON push from an
ESP or CRM). Each is committed to the suppression list before the answer, so the very next
RCPT to the address gets 550 5.7.1 R1 in every process.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

from gateway.addresses import normalize_address
from gateway.batch import GroupCommitter
from gateway.security import signatures
from gateway.security.tokens import Token, TokenKeys
from gateway.store.ledger import Ledger
from gateway.text import printable

log = logging.getLogger("gateway.objections")

def client_ip(text: str | None) -> str | None:
    """The client's address as recorded with an objection (its proof): an IP address, or
    None. The HTTP server takes X-Forwarded-For from a proxy on loopback as the client,
    and that header can say anything."""
    try:
        return str(ipaddress.ip_address(text)) if text else None
    except ValueError:
        return None


MAX_EVENTS = 1000  # per webhook call
MAX_REASON = 200


@dataclass(frozen=True)
class Recipient:
    address: str
    language: str | None


class BadRequest(ValueError):
    """The webhook body is not what INTERFACE.md describes (400, nothing stored)."""


def _no_constant(name: str) -> object:
    raise BadRequest(f"not JSON: {name} is not a JSON number (RFC 8259 6)")


class Objections:
    def __init__(self, tokens: TokenKeys, ledger: Ledger, webhook_secret: str,
                 on_objection: Callable[[], None] | None = None) -> None:
        self.tokens = tokens
        self.ledger = ledger
        self.webhook_secret = webhook_secret.encode()
        self.on_objection = on_objection  # wakes the notification sender
        # one-click POSTs that arrive together share one commit (the SMTP side's commits
        # would otherwise queue behind one fsync per POST)
        self._by_copy: GroupCommitter[tuple[int, int, str, str | None],
                                      tuple[str, str | None, bool] | None] = GroupCommitter(
            ledger.object_to_copies)

    def verify(self, token_text: str) -> Token | None:
        """The token's content, or None for anything we did not issue (no store access)."""
        return self.tokens.verify(token_text)

    async def recipient(self, token: Token) -> Recipient | None:
        """Whom a verified token names, or None when the store holds no such copy."""
        found = await self.ledger.recipient_of_copy(token.delivery_id, token.contact_id)
        return Recipient(*found) if found else None

    async def objected(self, recipient: Recipient) -> bool:
        """Whether the address is on the suppression list already."""
        return bool(recipient.address) and \
            await self.ledger.is_suppressed(recipient.address) is not None

    async def record(self, token: Token, channel: str, ip: str | None) -> Recipient | None:
        """Suppress the address a verified token names (committed when this returns, in the
        same store hand-off as finding it); None, and nothing stored, when the store holds
        no such copy."""
        ip = client_ip(ip)
        found = await self._by_copy.submit((token.delivery_id, token.contact_id, channel, ip))
        if found is None:
            return None
        address, language, added = found
        log.info("objection recorded: channel=%s from %s%s", channel, ip,
                 "" if added else " (already suppressed)")
        if added and self.on_objection is not None:
            self.on_objection()
        return Recipient(address, language)

    def signature_ok(self, header: str | None, body: bytes) -> bool:
        return signatures.signature_ok(self.webhook_secret, header, body)

    def signed_call(self, header: str, body: bytes) -> str:
        """The name of a call signature_ok accepted (signatures.signed_call)."""
        return signatures.signed_call(self.webhook_secret, header, body)

    async def record_webhook(self, body: bytes, ip: str | None,
                             call: str | None = None) -> tuple[int, int]:
        """Store every event of a (verified) webhook body in one transaction.

        `call` names the signed call (signed_call): its events without an id get
        one from it, so the same call sent again (inside the 300 s window) is a replay too.
        Returns (addresses newly suppressed, events ignored as replays of an id already
        received). BadRequest, and nothing stored, when any event is malformed.
        """
        try:
            if body[:2] in (b"\xff\xfe", b"\xfe\xff") or body[:1] == b"\x00" or (
                    body[1:2] == b"\x00"):
                raise BadRequest("not JSON: a webhook body is UTF-8 (RFC 8259 8.1)")
            document = json.loads(body, parse_constant=_no_constant)
        except BadRequest:
            raise
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadRequest(f"not JSON: {exc}") from None
        except RecursionError:
            raise BadRequest("not JSON this gateway reads: nested too deeply") from None
        except ValueError:  # an integer of thousands of digits (int's own limit)
            raise BadRequest("not JSON this gateway reads: a number too long") from None
        if isinstance(document, dict) and "events" in document and "email" in document:
            raise BadRequest('either {"email": ...} or {"events": [...]}, not both: the '
                             "top-level email would be left out")
        events = document.get("events", [document]) if isinstance(document, dict) else None
        if not isinstance(events, list) or not events or len(events) > MAX_EVENTS:
            raise BadRequest(f'expected {{"email": ...}} or {{"events": [...]}} with 1 to '
                             f"{MAX_EVENTS} events")
        parsed: list[tuple[str | None, str, str | None]] = []
        for i, event in enumerate(events):
            if not isinstance(event, dict) or not isinstance(event.get("email"), str):
                raise BadRequest(f"event {i}: no email")
            try:
                address = normalize_address(event["email"])
            except ValueError as exc:
                raise BadRequest(f"event {i}: {exc}") from None
            event_id = event.get("id")
            reason = event.get("reason")
            if event_id is not None and (not isinstance(event_id, str) or len(event_id) > 200):
                raise BadRequest(f"event {i}: id must be a string of at most 200 characters")
            if reason is not None and not isinstance(reason, str):
                raise BadRequest(f"event {i}: reason must be a string")
            if event_id is None and call is not None:
                event_id = f"signed-call:{call}:{i}"
            # free text a recipient may have typed (an unsubscribe survey): no control or
            # bidi character is kept, for the terminals and exports that show it
            reason = " ".join(printable(reason or "").split())[:MAX_REASON]
            parsed.append((event_id, address, reason or None))
        ip = client_ip(ip)
        added, replays = await self.ledger.suppress_events(parsed, "webhook", ip)
        log.info("webhook from %s: %d events, %d newly suppressed, %d replays ignored", ip,
                 len(parsed), added, replays)
        if added and self.on_objection is not None:
            self.on_objection()
        return added, replays

    async def counts(self) -> dict[str, int]:
        return await self.ledger.objection_counts()
