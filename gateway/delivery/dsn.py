"""Delivery status notifications (RFC 3464) for copies the gateway gave up on.

A DSN goes from the null sender to the envelope sender of the failed copy. It is built as raw
bytes with CRLF line ends, not with the `email` package's generator: that one is slow and the
Python it runs on lacks fixes for header injection. Instead every value that reaches a header
or a status field goes through `_clean` (no control characters, so no CR/LF/NUL can open a new
header) and `_fold` (no line over 998 octets, RFC 5322 section 2.1.1).
"""

from __future__ import annotations

import math
import re
import secrets
import textwrap
import time

from gateway.addresses import ascii_domain
from gateway.transform.headers import utc_date

STATUS_FORMAT = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
# RFC 3463 / RFC 2034: an enhanced code is the token right after the reply's code, followed
# by a space or the end (as Postfix's dsn_valid reads it); some upstreams give a run of them
# ("554 4.7.1 2.0.0 5.7.26 ..."). Any x.y.z elsewhere in the text (an IP address, a link)
# is no status: "relay 192.5.1.7 listed" made Status 5.1.7.
REPLY_CODE = re.compile(r"\s*[245][0-9][0-9](?:[ -]|$)")
LEADING_STATUS = re.compile(r"\s*([245]\.\d{1,3}\.\d{1,3})(?:\s+|$)")
UNKNOWN_PERMANENT = "5.0.0"
# RFC 3463 X.4.7 "delivery time expired"; Postfix reports expired mail with a 4.x.x status and
# Action: failed as well.
EXPIRED = "4.4.7"
GAVE_UP_PREFIX = "gave up after"
LAST_ERROR = "; last error: "  # in the worker's "gave up after ... h in the queue; last error: ..."

MAX_DIAGNOSTIC = 900  # characters, before "Diagnostic-Code: smtp; "
# A diagnostic that is an SMTP reply ("550 5.1.1 ...") is typed `smtp` (RFC 3464 2.3.6);
# the gateway's own words (an expiry, a copy it could not make compliant) are not one, and
# are typed as Postfix types its own (`X-Postfix;`).
SMTP_REPLY = re.compile(r"[245][0-9][0-9](?:[ -]|$)")
OWN_DIAGNOSTIC_TYPE = "X-Gateway"
MAX_VALUE_OCTETS = 900  # any other field value: well inside the 998-octet line limit
FOLD_AT = 78

# C0, DEL, C1 and the Unicode line/paragraph separators: none belongs in a header field.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_PARTIAL_ESCAPE = re.compile(r"\\(x\{[0-9A-F]*|x[0-9a-f]?|u[0-9a-f]{0,3}|U[0-9a-f]{0,7})?$")
_HOSTNAME = re.compile(r"[^A-Za-z0-9.\-\[\]:]")


def should_send_dsn(mail_from: str) -> bool:
    """False for the null sender and for MAILER-DAEMON: never bounce a bounce (RFC 5321 4.5.5)."""
    address = _bare_address(mail_from)
    if not address:
        return False
    local = address.rpartition("@")[0] if "@" in address else address
    return local.strip('"').casefold() != "mailer-daemon"


def status_for(status: str, diagnostic: str) -> str:
    """The RFC 3463 status: `status` if well formed, else the diagnostic reply's own.

    The reply's enhanced codes are those right after its 3-digit code; of a run of several a
    5.x.x is taken, else the first not of class 2. A code of class 4 in a permanent
    failure's reply is given class 5, as Postfix does when the enhanced code disagrees with
    the reply; a reply without one gives 5.0.0. Expired copies ("gave up after ...") get 4.4.7.
    """
    status = status.strip()
    if STATUS_FORMAT.fullmatch(status):
        return status
    if diagnostic.lstrip().lower().startswith(GAVE_UP_PREFIX):
        return EXPIRED
    codes = [code for code in _leading_statuses(diagnostic) if code[0] != "2"]
    for code in codes:
        if code[0] == "5":
            return code
    if codes:
        return "5" + codes[0][1:]
    return UNKNOWN_PERMANENT


def _leading_statuses(reply: str) -> list[str]:
    """The enhanced codes right after the reply's 3-digit code, in order; none when the text
    is no SMTP reply."""
    code = REPLY_CODE.match(reply)
    if code is None:
        return []
    found: list[str] = []
    at = code.end()
    while token := LEADING_STATUS.match(reply, at):
        found.append(token.group(1))
        at = token.end()
    return found


