"""Header-block edits done on raw bytes (no parse and re-serialise of the whole message).

Input has CRLF line ends. A field is its first line plus the folded lines that follow it.
"""

from __future__ import annotations

import re
from email.errors import MessageError
from email.header import decode_header, make_header
from email.utils import formatdate, parsedate_to_datetime

from gateway.model import tag_key

# RFC 5322 3.6.4: one msg-id <left@right>, no blank, one @, with comments (CFWS) around it
# ("<a@b> <c@d> junk" and "<x@y@z>" are not); a folded field is unfolded with a blank
_COMMENTS = r"\s*(?:\([^()]*\)\s*)*"
_MESSAGE_ID = re.compile(rf"{_COMMENTS}<[^<>\s@]+@[^<>\s@]+>{_COMMENTS}")
STEERING_PREFIX = "x-gateway-"
CAMPAIGN_TOPICS = "x-gateway-campaign-topics"
PRODUCT_CATEGORY = "x-gateway-product-category"


def header_end(content: bytes) -> int:
    """Offset just past the blank line that ends the header block (len(content) if none)."""
    if content.startswith(b"\r\n"):
        return 2
    end = content.find(b"\r\n\r\n")
    return len(content) if end < 0 else end + 4


def take_fields(content: bytes, prefix: str,
                exact: bool = False) -> tuple[bytes, list[tuple[str, str]]]:
    """Remove every header field whose name starts with `prefix` (case-insensitive; with
    `exact`, whose name is `prefix`).

    Returns the message without them and the removed (lower-case name, unfolded value) pairs;
    the same bytes object when there is none (the usual case costs one search).
    """
    end = header_end(content)
    head = content[:end]
    if prefix.encode() not in head.lower():
        return content, []
    kept: list[bytes] = []
    taken: list[tuple[str, str]] = []
    dropping = False
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if dropping:
                name, value = taken[-1]
                taken[-1] = (name, value + " " + line.strip().decode("utf-8", "replace"))
            else:
                kept.append(line)
            continue
        field, colon, body = line.partition(b":")
        lowered = field.strip().lower()
        dropping = bool(colon) and (lowered == prefix.encode() if exact
                                    else lowered.startswith(prefix.encode()))
        if dropping:
            taken.append((field.strip().lower().decode("ascii", "replace"),
                          body.strip().decode("utf-8", "replace")))
        else:
            kept.append(line)
    return b"\r\n".join(kept) + content[end:], taken


def drop_blind_copies(content: bytes) -> bytes:
    """The message without its Bcc and Resent-Bcc fields, as Postfix's cleanup takes them
    out: each recipient gets a copy of their own, and the tool's list of hidden recipients
    would name the other prospects to every one of them. One search in the usual case."""
    if b"bcc" not in content[:header_end(content)].lower():
        return content
    for name in ("bcc", "resent-bcc"):
        content, _ = take_fields(content, name, exact=True)
    return content


def field_value(content: bytes, name: str) -> str | None:
    """The unfolded raw value of the first field called `name`, or None."""
    head = content[:header_end(content)].decode("utf-8", "surrogateescape")
    wanted = name.lower()
    value: str | None = None
    for line in head.split("\r\n"):
        if line[:1] in (" ", "\t"):
            if value is not None:
                value += " " + line.strip()
            continue
        if value is not None:
            return value
        field, colon, rest = line.partition(":")
        if colon and field.strip().lower() == wanted:
            value = rest.strip()
    return value


def display_subject(content: bytes, limit: int = 200) -> str:
    """The Subject decoded from RFC 2047 for display and records; control characters removed."""
    raw = field_value(content, "subject") or ""
    try:
        text = str(make_header(decode_header(raw)))
    except (ValueError, LookupError, UnicodeError, MessageError):
        text = raw
    text = "".join(c if c.isprintable() else " " for c in text)
    return text[:limit]


