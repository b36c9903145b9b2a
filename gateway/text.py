"""Message text made safe for an operator's terminal: a preview of the text parts, with no
control character (so no terminal escape sequence) from the message ever printed."""

from __future__ import annotations

import html
import re

from gateway.transform.footer import text_parts_decoded

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_TAG = re.compile(r"<(script|style)\b.*?</\1\s*>|<[^>]*>", re.IGNORECASE | re.DOTALL)
PREVIEW_CHARS = 2000


def printable(text: str, keep_newlines: bool = False) -> str:
    """Control characters (ESC, CR, BEL, bidi overrides ...) become spaces; newlines too
    unless `keep_newlines`."""
    if not keep_newlines:
        text = text.replace("\n", " ").replace("\t", " ")
    return _CONTROL.sub(" ", text)


def html_to_text(markup: str) -> str:
    text = _TAG.sub(" ", markup)
    return re.sub(r"[ \t]+", " ", html.unescape(text))


def preview(content: bytes) -> str:
    """The first text/plain part, else the first text/html part rendered to text."""
    parts = text_parts_decoded(content)
    plain = [text for ctype, text in parts if ctype == "text/plain"]
    if plain:
        return plain[0][:PREVIEW_CHARS]
    markup = [text for ctype, text in parts if ctype == "text/html"]
    return html_to_text(markup[0])[:PREVIEW_CHARS] if markup else "(no text part)"


def searchable_text(content: bytes) -> str:
    """What a message says once decoded, for finding an address in it: its header fields
    with their encoded words decoded (RFC 2047), every text part decoded from base64 or
    quoted-printable, and all of it once more with %-escapes undone (a mailto: or a URL).
    For rare, operator-side searches (an erasure's check): it parses the whole message."""
    import email.parser
    import email.policy
    from urllib.parse import unquote

    end = content.find(b"\r\n\r\n")
    head = content[:end + 2] if end >= 0 else content
    texts: list[str] = []
    try:
        fields = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(head)
        texts.extend(str(value) for value in fields.values())
    except Exception:  # noqa: BLE001 - a header the parser cannot decode: the raw text
        texts.append(head.decode("utf-8", "replace"))
    texts.extend(text for _, text in text_parts_decoded(content))
    joined = "\n".join(texts)
    return joined + "\n" + unquote(joined)

