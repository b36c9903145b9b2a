"""Header-block edits done on raw bytes (no parse and re-serialise of the whole message).

Input has CRLF line ends. A field is its first line plus the folded lines that follow it.
"""

from __future__ import annotations

from email.header import decode_header, make_header

STEERING_PREFIX = "x-gateway-"
CAMPAIGN_TOPICS = "x-gateway-campaign-topics"
PRODUCT_CATEGORY = "x-gateway-product-category"


def header_end(content: bytes) -> int:
    """Offset just past the blank line that ends the header block (len(content) if none)."""
    if content.startswith(b"\r\n"):
        return 2
    end = content.find(b"\r\n\r\n")
    return len(content) if end < 0 else end + 4


def take_fields(content: bytes, prefix: str) -> tuple[bytes, list[tuple[str, str]]]:
    """Remove every header field whose name starts with `prefix` (case-insensitive).

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
        dropping = bool(colon) and field.strip().lower().startswith(prefix.encode())
        if dropping:
            taken.append((field.strip().lower().decode("ascii", "replace"),
                          body.strip().decode("utf-8", "replace")))
        else:
            kept.append(line)
    return b"\r\n".join(kept) + content[end:], taken


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
    except (ValueError, LookupError, UnicodeError):
        text = raw
    text = "".join(c if c.isprintable() else " " for c in text)
    return text[:limit]


def tag_list(value: str) -> frozenset[str]:
    """ "a; B ;c" -> {"a", "b", "c"}: the X-Gateway-* list syntax, like the CSV's."""
    return frozenset(t.strip().lower() for t in value.split(";") if t.strip())