def tag_list(value: str) -> frozenset[str]:
    """ "a; B ;c" -> {"a", "b", "c"}: the X-Gateway-* list syntax, like the CSV's. RFC 2047
    encoded words are decoded first (what Python's email.header writes for "Études": the
    topic was "=?utf-8?b?...?=", R10 for every recipient)."""
    if "=?" in value:
        try:
            decoded = str(make_header(decode_header(value)))
        except (ValueError, LookupError, UnicodeError, MessageError):
            pass
        else:  # an encoded CR, LF or escape is no part of a topic (it is stored, and shown)
            value = "".join(c if c.isprintable() else " " for c in decoded)
    return frozenset(tag_key(t) for t in value.split(";") if t.strip())


UNSUBSCRIBE = "list-unsubscribe"
UNSUBSCRIBE_POST = "list-unsubscribe-post"
ONE_CLICK = "List-Unsubscribe=One-Click"  # RFC 8058 section 3.1
MAX_FIELD_LINE = 998  # RFC 5322 2.1.1


class UnsafeHeader(ValueError):
    """A value we were about to write would forge a header (CR, LF, NUL) or break a line."""


# RFC 5321 6.3: a relay detects a loop by counting Received fields, at no fewer than 100
# hops; Postfix's hopcount_limit is 50, and so is ours. Past it the message has gone round
# between relays (a smarthost handing mail back into trusted_clients) and would go on for
# ever, a copy and an audit record at each turn.
HOP_LIMIT = 50
_RECEIVED = re.compile(rb"(?im)^received[ \t]*:")


def too_many_hops(content: bytes) -> bool:
    """Whether the header holds HOP_LIMIT Received fields or more, in any case (one C-level
    count first: a message through a few relays is not searched)."""
    head = content[:header_end(content)]
    return head.lower().count(b"received") >= HOP_LIMIT and \
        len(_RECEIVED.findall(head)) >= HOP_LIMIT


def safe_field(name: str, value: str) -> bytes:
    """`Name: value` + CRLF, refusing anything that could open a new field.

    Every field the gateway writes goes through here: Python's email package had header
    injection bugs (CVE-2024-6923) and this interpreter is not patched, so nothing relies on
    it for output.
    """
    line = f"{name}: {value}"
    if any(c in line for c in "\r\n\x00") or not line.isascii() or not line.isprintable():
        raise UnsafeHeader(f"refusing to write {name}: {value!r}")
    if len(line) > MAX_FIELD_LINE:
        raise UnsafeHeader(f"{name} longer than {MAX_FIELD_LINE} octets")
    return line.encode("ascii") + b"\r\n"


def utc_date(timestamp: float) -> str:
    """An RFC 5322 date-time in UTC, "+0000": formatdate's "-0000" says the zone is unknown
    (RFC 5322 3.3), and "GMT" is obsolete syntax a generator must not write."""
    return formatdate(timestamp)[:-5] + "+0000"


def trace_field(client_ip: str, hostname: str, queue_id: str, recipient: str,
                when: str, helo: str | None = None, protocol: str | None = None) -> bytes:
    """The Received field a relay puts on top of what it passes on (RFC 5321 4.4: a MUST;
    the next hops count them against loops, and an operator greps the queue id):
    `from helo ([ip]) by hostname with PROTOCOL id QUEUEID for <rcpt>; date`. The client's
    EHLO name only as a plain host name or address literal (it is the client's text)."""
    literal = (f"[IPv6:{client_ip}]" if ":" in client_ip else f"[{client_ip}]"
               if client_ip.isascii() and client_ip.isprintable() and client_ip else "")
    name = trace_name(helo) or literal
    source = f"{name} ({literal})" if literal else "unknown"
    with_ = protocol if protocol in TRACE_PROTOCOLS else "ESMTP"
    to = (f" for <{recipient}>" if recipient.isascii() and recipient.isprintable()
          and " " not in recipient else "")  # (an address beyond ASCII: not in a 7-bit field)
    return safe_field("Received", f"from {source} by {hostname} with {with_} id {queue_id}{to};"
                                  f" {when}")


def trace_name(helo: str | None) -> str:
    """The client's EHLO/HELO name if it is a plain host name or address literal, else "":
    what a Received field names and what is stored with the message (a name with bytes that
    were not UTF-8, a lone surrogate from aiosmtpd, could not even be written to SQLite)."""
    return helo if helo and len(helo) <= 255 and _HELO_NAME.fullmatch(helo) else ""


