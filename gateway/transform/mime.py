"""A bounded scan of a message's MIME structure: header fields and part boundaries, by offset.

Not a full parser: it finds what the message rules (M2, M3) and the notice insertion need
(content types, dispositions, where each part's header and body start and end) without
decoding or copying bodies. It is iterative with hard limits on depth, parts and header size,
so hostile structure costs bounded time and memory; the stdlib `email` parser costs ~3 ms per
20 KB here and recurses. Input has CRLF line ends (the SMTP side refuses bare CR/LF).
"""

from __future__ import annotations

import re
import unicodedata
import urllib.parse
from dataclasses import dataclass, field
from email.errors import MessageError
from email.header import decode_header, make_header

from gateway.model import MessageFacts

MAX_DEPTH = 32
MAX_PARTS = 1000
MAX_HEADER_BYTES = 256 * 1024  # Postfix header_size_limit is 100 KB
CRLF = b"\r\n"
SIGNED_OR_ENCRYPTED = frozenset({
    "multipart/signed", "multipart/encrypted", "application/pkcs7-mime",
    "application/x-pkcs7-mime",
})
TEXT_BODY_TYPES = frozenset({"text/plain", "text/html"})
# Text alternatives a reader may show instead of the plain and HTML ones, where no notice is
# written: AMP (validated as a whole), a watch's HTML, text/enriched (Apple Mail shows it),
# markdown ... every text/* but these. A calendar part is an invitation, not the body.
DECORATED_OR_KEPT_ALTERNATIVES = TEXT_BODY_TYPES | {"text/calendar"}


def undecorated_alternative(content_type: str) -> bool:
    """Whether an alternative of this type is left out of the copy (footer.py)."""
    return content_type.startswith("text/") and \
        content_type not in DECORATED_OR_KEPT_ALTERNATIVES
_ONCE_PER_PART = ("content-type", "content-transfer-encoding", "content-disposition")
# RFC 5322 3.6: at most once per message. Given twice, readers pick different ones (the
# records and M3 read the first Subject), and receivers refuse the copy after our 250
# (Gmail: "not RFC 5322 compliant ... duplicate headers"). From twice is M1, at DATA.
_ONCE_PER_MESSAGE = frozenset(("date", "from", "sender", "reply-to", "to", "cc", "bcc",
                               "message-id", "in-reply-to", "references", "subject"))
_FIELD_NAME = re.compile("[!-9;-~]+")


class Malformed(ValueError):
    """The structure cannot be rewritten safely; the message says why."""


@dataclass
class Part:
    """One MIME entity: header fields (name lower-cased, value unfolded) and byte offsets."""

    start: int  # first byte of the header block
    body_start: int
    end: int  # one past the last body byte
    fields: list[tuple[str, str]]
    content_type: str = "text/plain"
    params: dict[str, str] = field(default_factory=dict)
    children: list[Part] = field(default_factory=list)

    def get(self, name: str) -> str | None:
        for key, value in self.fields:
            if key == name:
                return value
        return None

    @property
    def is_attachment(self) -> bool:
        disposition = (self.get("content-disposition") or "").split(";", 1)[0]
        return disposition.strip().lower() == "attachment"

    @property
    def file_name(self) -> str | None:
        """The name a part of a multipart is given as a file (Content-Disposition's
        `filename`, or the older Content-Type `name`; RFC 2231 forms as written), or None:
        readers list a named part as a file, even `inline`."""
        if self.start == 0:
            return None
        disposition = self.get("content-disposition")
        names = parse_content_type(disposition, "inline")[1] if disposition else {}  # (its
        # parameters were read once by scan: a second filename is Malformed there)
        for params in (names, self.params):
            for key, value in params.items():
                if key.startswith(("filename", "name")):
                    return value
        return None

    def walk(self) -> list[Part]:
        """This part and every descendant, depth first, without recursion."""
        out: list[Part] = []
        stack = [self]
        while stack:
            part = stack.pop()
            out.append(part)
            stack.extend(reversed(part.children))
        return out


