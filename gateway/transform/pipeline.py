"""Per-recipient transforms of one copy, in order: identity fields, unsubscribe fields (and,
next, the notice). DKIM signing comes after all of them (gateway.transform.dkim)."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.transform.headers import (
    drop_earlier_signatures,
    ensure_identity_fields,
    set_unsubscribe,
)


@dataclass(frozen=True)
class Personalisation:
    """What one copy gets: its own unsubscribe addresses, and identity fields if missing."""

    unsubscribe_url: str  # https://.../u/TOKEN (RFC 8058: exactly one HTTPS URI)
    unsubscribe_mailto: str  # unsubscribe+TOKEN@host
    message_id: str  # used only when the message has none
    date: str  # used only when the message has none


def personalise(content: bytes, p: Personalisation) -> bytes:
    """The copy as it must leave (before signing). Raises UnsafeHeader rather than write a
    field that could forge another one."""
    content = ensure_identity_fields(drop_earlier_signatures(content), p.message_id, p.date)
    return set_unsubscribe(content, p.unsubscribe_url, p.unsubscribe_mailto)