def build_dsn(*, reporting_mta: str, queue_id: str, mail_from: str, recipient: str,
              status: str, diagnostic: str, arrival_date: float,
              original_headers: bytes, remote_mta: str | None = None) -> bytes:
    """A complete multipart/report DSN for one failed recipient, ready to queue as is.

    `queue_id` is the gateway's id of the original message, given as `X-Gateway-Queue-ID`
    (as Postfix gives `X-Postfix-Queue-ID`): not as `Original-Envelope-Id`, which RFC 3464
    2.2.1 reserves for the sender's ENVID, and the gateway offers no DSN extension.
    `remote_mta`: the host whose reply the diagnostic is (Remote-MTA), if any.
    """
    host = _hostname(reporting_mta)
    sender = _clip(_clean(_bare_address(mail_from)), MAX_VALUE_OCTETS)
    rcpt = _clip(_clean(_bare_address(recipient)), MAX_VALUE_OCTETS)
    reason = _clip(_clean(diagnostic), MAX_DIAGNOSTIC) or "unknown error"
    code = status_for(status, diagnostic)

    explanation = _explanation(host, rcpt, reason, expired=code == EXPIRED)
    remote = _hostname(remote_mta) if remote_mta else ""
    report = _delivery_status(host, _clean(queue_id), arrival_date, rcpt, code, reason,
                              remote)
    headers = _headers_only(original_headers)

    boundary = _boundary(explanation + report + headers)
    parts = [
        _part("text/plain; charset=utf-8", explanation),
        _part("message/delivery-status", report),
        # header fields in UTF-8 (RFC 6532) are message/global-headers (RFC 6533 3.3):
        # text/rfc822-headers is US-ASCII
        _part("text/rfc822-headers" if headers.isascii() else "message/global-headers",
              headers),
    ]
    delimiter = b"--" + boundary.encode("ascii")
    body = b"".join(delimiter + b"\r\n" + part for part in parts) + delimiter + b"--\r\n"
    # A multipart holding an 8bit part is itself 8bit (RFC 2045 6.4).
    encoding = "7bit" if body.isascii() else "8bit"
    top = b"".join([
        _field("From", f"Mail Delivery System <MAILER-DAEMON@{host}>"),
        _field("To", f"<{sender}>"),
        _field("Subject", "Undelivered Mail Returned to Sender"),
        _field("Date", utc_date(time.time())),
        _field("Message-ID", f"<{secrets.token_hex(16)}@{host}>"),
        _field("Auto-Submitted", "auto-replied"),  # RFC 3834: no vacation reply to this
        _field("MIME-Version", "1.0"),
        _field("Content-Type",
               f'multipart/report; report-type=delivery-status; boundary="{boundary}"'),
        _field("Content-Transfer-Encoding", encoding),
    ])
    preamble = b"This is a MIME-encapsulated message.\r\n\r\n"
    return top + b"\r\n" + preamble + body


def needs_smtputf8(dsn: bytes) -> bool:
    """Whether a DSN of build_dsn carries header fields in UTF-8 (its own To, or the
    original's in message/global-headers): it goes with SMTPUTF8 where offered."""
    return b"message/global-headers" in dsn or not dsn[:dsn.find(b"\r\n\r\n")].isascii()


def _explanation(host: str, recipient: str, reason: str, *, expired: bool) -> bytes:
    why = ("The gateway kept retrying until the message expired, then gave up."
           if expired else "The receiving system refused it permanently.")
    lines = [
        f"This is the mail gateway at {host}.",
        "",
        *textwrap.wrap("Your message could not be delivered to the recipient below. "
                       f"{why} This is a permanent failure: it will not be retried.", width=76),
        "",
        *textwrap.wrap(f"<{recipient}>: {reason}", width=76, initial_indent="    ",
                       subsequent_indent="    ", break_on_hyphens=False),
        "",
        "The delivery status report and the headers of your message are attached.",
    ]
    return "".join(line + "\r\n" for line in lines).encode("utf-8")


