"""Every SMTP reply the gateway gives, with its RFC 3463 enhanced status code.

tests/smtp/test_replies.py checks each against the RFC grammar: a 2xx/4xx/5xx basic code and
an enhanced code whose class digit matches it.
"""

from __future__ import annotations

import re

AUTH_REQUIRED = "530 5.7.0 Authentication required"
AUTH_OK = "235 2.7.0 Authentication successful"
AUTH_INVALID = "535 5.7.8 Authentication credentials invalid"
AUTH_LOCKED = "454 4.7.0 Account temporarily locked after repeated failures, try again later"
AUTH_NEEDS_TLS = "538 5.7.11 Encryption required for requested authentication mechanism"
AUTH_BAD_BASE64 = "501 5.5.2 Cannot decode base64"
AUTH_BAD_PLAIN = "501 5.5.2 Cannot split AUTH PLAIN value"

SENDER_OK = "250 2.1.0 Sender OK"
SENDER_NOT_ALLOWED = "550 5.7.1 M1 Sender address not allowed for this account"
RECIPIENT_OK = "250 2.1.5 Recipient OK"
BAD_ADDRESS = "501 5.1.3 Bad address syntax"
NULL_SENDER = "550 5.7.1 M1 A null sender (<>) is not accepted from an account: name the sender"
NEEDS_SMTPUTF8 = "553 5.6.7 An address beyond ASCII needs the SMTPUTF8 parameter on MAIL"
SOURCE_ROUTE = "501 5.1.3 Source routes and %-hack addresses are not accepted"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
TOO_MANY_HOPS = "554 5.4.6 Too many hops: a mail loop (RFC 5321 6.3)"
NEED_RECIPIENT = "503 5.5.1 Need RCPT command first"
DATA_SYNTAX = "501 5.5.4 Syntax: DATA (no parameters)"
BAD_AUTH_PARAMETER = "501 5.5.4 Malformed AUTH= parameter (RFC 4954 5)"
AUTH_IN_TRANSACTION = "503 5.5.1 AUTH not allowed during a mail transaction"
TLS_ALREADY_ACTIVE = "554 5.5.1 TLS already active"  # Postfix's words (RFC 3207 4.2)
STARTTLS_SYNTAX = "501 5.5.4 Syntax: STARTTLS"

QUEUED = "250 2.0.0 {queue_id} Message accepted for delivery"

CANNOT_COMMIT = "451 4.3.0 Cannot store the message now, try again later"
INTERNAL_ERROR = "451 4.3.0 Internal error, try again later"
BARE_NEWLINE = "521 5.5.2 Bare CR or LF received; lines must end with CRLF"
LINE_TOO_LONG = "500 5.5.2 Line too long (RFC 5321 4.5.3.1.6)"
TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections from your address, try again later"
SERVER_FULL = "421 4.7.0 Too many connections, try again later"
SHUTTING_DOWN = "421 4.3.2 Service shutting down, try again later"
IDLE_TIMEOUT = "421 4.4.2 Idle too long, closing connection"
TOO_MANY_ERRORS = "421 4.7.0 Too many errors, closing connection"  # as Postfix

