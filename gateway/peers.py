"""Whose connection it is, for the limits kept per client (HTTP connections, AUTH)."""

from __future__ import annotations

import ipaddress


def client_key(address: str) -> str:
    """The IPv4 address, or the IPv6 /64 (one host has a /64 of addresses to take turns
    with); an IPv4-mapped IPv6 address is its IPv4 address."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)
