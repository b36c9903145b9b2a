"""The HMAC signature of webhook bodies, both ways: `X-Gateway-Signature: t=<unix seconds>,
v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>` (INTERFACE.md), valid for 300 s."""

from __future__ import annotations

import hashlib
import hmac
import re
import time

WINDOW_SECONDS = 300
# what signature() writes: ASCII digits (not str.isdigit's superscripts, nor thousands of
# them for int() to choke on) and 64 hex digits
_STAMP = re.compile(r"[0-9]{1,12}")
_MAC = re.compile(r"[0-9a-fA-F]{64}")


def signature(secret: bytes, body: bytes, at: float | None = None) -> str:
    stamp = str(int(time.time() if at is None else at))
    mac = hmac.new(secret, stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={mac}"


MAX_MACS = 8  # v1= values tried at most (a sender rotating its secret sends old and new)


def _fields(header: str) -> tuple[str, list[str]]:
    """`t` (the last given) and every `v1`, in order."""
    stamp, macs = "", []
    for item in header.split(","):
        name, _, value = item.strip().partition("=")
        if name.strip() == "t":
            stamp = value.strip()
        elif name.strip() == "v1":
            macs.append(value.strip())
    return stamp, macs


def signed_call(secret: bytes, header: str, body: bytes) -> str:
    """The name of a call signature_ok accepted: the MAC it must carry for its time and
    body (hex), whatever else the header holds, so that the same call sent again is known
    (a junk v1 added in front made the first v1, and so the name, new each time)."""
    stamp = _fields(header)[0]
    return hmac.new(secret, stamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def signature_ok(secret: bytes, header: str | None, body: bytes,
                 now: float | None = None) -> bool:
    """True for a well-formed header, within the window, whose MAC matches (constant time)."""
    if not secret or not header:
        return False
    stamp, macs = _fields(header)
    if _STAMP.fullmatch(stamp) is None or not macs or len(macs) > MAX_MACS or any(
            _MAC.fullmatch(given) is None for given in macs):
        return False
    if abs((time.time() if now is None else now) - int(stamp)) > WINDOW_SECONDS:
        return False
    expected = hmac.new(secret, stamp.encode() + b"." + body, hashlib.sha256).digest()
    # every one compared (constant time, none skipped): one matching is enough, as Stripe
    # lets several v1 through during a rotation
    matched = False
    for given in macs:
        matched |= hmac.compare_digest(expected, bytes.fromhex(given))
    return matched