def body_text_parts(root: Part) -> list[Part]:
    """The text/plain and text/html parts a reader shows as the message (the notice goes in
    each): not those disposed as attachments, nor named files (a CSV sent inline, which the
    notice would corrupt). An alternative of a multipart/alternative is the body whatever
    its name; and a message with no other text keeps a named part that reads as a body
    (`body.txt`, `message.html`, no extension) as its body, not a data file (M3 then)."""
    found: list[Part] = []
    named: list[Part] = []
    stack: list[tuple[Part, bool]] = [(root, False)]
    while stack:
        part, alternative = stack.pop()
        stack.extend((child, part.content_type == "multipart/alternative")
                     for child in reversed(part.children))
        if part.content_type not in TEXT_BODY_TYPES or part.is_attachment:
            continue
        name = None if alternative else part.file_name
        if name is None:
            found.append(part)
        elif _BODY_FILE.search(name) or "." not in name:
            named.append(part)
    return found or named


_BODY_FILE = re.compile(r"\.(?:txt|text|html?)\W*$", re.IGNORECASE)


def parse_fields(block: str) -> list[tuple[str, str]]:
    """Header fields of a block (no trailing blank line); Malformed on a line without a colon."""
    fields: list[tuple[str, str]] = []
    for line in block.split("\r\n"):
        if not line:
            continue
        if line[0] in " \t":
            if not fields:
                raise Malformed("header block starts with a continuation line")
            name, value = fields[-1]
            fields[-1] = (name, value + " " + line.strip())
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise Malformed(f"header line without a field name: {line[:40]!r}")
        if not _FIELD_NAME.fullmatch(name):  # RFC 5322 2.2: printable US-ASCII but ":"
            # (DKIM signers refuse the rest: the copy could never be signed and sent)
            raise Malformed(f"a header field name that is not printable ASCII: {name[:40]!r}")
        fields.append((name.lower(), value.strip()))
    return fields


def parse_content_type(value: str | None, default: str) -> tuple[str, dict[str, str]]:
    """('type/subtype', {param: value}) with quotes removed; the default when absent or bad."""
    if not value:
        return default, {}
    if "(" in value:
        value = _strip_comments(value)
    main, _, rest = value.partition(";")
    ctype = main.strip().lower()
    if ctype.count("/") != 1:
        ctype = default
    params: dict[str, str] = {}
    while rest:
        rest = rest.lstrip(" \t;")
        name, eq, rest = rest.partition("=")
        if not eq:
            break
        rest = rest.lstrip()
        if rest.startswith('"'):
            chars: list[str] = []
            i = 1
            while i < len(rest) and rest[i] != '"':
                if rest[i] == "\\" and i + 1 < len(rest):
                    i += 1
                chars.append(rest[i])
                i += 1
            param, rest = "".join(chars), rest[i + 1:]
        else:
            param, _, rest = rest.partition(";")
            param = param.strip()
        key = name.strip().lower()
        if key in params:
            # one value per parameter (RFC 2045 5.1); readers disagree on which of two
            # counts (Python's email takes the first): a second boundary could move the
            # notice into an attachment, a second charset garble it
            raise Malformed(f"the Content-Type parameter {key!r} is given twice")
        params[key] = param
    for key in _READ_PARAMS:
        if any(name.startswith(key + "*") for name in params):
            _collapse_extended(params, key)
    return ctype, params


# The parameters the gateway reads: given in RFC 2231's extended form (charset*=utf-8''utf-8),
# Python's email and mail readers take that form, and ours took the default beside it (the
# notice garbled, or UTF-8 text held as undecodable under M2)
_READ_PARAMS = ("charset", "boundary")
_SECTION = re.compile(r"\*(\d+)(\*?)$")


