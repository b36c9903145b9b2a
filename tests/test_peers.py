"""Who a connection is from (gateway.peers): one form for an address written several ways."""

from __future__ import annotations

import pytest

from gateway.peers import client_address, client_key, is_loopback


@pytest.mark.parametrize(("address", "loopback"), [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True),
    # a dual-stack listener sees an IPv4 client as ::ffff:a.b.c.d; Python 3.11's
    # ipaddress calls ::ffff:127.0.0.1 not loopback: plain AUTH configured for development
    # on loopback was refused to it, and an http://[::ffff:127.0.0.1] notify URL was warned of
    ("::ffff:127.0.0.1", True),
    # NAT64 of 127.0.0.1 arrives over the network: no translator makes it (diff review)
    ("64:ff9b::7f00:1", False),
    ("10.0.0.1", False), ("::ffff:10.0.0.1", False), ("2001:db8::1", False),
    ("localhost", False), ("", False)])
def test_loopback_in_every_form(address: str, loopback: bool):
    assert is_loopback(address) is loopback


def test_one_client_whatever_the_form():
    assert client_address("::ffff:192.0.2.7") == client_address("64:ff9b::c000:207") \
        == "192.0.2.7"
    assert client_address("fe80::1%eth0") == "fe80::1"
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::2")
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_address("not an address") == "not an address"
