"""Where an upstream's redirect may lead: its own origin, or an origin its config lists,
and never into the edge's own network.

A redirect is an upstream choosing a URL for the edge to fetch from the
edge's place in the network. A public upstream answering `302 Location:
http://127.0.0.1:8080/metrics` must not make the edge fetch its own admin
page (or any internal service) and hand it out, cached, as a module. So:

- the upstream's own origin (scheme, host, port): followed, with its headers;
- another origin: only one listed in the upstream's `redirects`, and only
  after its host was resolved here and every address checked: an address in
  a special class (loopback, private, link-local, CGNAT, unspecified,
  multicast, other non-global) is refused unless the upstream's own address
  is in that same class (a registry at 10.0.0.5 may send the edge to its
  storage at 10.0.0.6; a public one never may; none may send it to loopback
  unless it is on loopback itself). The connection then goes to the checked
  addresses (pinned), so a name that answers differently a moment later
  (DNS rebinding) cannot slip past the check;
- never from https to http, and only http(s).

Anything else raises RedirectRefused: the attempt fails and the request
fails over to the next upstream.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from yarl import URL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]
Origin = tuple[str, str, int]

MAX_ADDRESSES = 4              # pinned addresses tried in turn, at most

_PRIVATE = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"))
_SHARED = ipaddress.ip_network("100.64.0.0/10")     # carrier-grade NAT (RFC 6598)


class RedirectRefused(Exception):
    """A redirect the edge will not follow; the message says why (no query string)."""


async def system_resolve(host: str, port: int) -> list[str]:
    """The addresses of `host`, by the system resolver (in a thread: getaddrinfo)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def address_class(ip: IPAddress) -> str | None:
    """The special class of an address, or None for an ordinary global one."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if any(ip in net for net in _PRIVATE if net.version == ip.version):
        return "private"
    if ip.version == 4 and ip in _SHARED:
        return "shared (CGNAT)"
    if not ip.is_global:
        return "non-global"
    return None


def origin_of(url: URL) -> Origin:
    """(scheme, host, port) with the default port filled in: what "same origin" compares."""
    return (url.scheme, (url.host or "").lower(), url.port or 0)


def shown(url: URL) -> str:
    """A URL for a message: origin and path, never its query (a signed URL's secret)."""
    return str(url.with_query(None).with_fragment(None).with_user(None))


@dataclass(frozen=True, slots=True)
class Hop:
    """Where the next request of a redirect chain goes: `url` as named, and the checked
    addresses to connect to instead of resolving its host again (empty: by name)."""

    url: URL
    addresses: tuple[str, ...] = ()
    same_origin: bool = True


class RedirectPolicy:
    """The redirect rules of one upstream (its base URL and its `redirects` origins)."""

    def __init__(self, base: URL, allowed: Iterable[str] = (),
                 resolve: Resolver = system_resolve) -> None:
        self._origin = origin_of(base)
        self._host = base.host or ""
        self._allowed = frozenset(origin_of(URL(o)) for o in allowed)
        self._resolve = resolve

    async def next_hop(self, current: URL, location: str) -> Hop:
        """Check a `Location` (relative to `current`) and say how to reach it."""
        try:
            url = current.join(URL(location))
        except ValueError as exc:
            raise RedirectRefused(f"redirect to an invalid URL: {exc}") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise RedirectRefused(f"redirect to {shown(url)}: not an http(s) URL")
        if current.scheme == "https" and url.scheme == "http":
            raise RedirectRefused(f"redirect from https to http ({shown(url)})")
        origin = origin_of(url)
        if origin == self._origin:
            return Hop(url)
        if origin not in self._allowed:
            raise RedirectRefused(f"redirect to another origin, {shown(url.origin())}, which is "
                                  "not in the upstream's redirects")
        permitted = await self._classes(self._host, self._origin[2])
        addresses = await self._addresses(url.host, origin[2])
        for address in addresses:
            kind = address_class(ipaddress.ip_address(address))
            if kind is not None and kind not in permitted:
                raise RedirectRefused(f"redirect to {shown(url.origin())}, which resolves to "
                                      f"{address}, a {kind} address")
        return Hop(url, tuple(addresses[:MAX_ADDRESSES]), same_origin=False)

    async def _addresses(self, host: str, port: int) -> list[str]:
        """The host's addresses: a literal IP as is, in any spelling the resolver would take
        for one too (inet_aton's "127.1", "0x7f.0.0.1", "2130706433")."""
        try:
            return [str(ipaddress.ip_address(host.strip("[]")))]
        except ValueError:
            pass
        try:
            return [str(ipaddress.IPv4Address(socket.inet_aton(host)))]
        except OSError:
            pass
        try:
            found = await self._resolve(host, port)
        except OSError as exc:
            raise RedirectRefused(f"redirect to {host}: cannot resolve it ({exc})") from None
        addresses = [str(ipaddress.ip_address(a.split("%", 1)[0])) for a in found]
        if not addresses:
            raise RedirectRefused(f"redirect to {host}: no addresses")
        return addresses

    async def _classes(self, host: str, port: int) -> frozenset[str]:
        """The special classes the upstream's own address is in (it was configured there)."""
        try:
            addresses = await self._addresses(host, port)
        except RedirectRefused:
            return frozenset()
        return frozenset(kind for a in addresses
                         if (kind := address_class(ipaddress.ip_address(a))) is not None)