def _collapse_extended(params: dict[str, str], key: str) -> None:
    """`key*` or `key*0`, `key*1*`... (RFC 2231 3-4) read into `key`, the extended names
    removed; Malformed when the plain name is given as well (readers disagree on which)."""
    if key in params:
        raise Malformed(f"the Content-Type parameter {key!r} is given twice")
    names = [name for name in params if name.startswith(key + "*")]
    if names == [key + "*"]:
        sections = [("*", params.pop(key + "*"))]
    else:
        numbered = {}
        for name in names:
            found = _SECTION.fullmatch(name, len(key))
            if found is None:
                raise Malformed(f"a Content-Type parameter {name!r} of RFC 2231 unread")
            numbered[int(found.group(1))] = (found.group(2), params.pop(name))
        if sorted(numbered) != list(range(len(numbered))):
            raise Malformed(f"the Content-Type parameter {key!r} has a section missing")
        sections = [numbered[i] for i in range(len(numbered))]
    value = []
    for i, (star, text) in enumerate(sections):
        if star:
            if i == 0:  # charset'language'value; the names read here are ASCII
                parts = text.split("'", 2)
                if len(parts) != 3:
                    raise Malformed(f"the Content-Type parameter {key}* without its charset")
                text = parts[2]
            text = urllib.parse.unquote(text, "latin-1")
        value.append(text)
    params[key] = "".join(value)


def _strip_comments(value: str) -> str:
    """`value` with each RFC 5322 comment ("(Plain text)", nested, with escapes) as a space;
    quoted strings kept as they are. Unbalanced, the value is returned unchanged."""
    out: list[str] = []
    depth, i, n = 0, 0, len(value)
    while i < n:
        c = value[i]
        if depth:
            if c == "\\":
                i += 1
            else:
                depth += (c == "(") - (c == ")")
                if not depth:
                    out.append(" ")
        elif c == "(":
            depth = 1
        elif c == '"':
            end = i + 1
            while end < n and value[end] != '"':
                end += 2 if value[end] == "\\" else 1
            out.append(value[i:end + 1])
            i = end
        else:
            out.append(c)
        i += 1
    return value if depth else "".join(out)


def _header_end(content: bytes, start: int, end: int) -> int:
    """Offset of the body (after the blank line); `end` when the entity has no body."""
    if content.startswith(CRLF, start):
        return start + 2  # no header fields at all
    blank = content.find(b"\r\n\r\n", start, end)
    if blank < 0 and 0 < start < end and not content.endswith(CRLF, start, end):
        # a body part (RFC 2046 5.1.1: the CRLF before the next delimiter is the
        # delimiter's) whose header fields run into that delimiter, no blank line:
        # readers take its last field's end differently; a notice put after it would be
        # read as header lines
        raise Malformed("a MIME part whose header fields are not followed by a blank line")
    return end if blank < 0 else blank + 4


def scan(content: bytes) -> Part:
    """The message's part tree; Malformed when limits are exceeded or structure is broken."""
    parts = 0
    root = _entity(content, 0, len(content), "text/plain")
    stack: list[tuple[Part, int]] = [(root, 0)]
    while stack:
        part, depth = stack.pop()
        parts += 1
        if parts > MAX_PARTS:
            raise Malformed(f"more than {MAX_PARTS} MIME parts")
        if not part.content_type.startswith("multipart/"):
            continue
        if depth >= MAX_DEPTH:
            raise Malformed(f"MIME nesting deeper than {MAX_DEPTH}")
        boundary = part.params.get("boundary", "")
        if not boundary or len(boundary) > 200:
            raise Malformed(f"{part.content_type} without a usable boundary")
        if not boundary.isascii():  # RFC 2046 5.1.1: bchars are ASCII; read here
            # with surrogateescape, it could not even be encoded back to split the body
            raise Malformed(f"{part.content_type} with a boundary beyond ASCII")
        if boundary[-1] in " \t":  # RFC 2046 5.1.1: readers strip a delimiter line's
            # trailing blanks (transport padding), so they disagree on where parts end
            raise Malformed(f"{part.content_type} with a boundary that ends with a space")
        default = "message/rfc822" if part.content_type == "multipart/digest" else "text/plain"
        for start, end in _split(content, part.body_start, part.end, boundary.encode()):
            child = _entity(content, start, end, default)
            part.children.append(child)
            stack.append((child, depth + 1))
            if len(part.children) > MAX_PARTS:
                raise Malformed(f"more than {MAX_PARTS} MIME parts")
    return root