# aiosmtpd's own replies that lack an enhanced status code, rewritten on the way out.
AIOSMTPD_REWRITES: dict[bytes, bytes] = {
    b"552 Error: Too much mail data": b"552 5.3.4 Message size exceeds fixed maximum size",
    b"552 Error: message size exceeds fixed maximum message size":
        b"552 5.3.4 Message size exceeds fixed maximum size",
    b"500 Line too long (see RFC5321 4.5.3.1.6)": LINE_TOO_LONG.encode(),
    b"500 Command line too long": b"500 5.5.2 Command line too long",
    b"500 Error: bad syntax": b"500 5.5.2 Syntax error",
    b"553 5.1.3 Error: malformed address": b"501 5.1.3 Bad address syntax",
    b"503 Error: need MAIL command": b"503 5.5.1 Need MAIL command first",
    b"503 Error: need RCPT command": b"503 5.5.1 Need RCPT command first",
    b"503 Error: nested MAIL command": b"503 5.5.1 Nested MAIL command",
    b"503 Error: send HELO first": b"503 5.5.1 Send HELO first",
    b"503 Error: send EHLO first": b"503 5.5.1 Send EHLO first",
    b"502 EXPN not implemented": b"502 5.5.1 EXPN not implemented",
    b"501 Error: BODY can only be one of 7BIT, 8BITMIME":
        b"501 5.5.4 BODY can only be 7BIT or 8BITMIME here",
    b"250 OK": b"250 2.0.0 OK",
    b"501 Syntax: EHLO hostname": b"501 5.5.4 Syntax: EHLO hostname",
    b"501 Syntax: HELO hostname": b"501 5.5.4 Syntax: HELO hostname",
    b"501 Syntax: DATA": b"501 5.5.4 Syntax: DATA",
    b"501 Syntax: QUIT": b"501 5.5.4 Syntax: QUIT",
    b"501 Syntax: RSET": b"501 5.5.4 Syntax: RSET",
    b"501 Syntax: VRFY <address>": b"501 5.5.4 Syntax: VRFY <address>",
    b"503 Already authenticated": b"503 5.5.1 Already authenticated",
    b"555 MAIL FROM parameters not recognized or not implemented":
        b"555 5.5.4 MAIL FROM parameters not recognized or not implemented",
    b"555 RCPT TO parameters not recognized or not implemented":
        b"555 5.5.4 RCPT TO parameters not recognized or not implemented",
    b"454 TLS not available": b"454 4.7.0 TLS not available",
    b"530 Must issue a STARTTLS command first": b"530 5.7.0 Must issue a STARTTLS command first",
    b"554 Command refused due to lack of security":
        b"554 5.7.0 Command refused due to lack of security",
    b"501 Error: SMTPUTF8 disabled": b"501 5.5.4 SMTPUTF8 is not enabled",
    b"501 Error: SMTPUTF8 takes no arguments": b"501 5.5.4 SMTPUTF8 takes no arguments",
    # RFC 5321 3.8: a server closing the connection says 421 first
    b"502 5.5.1 Too many unrecognized commands, goodbye.":
        b"421 4.7.0 Too many unrecognized commands, closing connection",
    b"221 Bye": b"221 2.0.0 Bye",
    b"220 Ready to start TLS": b"220 2.0.0 Ready to start TLS",
    b"252 Cannot VRFY user, but will accept message and attempt delivery":
        b"252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery",
}

_NOT_PRINTABLE_ASCII = re.compile(r"[^ -~]")
# a 4xx/5xx of aiosmtpd's not in the table (dynamic text: an unknown verb, a syntax line):
# given X.5.2 (syntax error) for a 500/501, else X.0.0 (other or undefined), RFC 3463
_NO_ENHANCED_CODE = re.compile(rb"([45])(\d\d) (?![245]\.\d{1,3}\.\d{1,3}\b)")


def with_enhanced_code(reply: bytes) -> bytes:
    """`reply` with an RFC 3463 code after its basic one when it has none."""
    found = _NO_ENHANCED_CODE.match(reply)
    if found is None:
        return reply
    detail = "5.2" if reply[:3] in (b"500", b"501") else "0.0"
    return reply[:4] + found.group(1) + b"." + detail.encode() + b" " + reply[4:]
UNSUBSCRIBE_OK = "250 2.1.5 Unsubscribe address OK"
UNSUBSCRIBE_RECORDED = "250 2.0.0 Unsubscribe request recorded"
NO_SUCH_UNSUBSCRIBE = "550 5.1.1 No such unsubscribe address"
LEDGER_UNAVAILABLE = "451 4.3.0 Cannot check this recipient now, try again later"
MAX_REASON = 400


def policy_reject(rule: str, reason: str) -> str:
    """`550 5.7.1 <rule> <reason>`: printable ASCII only (a reply may not carry CR/LF, and the
    reason can quote ledger text such as a source name), one line of sane length."""
    text = _NOT_PRINTABLE_ASCII.sub("?", f"{rule} {reason}")
    return f"550 5.7.1 {text[:MAX_REASON]}"