# RFC 3848 and RFC 6531 7.1: what the session was (TLS: S, logged in: A)
TRACE_PROTOCOLS = frozenset(f"{base}{tls}{auth}" for base in ("ESMTP", "UTF8SMTP")
                            for tls in ("", "S") for auth in ("", "A"))
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
# (each label after a dot: no two ways to split a name, so no backtracking on a long one)
_HELO_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?|\[(?:IPv6:)?[0-9A-Fa-f:.]{{2,45}}\]")


def trace_protocol(smtputf8: bool, tls: bool, authenticated: bool) -> str:
    """The `with` of a Received field for a session (TRACE_PROTOCOLS)."""
    return f"{'UTF8SMTP' if smtputf8 else 'ESMTP'}{'S' if tls else ''}" \
           f"{'A' if authenticated else ''}"


def set_unsubscribe(content: bytes, https_url: str, mailto: str) -> bytes:
    """Replace any List-Unsubscribe / List-Unsubscribe-Post the tool set with ours: exactly
    one HTTPS URI and one mailto, and the one-click field (RFC 2369, RFC 8058)."""
    content, _ = take_fields(content, UNSUBSCRIBE)  # also takes list-unsubscribe-post
    return append_fields(content, safe_field("List-Unsubscribe",
                                             f"<{https_url}>, <mailto:{mailto}>")
                         + safe_field("List-Unsubscribe-Post", ONE_CLICK))


# a signature or verdict of the message as the tool wrote it, before the notice and our own
# DKIM: each then fails (arc=fail, a broken DKIM-Signature beside ours), and a client's
# Authentication-Results would go out under our name (RFC 8601 5: remove them)
_EARLIER_VERDICTS = ((b"dkim-signature", True), (b"authentication-results", True),
                     (b"arc-", False))


def drop_earlier_signatures(content: bytes) -> bytes:
    """The message without the DKIM-Signature, ARC-* and Authentication-Results fields the
    tool (or a hop before it) set: three searches of the header in the usual case."""
    head = content[:header_end(content)].lower()
    for name, exact in _EARLIER_VERDICTS:
        if name in head:
            content, _ = take_fields(content, name.decode(), exact=exact)
    return content


def _valid_date(value: str) -> bool:
    """An RFC 5322 date-time that names a real moment: parsedate_tz alone took hour 25,
    31 February and a zone of +9999."""
    try:
        parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return False
    return True


def ensure_identity_fields(content: bytes, message_id: str, date: str) -> bytes:
    """Add Message-ID and Date when the tool left them out (RFC 5322 3.6: Date is required,
    Message-ID should be there; receivers and DKIM over-signing expect both)."""
    missing = b""
    given = field_value(content, "message-id")
    if given is not None and not _MESSAGE_ID.fullmatch(given):
        # "Message-ID:" empty or not an id: an invalid message to receivers (Gmail refuses
        # mail that is not RFC 5322), so it is replaced as if left out
        content, _ = take_fields(content, "message-id", exact=True)
        given = None
    if given is None:
        missing += safe_field("Message-ID", message_id)
    given = field_value(content, "date")
    if given is not None and not _valid_date(given):  # "Date: yesterday"
        content, _ = take_fields(content, "date", exact=True)
        given = None
    if given is None:
        missing += safe_field("Date", date)
    if not missing:
        return content
    return append_fields(content, missing)


def append_fields(content: bytes, added: bytes) -> bytes:
    """`added` (whole fields) after the header's last field: in front, they split the
    client's trace block (RFC 5322 3.6: Received fields stay together on top)."""
    end = header_end(content)
    head, body = content[:end], content[end:]
    if head.endswith(b"\r\n\r\n"):
        return head[:-2] + added + b"\r\n" + body
    if not head or head == b"\r\n":
        return added + head + body
    return head + (b"" if head.endswith(b"\r\n") else b"\r\n") + added + b"\r\n" + body