def _entity(content: bytes, start: int, end: int, default: str) -> Part:
    body_start = _header_end(content, start, end)
    if body_start - start > MAX_HEADER_BYTES:
        raise Malformed(f"header block larger than {MAX_HEADER_BYTES} bytes")
    block = content[start:body_start].decode("utf-8", "surrogateescape")
    fields = parse_fields(block)
    content_fields = [k for k, _ in fields if k.startswith("content-")]
    if len(content_fields) > len(set(content_fields)):
        for name in _ONCE_PER_PART:
            if content_fields.count(name) > 1:
                # readers disagree on which counts (Python's email the first, nodemailer
                # and Delta Chat the last): the notice could land where the reader never
                # looks, a base64 attachment be shown raw
                raise Malformed(f"the {name} field is given twice in one MIME part")
    ctype, params = parse_content_type(
        next((v for k, v in fields if k == "content-type"), None), default)
    disposition = next((v for k, v in fields if k == "content-disposition"), None)
    if disposition is not None and "name" in disposition.lower():
        parse_content_type(disposition, "inline")  # a file name given twice: Malformed (M2)
    return Part(start, body_start, end, fields, ctype, params)


def _split(content: bytes, start: int, end: int, boundary: bytes,
           limit: int = MAX_PARTS + 1) -> list[tuple[int, int]]:
    """(start, end) of each body part between `--boundary` delimiter lines (RFC 2046 5.1.1).

    The CRLF before a delimiter belongs to the delimiter, not to the part before it.
    """
    delimiter = b"--" + boundary
    if content.startswith(delimiter, start):
        pos = start
    else:
        found = content.find(CRLF + delimiter, start, end)
        if found < 0:
            raise Malformed("multipart body without any boundary delimiter")
        pos = found + 2
    spans: list[tuple[int, int]] = []
    while len(spans) < limit:  # pos is at the start of a delimiter line
        after = pos + len(delimiter)
        if content.startswith(b"--", after):
            return spans  # the close delimiter; what follows is the epilogue
        line_end = content.find(CRLF, after, end)
        if line_end < 0:
            return spans
        part_start = line_end + 2
        nxt = content.find(CRLF + delimiter, line_end, end)
        if nxt < 0:  # no close delimiter: the last part runs to the end (lenient, as MUAs are)
            spans.append((part_start, end))
            return spans
        spans.append((part_start, max(part_start, nxt)))
        pos = nxt + 2
    return spans


def message_facts(content: bytes) -> MessageFacts:
    """What M2 and M3 need: subject, a text body to inform in, signatures, breakage."""
    try:
        root = scan(content)
    except Malformed as exc:
        return MessageFacts(has_subject=True, has_text_body=True, malformed=str(exc))
    return facts_of(root)


def facts_of(root: Part) -> MessageFacts:
    """message_facts of an already scanned message."""
    subject = root.get("subject")
    signed = next((part.content_type for part in root.walk()
                   if part.content_type in SIGNED_OR_ENCRYPTED), None)
    # (message/rfc822 is not descended: forwarded mail is content.) M3 reads the parts the
    # notice goes in: a message whose only text is a data file has none
    return MessageFacts(has_subject=bool(subject) and _visible(subject or ""),
                        has_text_body=bool(body_text_parts(root)), signed_or_encrypted=signed,
                        malformed=_repeated_field(root))


def _visible(subject: str) -> bool:
    """Whether a Subject shows anything, once decoded (RFC 2047): "=?utf-8?q?_?=" is a
    space, "=?utf-8?b?4oCL?=" a zero-width one. Spaces, controls and format characters (Cf:
    zero-width, BOM, word joiner) are not seen; an encoded word that does not decode counts
    as it is written."""
    text = subject
    if "=?" in subject:
        try:
            text = str(make_header(decode_header(subject)))
        except (ValueError, LookupError, UnicodeError, MessageError):
            pass
    return any(not char.isspace() and unicodedata.category(char) not in ("Cc", "Cf", "Zs")
               for char in text)


def _repeated_field(root: Part) -> str | None:
    seen: set[str] = set()
    for name, _ in root.fields:
        if name in _ONCE_PER_MESSAGE:
            if name in seen:
                return f"the {name} field is given twice (RFC 5322 3.6: once at most)"
            seen.add(name)
    return None
