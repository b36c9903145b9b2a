"""Skip aiosmtplib's two regex passes over content that is already wire-ready.

aiosmtplib's DATA path runs `normalize_message_line_endings` (a regex substitution of every line
end) and `PERIOD_REGEX.sub` (dot-stuffing) on every message: ~0.28 ms for a 20 KB copy, about
an eighth of the gateway's whole CPU per copy (bench/README.md). Our copies already have CRLF
line ends (normalised once at DATA, transform/lines.py) and rarely a line starting with a dot,
so three C-level counts prove there is nothing to do. When there is, the library's own code
runs. Same results byte for byte (tests/delivery/test_fastdata.py checks them against the
originals); if a future aiosmtplib renames these, `install()` leaves it untouched.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

import aiosmtplib.protocol

log = logging.getLogger(__name__)


class _FastPeriodRegex:
    """Stands in for aiosmtplib's `(?m)^\\.` pattern: no line starts with a dot, no work."""

    def __init__(self, pattern: re.Pattern[bytes]) -> None:
        self.pattern = pattern

    def sub(self, repl: bytes, message: bytes, count: int = 0) -> bytes:
        if not message.startswith(b".") and b"\n." not in message:
            return message
        return self.pattern.sub(repl, message, count)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pattern, name)


def fast_normalizer(original: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
    def normalize(message: bytes) -> bytes:
        crlf = message.count(b"\r\n")
        if (message.endswith(b"\r\n") and message.count(b"\r") == crlf
                and message.count(b"\n") == crlf):
            return message
        return original(message)

    normalize.__wrapped__ = original  # type: ignore[attr-defined]
    return normalize


def install() -> bool:
    """Patch aiosmtplib.protocol once; False (and nothing changed) if its names moved."""
    module: Any = aiosmtplib.protocol
    normalize = getattr(module, "normalize_message_line_endings", None)
    period = getattr(module, "PERIOD_REGEX", None)
    if not callable(normalize) or not isinstance(period, re.Pattern | _FastPeriodRegex):
        log.warning("aiosmtplib's DATA helpers have moved: fast path not installed")
        return False
    if not hasattr(normalize, "__wrapped__"):
        module.normalize_message_line_endings = fast_normalizer(normalize)
    if isinstance(period, re.Pattern):
        module.PERIOD_REGEX = _FastPeriodRegex(period)
    return True
