"""Domain and address normalisation shared by the CLI, the SMTP side and (later) the ledger."""

from __future__ import annotations

import functools
import re
import unicodedata

import idna

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
MAX_DOMAIN = 253  # RFC 1035 2.3.4, without the trailing dot


def ascii_domain(text: str) -> str:
    """The lower-case ASCII (A-label) form of a domain name, by IDNA 2008 with the UTS #46
    mapping, as browsers and mail systems today: faß.de is xn--fa-hia.de (Python's own "idna"
    codec is IDNA 2003, which maps it to fass.de, another domain). UnicodeError if it is not
    a valid internationalised name."""
    if text.isascii() and "xn--" not in text.lower():
        return text.lower()
    try:
        return idna.encode(text, uts46=True).decode("ascii").lower()
    except idna.IDNAError as exc:
        raise UnicodeError(str(exc)) from None


@functools.lru_cache(maxsize=65536)  # lists repeat their domains; imports call this per row
def normalize_domain(domain: str) -> str:
    """Lower-case ASCII (IDNA) form of a domain name; ValueError with the reason otherwise."""
    text = domain.strip().rstrip(".")
    if not text or any(c in text for c in "\r\n\x00 \t@/"):
        raise ValueError(f"not a domain name: {domain!r}")
    try:
        ascii_form = ascii_domain(text)
    except UnicodeError as exc:
        raise ValueError(f"not a valid internationalised domain name: {domain!r}") from exc
    labels = ascii_form.split(".")
    if len(ascii_form) > MAX_DOMAIN or len(labels) < 2 \
            or not all(_LABEL.match(label) for label in labels):
        raise ValueError(f"not a domain name: {domain!r} (expected e.g. example.com)")
    return ascii_form


MAX_LOCAL_PART = 64  # RFC 5321 4.5.3.1.1
_NOT_IN_ADDRESS = re.compile(r"[\x00-\x20<>()\[\],;\\\x7f]")
MAX_ADDRESS = 254  # RFC 5321 path limit 256 minus the angle brackets
_UNICODE_CONTROLS = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"})


def normalize_address(address: str) -> str:
    """The ledger form of an address: domain lower-case IDNA, local part kept as given.

    A quoted local part that needs no quotes ("john.doe"@) is the same mailbox as without
    them, and is what SMTP's RCPT hands over: the quotes go. ValueError with the reason for
    anything that is not a plain mailbox: control characters (CR/LF/NUL could forge headers
    later; refused, not stripped), spaces, angle brackets, over-long parts, a local part that
    needs its quotes. (C-level string tests only: an import calls this on every row.)
    """
    text = address.strip(" \t")
    if not text or _NOT_IN_ADDRESS.search(text):
        if "\r" in address or "\n" in address or "\x00" in address:
            raise ValueError(f"not a plain e-mail address (CR, LF or NUL): {address!r}")
        raise ValueError(f"not a plain e-mail address: {address!r}")
    local, at, domain = text.rpartition("@")
    if not local.isascii() and any(
            unicodedata.category(c) in _UNICODE_CONTROLS for c in local):
        # C1 controls (NEL, CSI), bidi overrides, line separators: what RCPT TO refuses (the
        # domain's own check, IDNA, refuses them there)
        raise ValueError(f"not a plain e-mail address (a control character): {address!r}")
    if not at or not local:
        raise ValueError(f"not an e-mail address (no local part or no @): {address!r}")
    if len(local) >= 2 and local[0] == '"' and local[-1] == '"':
        local = local[1:-1]
    if not local or '"' in local or "@" in local or ":" in local or local[0] == "." \
            or local[-1] == "." or ".." in local:
        raise ValueError(f"invalid local part: {address!r}")
    if not local.isascii():
        # RFC 6532 3.1: one form, NFC. "josé" written decomposed (e + U+0301) is the same
        # mailbox, and an objection recorded in one form must stop mail written in the other
        local = unicodedata.normalize("NFC", local)
    if len(local.encode("utf-8")) > MAX_LOCAL_PART:
        raise ValueError(f"local part longer than {MAX_LOCAL_PART} octets: {address!r}")
    result = f"{local}@{normalize_domain(domain)}"
    if len(result.encode("utf-8")) > MAX_ADDRESS:
        raise ValueError(f"address longer than {MAX_ADDRESS} octets: {address!r}")
    return result


def suppression_form(address: str) -> str:
    """The form the suppression hash is taken of: the local part case-folded too.

    RFC 5321 lets a server tell Jane@ from jane@, but no real mailbox does, and an objection
    must not be dodged by changing the case of a letter.
    """
    local, _, domain = address.rpartition("@")
    if not local.isascii():
        local = _caseless(unicodedata.normalize("NFC", local).casefold())
    return f"{local.casefold()}@{domain.lower()}"


def _caseless(folded: str) -> str:
    """A case-folded local part in one form whatever the case it was written in. Folding
    can leave an NFC string un-normalised, and differently for each case: "ΐ" (U+0390)
    folds to ι + U+0308 + U+0301, its capital (U+03AA U+0301) to U+03CA + U+0301, the same
    text in another form, so another hash: an objection written in capitals did not stop the
    mail. Such a result is decomposed (NFD), which makes the two one; a folded string in
    NFC, nearly every address, is kept as it is, so no stored hash changes. (Left: ᾷ, ῇ, ῷ,
    whose capitals fold to two letters.)"""
    return folded if unicodedata.is_normalized("NFC", folded) \
        else unicodedata.normalize("NFD", folded)


def person_form(address: str) -> str:
    """The form one person's rows are matched on (`gateway subject`, the retention purge):
    the local part NFC and lower-cased, the domain lower-case.

    Lower-cased, not case-folded as the suppression form is: casefold() makes straße@ and
    strasse@ (and ﬁ@ and fi@) one string, and they are two mailboxes, two people. An objection
    by one suppresses both (the safe side, and the hash cannot tell them apart), but an access
    request must not show the other's data, nor an erasure delete it."""
    local, _, domain = address.rpartition("@")
    if not local.isascii():
        # (computed, never stored: NFC again, whatever lower() left)
        local = unicodedata.normalize("NFC", unicodedata.normalize("NFC", local).lower())
    return f"{local.lower()}@{domain.lower()}"


def subject_form(stored: object) -> object:
    """The person form of an address as some table stores it (a RCPT as given, a request's
    address), for matching one person's rows; text that is no address is just lower-cased.
    Registered in SQL as subject_form(): SQLite's lower() folds ASCII only, so
    lower(recipient) never matched JOSÉ@. Anything not text comes back as is."""
    if not isinstance(stored, str):
        return stored
    try:
        return person_form(normalize_address(stored))
    except ValueError:
        return stored.lower()