def _delivery_status(host: str, queue_id: str, arrival_date: float, recipient: str,
                     code: str, reason: str, remote: str) -> bytes:
    """The message/delivery-status body: per-message fields, blank line, per-recipient fields.

    RFC 3464 fields are US-ASCII: other characters are escaped (`\\x{..}` for addresses as in
    RFC 6533, `\\u....` elsewhere) so the part stays 7bit; the text part has them as they are.
    """
    queue_id = _ascii(queue_id, MAX_VALUE_OCTETS)
    reason = _ascii(reason, MAX_DIAGNOSTIC)
    arrived = arrival_date if math.isfinite(arrival_date) and arrival_date > 0 else time.time()
    per_message = [_field("Reporting-MTA", f"dns; {host}")]
    if queue_id:
        per_message.append(_field("X-Gateway-Queue-ID", queue_id))
    per_message.append(_field("Arrival-Date", utc_date(arrived)))
    per_recipient = [
        _field("Final-Recipient", _typed_address(recipient)),
        _field("Action", "failed"),
        _field("Status", code),
    ]
    if remote:
        per_recipient.append(_field("Remote-MTA", f"dns; {remote}"))
    per_recipient.append(_field("Diagnostic-Code", _diagnostic_code(reason)))
    return b"".join(per_message) + b"\r\n" + b"".join(per_recipient)


def _diagnostic_code(reason: str) -> str:
    """`smtp; <reply>` for an SMTP reply, and for an expired copy whose last error was one
    (as Postfix reports the last reply of expired mail; the text part says it expired);
    the gateway's own words otherwise, typed `X-Gateway`."""
    if reason.lower().startswith(GAVE_UP_PREFIX):
        last = reason.partition(LAST_ERROR)[2]
        if SMTP_REPLY.match(last):
            return f"smtp; {last}"
    kind = "smtp" if SMTP_REPLY.match(reason) else OWN_DIAGNOSTIC_TYPE
    return f"{kind}; {reason}"


def _typed_address(address: str) -> str:
    """`rfc822; a@b`, or for an internationalised address RFC 6533's 7-bit `utf-8;` form."""
    if address.isascii():
        return f"rfc822; {address}"
    encoded = dsn_address_form(address)
    if len(encoded) > MAX_VALUE_OCTETS:  # cut, but never inside an escape
        encoded = _PARTIAL_ESCAPE.sub("", encoded[:MAX_VALUE_OCTETS])
    return f"utf-8; {encoded}"


def dsn_address_form(address: str) -> str:
    """RFC 6533 3's 7-bit form of an internationalised address (`jos\\x{E9}@...`), as
    Final-Recipient gives it."""
    return "".join(ch if ch.isascii() and ch not in " \\+=" else f"\\x{{{ord(ch):X}}}"
                   for ch in address)


def _headers_only(original: bytes) -> bytes:
    """The original header block with CRLF line ends; never any of the body."""
    lines = original.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    kept: list[bytes] = []
    for line in lines:
        if not line:
            break
        kept.append(line.replace(b"\0", b" "))
    return b"".join(line + b"\r\n" for line in kept)


def _part(content_type: str, content: bytes) -> bytes:
    encoding = "7bit" if content.isascii() else "8bit"
    return (_field("Content-Type", content_type)
            + _field("Content-Transfer-Encoding", encoding) + b"\r\n" + content + b"\r\n")


def _boundary(content: bytes) -> str:
    while True:
        boundary = f"=_dsn_{secrets.token_hex(16)}"
        if boundary.encode("ascii") not in content:
            return boundary


def _field(name: str, value: str) -> bytes:
    return f"{name}: {_fold(value, len(name) + 2)}\r\n".encode()


def _fold(value: str, used: int) -> str:
    """Fold at spaces so that lines stay near 78 characters (RFC 5322 2.2.3)."""
    words = value.split(" ")
    lines: list[str] = []
    current = words[0]
    width = used
    for word in words[1:]:
        if width + len(current) + 1 + len(word) > FOLD_AT:
            lines.append(current)
            current, width = word, 1  # the continuation line starts with the space
        else:
            current += " " + word
    lines.append(current)
    return "\r\n ".join(lines)


def _clean(value: str) -> str:
    """Control characters become spaces, runs of whitespace one space: one line, no injection."""
    return " ".join(_CONTROL.sub(" ", value).split())


def _ascii(value: str, limit: int) -> str:
    escaped = value.encode("ascii", "backslashreplace").decode("ascii")
    if len(escaped) > limit:
        escaped = _PARTIAL_ESCAPE.sub("", escaped[:limit])
    return escaped


def _clip(value: str, max_octets: int) -> str:
    # "replace": a lone surrogate (a reply decoded with surrogateescape) must not stop the DSN
    return value.encode("utf-8", "replace")[:max_octets].decode("utf-8", "ignore")


def _bare_address(address: str) -> str:
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1].strip()
    return address


def _hostname(name: str) -> str:
    name = _clean(name)
    try:
        name = ascii_domain(name)
    except UnicodeError:
        pass
    return _HOSTNAME.sub("", name)[:253] or "localhost"
