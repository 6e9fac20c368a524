"""Who the client is: its address (X-Forwarded-For only via trusted proxies)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_ip(text: str | None) -> IPAddress | None:
    """An address from a peer name or a header entry; None if it is not one."""
    if not text:
        return None
    text = text.strip()
    if text.startswith("[") and "]" in text:          # "[v6]:port"
        text = text[1:text.index("]")]
    elif text.count(":") == 1:                          # "v4:port"
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def is_trusted(address: IPAddress | None, trusted: Sequence[IPNetwork]) -> bool:
    """True when the address belongs to one of our own proxies."""
    return address is not None and any(address in net for net in trusted)


def client_address(peer: str | None, forwarded_for: str | None,
                   trusted: Sequence[IPNetwork]) -> IPAddress | None:
    """The peer address, or the rightmost untrusted X-Forwarded-For hop behind trusted peers.

    Reading from the right means a client cannot forge its way in: entries it
    wrote itself sit to the left of the ones our own proxies appended.
    """
    address = parse_ip(peer)
    if address is None or not forwarded_for or not is_trusted(address, trusted):
        return address
    for hop in reversed(forwarded_for.split(",")):
        hop_address = parse_ip(hop)
        if hop_address is None:
            return address          # garbage: stop at the last hop we could read
        address = hop_address
        if not is_trusted(address, trusted):
            return address
    return address
