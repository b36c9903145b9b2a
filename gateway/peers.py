"""Whose connection it is, for the limits kept per client (HTTP connections, AUTH)."""

from __future__ import annotations

import ipaddress

_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: an IPv4 client of an IPv6 host


def client_address(address: str) -> str:
    """The address itself, in one form: an IPv4-mapped or NAT64 IPv6 address is the IPv4
    address inside it."""
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        if ip in _NAT64:
            return str(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return str(ip)


def is_loopback(address: str) -> bool:
    """Whether `address` (an IP address, or its IPv4-mapped form) is this host's loopback;
    False for anything that is no IP address (a name). Not a NAT64 form: 64:ff9b::7f00:1
    comes over the network (no translator makes it), and plain AUTH is loopback's only."""
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def client_key(address: str) -> str:
    """For counting connections: the IPv4 address, or the IPv6 /64 (one host has a /64 of
    addresses to take turns with; a provider sharing one /64 among customers makes them one
    client here)."""
    single = client_address(address)
    if ":" in single:
        try:
            return str(ipaddress.ip_network(f"{single}/64", strict=False))
        except ValueError:
            return single
    return single
