"""Domain and address normalisation shared by the CLI, the SMTP side and (later) the ledger."""

from __future__ import annotations

import re

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
MAX_DOMAIN = 253  # RFC 1035 2.3.4, without the trailing dot


def normalize_domain(domain: str) -> str:
    """Lower-case ASCII (IDNA) form of a domain name; ValueError with the reason otherwise."""
    text = domain.strip().rstrip(".")
    if not text or any(c in text for c in "\r\n\x00 \t@/"):
        raise ValueError(f"not a domain name: {domain!r}")
    try:
        ascii_form = text.encode("idna").decode("ascii").lower()
    except UnicodeError as exc:
        raise ValueError(f"not a valid internationalised domain name: {domain!r}") from exc
    labels = ascii_form.split(".")
    if len(ascii_form) > MAX_DOMAIN or len(labels) < 2 \
            or not all(_LABEL.match(label) for label in labels):
        raise ValueError(f"not a domain name: {domain!r} (expected e.g. example.com)")
    return ascii_form
