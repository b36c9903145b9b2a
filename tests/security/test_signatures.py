"""The webhook signature header (INTERFACE.md): what signature() writes is accepted within the
window; anything else is refused with False, never an exception (the route answers 401)."""

from __future__ import annotations

import time

import pytest

from gateway.security.signatures import WINDOW_SECONDS, signature, signature_ok

SECRET = b"s" * 32
BODY = b'{"email":"jane@example.net"}'


def test_a_fresh_signature_is_accepted_and_any_change_refused():
    header = signature(SECRET, BODY)
    assert signature_ok(SECRET, header, BODY)
    assert signature_ok(SECRET, header.upper().replace("T=", "t=").replace("V1=", "v1="), BODY)
    assert not signature_ok(SECRET, header, BODY + b" ")
    assert not signature_ok(b"t" * 32, header, BODY)
    assert not signature_ok(b"", header, BODY)
    assert not signature_ok(SECRET, None, BODY)


def test_the_window_is_300_seconds_either_way():
    now = time.time()
    for offset, ok in ((-WINDOW_SECONDS + 5, True), (WINDOW_SECONDS - 5, True),
                       (-WINDOW_SECONDS - 5, False), (WINDOW_SECONDS + 5, False)):
        assert signature_ok(SECRET, signature(SECRET, BODY, at=now + offset), BODY,
                            now=now) is ok, offset


@pytest.mark.parametrize("header", [
    "t=" + "9" * 400 + ",v1=" + "0" * 64,      # int() fine, float arithmetic overflows
    "t=" + "1" * 5000 + ",v1=" + "0" * 64,     # over int()'s 4,300-digit limit
    "t=\u00b2,v1=" + "0" * 64,                 # str.isdigit() says yes, int() says no
    "t=1700000000,v1=\u00e9",                  # compare_digest refuses non-ASCII str
    "t=1700000000,v1=" + "g" * 64,
    "t=-5,v1=" + "0" * 64,
    "t=,v1=",
    "v1=" + "0" * 64,
    "garbage",
    ",,,",
])
def test_a_malformed_header_is_refused_without_an_exception(header):
    assert signature_ok(SECRET, header, BODY) is False


def test_a_valid_mac_with_a_malformed_stamp_is_refused():
    good = signature(SECRET, BODY)
    stamp = good.split(",")[0][2:]
    assert not signature_ok(SECRET, good.replace(f"t={stamp}", f"t=+{stamp}"), BODY)
    assert not signature_ok(SECRET, good.replace(f"t={stamp}", f"t={stamp}.0"), BODY)


def test_during_a_rotation_one_of_several_v1_may_match():
    """A sender rotating its secret signs with both (Stripe's scheme): the last v1 won."""
    good = signature(SECRET, BODY)
    stamp, mac = good.split(",")
    wrong = "v1=" + "0" * 64
    assert signature_ok(SECRET, f"{stamp},{mac},{wrong}", BODY)
    assert signature_ok(SECRET, f"{stamp},{wrong},{mac}", BODY)
    assert not signature_ok(SECRET, f"{stamp},{wrong},{wrong}", BODY)
    assert not signature_ok(SECRET, ",".join([stamp, mac] + [wrong] * 8), BODY)  # too many
